//! Kubernetes label selector parsing (the `labelSelector` query parameter).
//!
//! Follows apimachinery's `labels.Parse` grammar: comma-separated requirements of the forms
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` and `!k`.

use crate::provider::{Operator, Requirement, Selector};

/// A selector that does not parse, with a message for the user. It quotes the selector once
/// (shortened if long), and the failing requirement only when the selector has several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {}: {problem}", quoted(selector))]
pub struct SelectorError {
    selector: String,
    problem: Problem,
}

/// What is wrong with a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `a=1,,b=2` or `a=1,`.
    #[error("empty requirement (two commas, or a trailing one)")]
    EmptyRequirement,
    /// A `)` without its `(`.
    #[error("unbalanced ')'")]
    UnbalancedClose,
    /// A `(` without its `)`.
    #[error("unbalanced '('")]
    UnbalancedOpen,
    /// Something that is no requirement at all.
    #[error("unsupported requirement (use =, ==, !=, in, notin, exists or !)")]
    UnsupportedRequirement,
    /// An operator apimachinery does not have.
    #[error("unsupported operator (use =, ==, !=, in, notin, exists or !)")]
    UnsupportedOperator,
    /// `key in a,b` without parentheses.
    #[error("expected a parenthesised value list, e.g. `key in (a,b)`")]
    NoValueList,
    /// `key in ()`.
    #[error("empty value list")]
    EmptyValueList,
    /// A key that is not a label key.
    #[error("{} is not a valid label key", quoted(.0))]
    InvalidKey(String),
    /// A value that is not a label value.
    #[error("{} is not a valid label value", quoted(.0))]
    InvalidValue(String),
    /// One of several requirements is wrong (named, since the selector has several).
    #[error("requirement {}: {problem}", quoted(term))]
    InRequirement {
        /// The requirement as written.
        term: String,
        /// What is wrong with it.
        problem: Box<Problem>,
    },
}

/// How much of a selector an error message quotes.
const QUOTED_CHARS: usize = 200;

fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}... ({} bytes)", &text[..end], text.len()),
        None => format!("{text:?}"),
    }
}

/// Parse a label selector string.
pub fn parse(text: &str) -> Result<Selector, SelectorError> {
    let fail = |problem: Problem| SelectorError {
        selector: text.to_string(),
        problem,
    };
    let terms = split_terms(text).map_err(fail)?;
    let several = terms.len() > 1;
    let mut requirements = Vec::new();
    for term in terms {
        let term = term.trim();
        if term.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(fail(Problem::EmptyRequirement));
        }
        let requirement = parse_term(term).map_err(|problem| {
            fail(if several {
                Problem::InRequirement {
                    term: term.to_string(),
                    problem: Box::new(problem),
                }
            } else {
                problem
            })
        })?;
        requirements.push(requirement);
    }
    Ok(Selector { requirements })
}

/// Split on commas that are not inside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, Problem> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or(Problem::UnbalancedClose)?,
            ',' if depth == 0 => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(Problem::UnbalancedOpen);
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, Problem> {
    if let Some(key) = term.strip_prefix('!') {
        let key = check_key(key.trim())?;
        return Ok(requirement(key, Operator::DoesNotExist, vec![]));
    }
    for (symbol, operator) in [
        ("!=", Operator::NotEquals),
        ("==", Operator::Equals),
        ("=", Operator::Equals),
    ] {
        if let Some((key, value)) = term.split_once(symbol) {
            let key = check_key(key.trim())?;
            let value = check_value(value.trim())?;
            return Ok(requirement(key, operator, vec![value]));
        }
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        if key.contains(['(', ')', '<', '>']) {
            return Err(Problem::UnsupportedRequirement);
        }
        return Ok(requirement(check_key(key)?, Operator::Exists, vec![]));
    }
    let (operator, list) = if let Some(list) = rest.strip_prefix("notin") {
        (Operator::NotIn, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (Operator::In, list)
    } else {
        return Err(Problem::UnsupportedOperator);
    };
    let list = list.trim();
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or(Problem::NoValueList)?;
    let values = inner
        .split(',')
        .map(|v| check_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err(Problem::EmptyValueList);
    }
    Ok(requirement(check_key(key)?, operator, values))
}

fn requirement(key: String, operator: Operator, values: Vec<String>) -> Requirement {
    Requirement {
        key,
        operator,
        values,
    }
}

fn check_key(key: &str) -> Result<String, Problem> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    if name_ok && prefix_ok {
        Ok(key.to_string())
    } else {
        Err(Problem::InvalidKey(key.to_string()))
    }
}

fn check_value(value: &str) -> Result<String, Problem> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(value.to_string())
    } else {
        Err(Problem::InvalidValue(value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(text: &str) -> Requirement {
        let selector = parse(text).unwrap();
        assert_eq!(selector.requirements.len(), 1, "{text}");
        selector.requirements.into_iter().next().unwrap()
    }

    #[test]
    fn parses_what_the_hpa_sends() {
        let selector = parse("env=test,queue=orders").unwrap();
        assert_eq!(selector.requirements.len(), 2);
        assert_eq!(selector.requirements[0].key, "env");
        assert_eq!(selector.requirements[1].values, vec!["orders"]);
        assert!(parse("").unwrap().requirements.is_empty());
    }

    #[test]
    fn parses_every_operator() {
        assert_eq!(one("a==b").operator, Operator::Equals);
        assert_eq!(one("a != b").operator, Operator::NotEquals);
        assert_eq!(one("a in (x, y)").values, vec!["x", "y"]);
        assert_eq!(one("a notin (x)").operator, Operator::NotIn);
        assert_eq!(one("a").operator, Operator::Exists);
        assert_eq!(one("!a").operator, Operator::DoesNotExist);
        assert_eq!(
            one("example.com/queue=orders.fifo").key,
            "example.com/queue"
        );
        let both = parse("a in (x,y),b=c").unwrap();
        assert_eq!(both.requirements.len(), 2);
    }

    #[test]
    fn errors_quote_the_selector_once() {
        let message = parse("a>1").unwrap_err().to_string();
        assert_eq!(message.matches("a>1").count(), 1, "{message}");
        assert!(message.contains("unsupported"), "{message}");
        // With several requirements, the failing one is named.
        let message = parse("env=prod,a in x").unwrap_err().to_string();
        assert!(message.contains("requirement \"a in x\""), "{message}");
        // A huge selector is not echoed whole.
        let long = format!("a={}", "x".repeat(10_000));
        let message = parse(&format!("{long}!")).unwrap_err().to_string();
        assert!(message.len() < 600, "{} bytes", message.len());
    }

    #[test]
    fn rejects_malformed_selectors_with_a_reason() {
        for bad in [
            "a in (x", "a in x", "=b", "a=b,", "a=b c", "a>1", "-a=b", "a=-b", "a in ()",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid label selector"),
                "{bad}: {err}"
            );
        }
    }
}
