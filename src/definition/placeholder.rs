//! `${label}` placeholders: found when a definition is validated, filled from the HPA's selector
//! when a series is read.
//!
//! Translation is exact or refused: the selector may only say `key=value` (or `key in (value)`)
//! for exactly the labels the definition's placeholders name, because widening or narrowing a
//! query silently would scale on the wrong number.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;

use super::Definition;
use crate::provider::{Operator, ProviderError, Selector};

static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\{([^}]*)\}").expect("static regex"));
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    // A Kubernetes label key: optional DNS prefix, then a name of at most 63 characters.
    Regex::new(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
        .expect("static regex")
});

/// The longest label value a selector can carry (a Kubernetes label value has at most 63
/// characters); limits that count filled-in values assume it.
pub const MAX_LABEL_VALUE: usize = 63;

/// Where a placeholder is filled, which decides the values it may take. A value that does not
/// fit its place is refused for the series that asked for it, before any call: in a shared
/// call it would make the backend reject every series in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Context {
    /// A CloudWatch dimension value: non-empty ASCII text.
    DimensionValue,
    /// Inside a string literal of an expression (a SEARCH or Metrics Insights filter): no
    /// quotes or backslashes, which would end or escape the literal.
    Quoted,
    /// In an expression, outside quotes: the value becomes part of the math, so it must be a
    /// plain number (`m * ${Factor}` with `1.2.3` would be a syntax error).
    Bare,
}

impl Context {
    fn describe(self) -> &'static str {
        match self {
            Context::DimensionValue => "a dimension value",
            Context::Quoted => "a quoted string in an expression",
            Context::Bare => "an expression outside quotes, so it must be a number",
        }
    }
}

/// Why a label value cannot fill a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueProblem {
    /// Empty or only blanks.
    Empty,
    /// Longer than a label value may be.
    TooLong,
    /// Not printable ASCII, in a dimension value.
    NotPrintableAscii,
    /// A quote, backslash or control character, inside a quoted string.
    QuoteOrControl,
    /// Not a plain number, outside quotes.
    NotANumber,
}

impl ValueProblem {
    fn describe(self) -> &'static str {
        match self {
            ValueProblem::Empty => "it is empty",
            ValueProblem::TooLong => "it is longer than a label value may be (63 characters)",
            ValueProblem::NotPrintableAscii => "CloudWatch takes printable ASCII only",
            ValueProblem::QuoteOrControl => "it holds a quote, a backslash or a control character",
            ValueProblem::NotANumber => "it is not a plain number",
        }
    }
}

/// A label value that cannot fill its placeholder (see [`check_value`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the value {value:?} of label {label:?} cannot be used: it fills {}, and {}",
    context.describe(),
    problem.describe()
)]
pub struct LabelValueError {
    /// The label.
    pub label: String,
    /// Its value in the selector.
    pub value: String,
    /// Where the placeholder is.
    pub context: Context,
    /// What is wrong with the value there.
    pub problem: ValueProblem,
}

/// Whether `value` may fill placeholder `${label}` placed in `context`; the reason if not.
pub fn check_value(label: &str, value: &str, context: Context) -> Result<(), LabelValueError> {
    let refuse = |problem| {
        Err(LabelValueError {
            label: label.to_string(),
            value: value.to_string(),
            context,
            problem,
        })
    };
    if value.trim().is_empty() {
        return refuse(ValueProblem::Empty);
    }
    if value.len() > MAX_LABEL_VALUE {
        return refuse(ValueProblem::TooLong);
    }
    match context {
        Context::DimensionValue if !value.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
            refuse(ValueProblem::NotPrintableAscii)
        }
        Context::Quoted
            if value
                .chars()
                .any(|c| matches!(c, '"' | '\'' | '\\') || c.is_control()) =>
        {
            refuse(ValueProblem::QuoteOrControl)
        }
        Context::Bare if !is_plain_number(value) => refuse(ValueProblem::NotANumber),
        _ => Ok(()),
    }
}

/// `12`, `0.5`: digits with at most one decimal point, never at either end.
fn is_plain_number(value: &str) -> bool {
    let mut parts = value.split('.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    parts.next().is_none()
        && !whole.is_empty()
        && whole.chars().all(|c| c.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
}

/// The placeholders of a metric math expression, each with its context (inside a string
/// literal or not), in order.
pub(crate) fn expression_contexts(expression: &str) -> Vec<(String, Context)> {
    let mut found = Vec::new();
    let mut quote: Option<char> = None;
    let mut chars = expression.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(open), c) if c == open => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (_, '$') if expression[index..].starts_with("${") => {
                if let Some(end) = expression[index..].find('}') {
                    let name = &expression[index + 2..index + end];
                    let context = if quote.is_some() {
                        Context::Quoted
                    } else {
                        Context::Bare
                    };
                    found.push((name.to_string(), context));
                    while chars.peek().is_some_and(|(i, _)| *i <= index + end) {
                        chars.next();
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// `template` with every placeholder replaced by a value of the longest length a label value
/// may have, fitting its context (`contexts` in the order the placeholders appear; missing ones
/// are dimension values): what the longest filled-in text can be.
pub(crate) fn longest_fill(template: &str, contexts: &[(String, Context)]) -> String {
    let mut contexts = contexts.iter();
    PLACEHOLDER
        .replace_all(template, |_: &regex::Captures<'_>| {
            match contexts.next().map(|(_, context)| *context) {
                Some(Context::Bare) => "1".repeat(MAX_LABEL_VALUE),
                _ => "a".repeat(MAX_LABEL_VALUE),
            }
        })
        .into_owned()
}

/// Report a `${...}` in a field that is never filled.
pub(crate) fn no_placeholder(field: &str, value: &str, push: &mut impl FnMut(String)) {
    if value.contains("${") {
        push(format!(
            "{field} contains a ${{...}} placeholder, but placeholders are only filled in dimension values and expressions"
        ));
    }
}

/// Collect the label names of `value`'s placeholders into `labels`, reporting malformed ones.
pub(crate) fn collect_placeholders(
    field: &str,
    value: &str,
    labels: &mut BTreeSet<String>,
    push: &mut impl FnMut(String),
) {
    let mut covered = 0;
    for capture in PLACEHOLDER.captures_iter(value) {
        let whole = capture.get(0).expect("capture 0 always exists");
        let name = &capture[1];
        if !LABEL_NAME.is_match(name) {
            push(format!(
                "{field}: placeholder ${{{name}}} is not a valid Kubernetes label name"
            ));
        } else {
            labels.insert(name.to_string());
        }
        if value[covered..whole.start()].contains("${") {
            push(format!("{field}: unclosed ${{ placeholder"));
        }
        covered = whole.end();
    }
    if value[covered..].contains("${") {
        push(format!("{field}: unclosed ${{ placeholder"));
    }
}

/// A placeholder whose label the selector does not give (see [`render`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs label {label:?} in the HPA's metric selector")]
pub struct MissingLabel {
    /// The label the placeholder names.
    pub label: String,
}

/// Fill `${label}` placeholders from `labels`. Validation guarantees every placeholder is
/// well-formed; the caller guarantees every needed label is present.
pub fn render(template: &str, labels: &BTreeMap<String, String>) -> Result<String, MissingLabel> {
    let mut missing = None;
    let rendered = PLACEHOLDER.replace_all(template, |capture: &regex::Captures<'_>| match labels
        .get(&capture[1])
    {
        Some(value) => value.clone(),
        None => {
            missing.get_or_insert_with(|| capture[1].to_string());
            String::new()
        }
    });
    match missing {
        Some(label) => Err(MissingLabel { label }),
        None => Ok(rendered.into_owned()),
    }
}

/// Turn the selector into the exact label values the definition needs, or refuse.
///
/// Only equality (and `in` with a single value) can be translated exactly; anything else would
/// silently widen or narrow the query, so it is a 400.
pub fn selector_labels(
    definition: &Definition,
    selector: &Selector,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let name = &definition.spec.name;
    let mut labels = BTreeMap::new();
    for requirement in &selector.requirements {
        let key = &requirement.key;
        if !definition.labels.contains(key) {
            return Err(ProviderError::InvalidSelector(format!(
                "label {key:?} in the selector is not used by metric {name} ({})",
                describe_labels(definition)
            )));
        }
        let value = match (requirement.operator, requirement.values.as_slice()) {
            (Operator::Equals | Operator::In, [value]) => value,
            (operator, _) => {
                return Err(ProviderError::InvalidSelector(format!(
                    "label {key:?} uses operator {:?}{}; metric {name} can only match a label exactly (use matchLabels: {{{key}: VALUE}})",
                    operator.symbol(),
                    if operator == Operator::In {
                        " with several values"
                    } else {
                        ""
                    }
                )));
            }
        };
        if labels.insert(key.clone(), value.clone()).is_some() {
            return Err(ProviderError::InvalidSelector(format!(
                "label {key:?} appears more than once in the selector"
            )));
        }
    }
    if let Some(missing) = definition.labels.iter().find(|l| !labels.contains_key(*l)) {
        return Err(ProviderError::InvalidSelector(format!(
            "metric {name} needs label {missing:?} in the HPA's metric selector (matchLabels: {{{missing}: VALUE}})"
        )));
    }
    Ok(labels)
}

fn describe_labels(definition: &Definition) -> String {
    if definition.labels.is_empty() {
        "it takes no labels".to_string()
    } else {
        let names: Vec<&str> = definition.labels.iter().map(String::as_str).collect();
        format!("it takes {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::provider::Requirement;
    use std::sync::Arc;

    fn sqs() -> Arc<Definition> {
        crate::definition::fixtures::sqs_visible()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn render_fills_and_reports_missing_labels() {
        let labels = BTreeMap::from([("QueueName".to_string(), "orders".to_string())]);
        assert_eq!(render("q-${QueueName}", &labels).unwrap(), "q-orders");
        assert_eq!(render("plain", &labels).unwrap(), "plain");
        let missing = render("${Other}", &labels).unwrap_err();
        assert_eq!(missing.label, "Other");
        assert_eq!(
            missing.to_string(),
            "needs label \"Other\" in the HPA's metric selector"
        );
    }

    #[test]
    fn selectors_that_cannot_be_exact_are_refused_naming_the_label() {
        let def = sqs();
        let cases = [
            (
                vec![req("QueueName", Operator::NotEquals, &["x"])],
                "\"QueueName\" uses operator \"!=\"",
            ),
            (
                vec![req("QueueName", Operator::In, &["a", "b"])],
                "with several values",
            ),
            (
                vec![req("QueueName", Operator::Exists, &[])],
                "operator \"exists\"",
            ),
            (
                vec![req("env", Operator::Equals, &["prod"])],
                "label \"env\" in the selector is not used",
            ),
            (vec![], "needs label \"QueueName\""),
        ];
        for (requirements, needle) in cases {
            let err = selector_labels(&def, &Selector { requirements }).unwrap_err();
            let ProviderError::InvalidSelector(message) = err else {
                panic!("expected InvalidSelector");
            };
            assert!(
                message.contains(needle),
                "{message} should contain {needle}"
            );
        }
    }

    #[test]
    fn placeholders_know_their_context_and_refuse_values_that_do_not_fit() {
        let contexts = expression_contexts(
            "m * ${Factor} + SEARCH('{AWS/SQS,QueueName} QueueName=\"${Queue}\" \\' ${Inner}', 'Sum', 60)",
        );
        assert_eq!(
            contexts,
            [
                ("Factor".to_string(), Context::Bare),
                ("Queue".to_string(), Context::Quoted),
                ("Inner".to_string(), Context::Quoted),
            ]
        );
        assert!(check_value("Factor", "2.5", Context::Bare).is_ok());
        for bad in ["1.2.3", "", "1e3", ".5", "x", "12."] {
            let err = check_value("Factor", bad, Context::Bare).unwrap_err();
            assert!(err.to_string().contains("label \"Factor\""), "{err}");
        }
        assert!(check_value("Queue", "orders-1.fifo", Context::Quoted).is_ok());
        assert_eq!(
            check_value("Queue", "a'b", Context::Quoted)
                .unwrap_err()
                .to_string(),
            "the value \"a'b\" of label \"Queue\" cannot be used: it fills a quoted string in an expression, and it holds a quote, a backslash or a control character"
        );
        assert!(check_value("Queue", "", Context::DimensionValue).is_err());
        assert!(check_value("Queue", "orders", Context::DimensionValue).is_ok());
        assert!(check_value("Queue", "é", Context::DimensionValue).is_err());
        assert!(check_value("Queue", &"a".repeat(64), Context::DimensionValue).is_err());
    }

    #[test]
    fn in_with_one_value_is_equality() {
        let def = sqs();
        let selector = Selector {
            requirements: vec![req("QueueName", Operator::In, &["orders"])],
        };
        assert_eq!(
            selector_labels(&def, &selector).unwrap()["QueueName"],
            "orders"
        );
    }
}
