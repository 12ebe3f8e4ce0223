//! The subset of CloudWatch metric math the emulator evaluates.
//!
//! Supported: numbers, query ids, `+ - * /`, unary minus, parentheses, arrays `[a, b]`,
//! `METRICS()` / `METRICS("substring")` (the MetricStat queries whose Id contains the substring),
//! and `SUM`, `AVG`, `MIN`, `MAX`. As in CloudWatch, those four reduce an array of time series to
//! one time series (per timestamp, over the series that have a value there) and a single time
//! series to a scalar. Arithmetic between two time series keeps only the timestamps both have.
//!
//! Everything else CloudWatch knows (FILL, RATE, IF, SEARCH, comparison and logical operators,
//! `^`, ...) is refused with [`MathError::Unsupported`] rather than approximated.

use std::collections::BTreeMap;

/// A time series: `(timestamp in ms, value)`, oldest first, one value per timestamp.
pub(crate) type Series = Vec<(i64, f64)>;

/// Why an expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MathError {
    /// CloudWatch would reject it too.
    Invalid(String),
    /// CloudWatch accepts it; the emulator does not implement it.
    Unsupported(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reducer {
    Sum,
    Avg,
    Min,
    Max,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Number(f64),
    /// The Id of another query in the request.
    Ref(String),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Reduce(Reducer, Box<Expr>),
    /// `METRICS()` or `METRICS("filter")`.
    Metrics(Option<String>),
    Array(Vec<Expr>),
}

/// CloudWatch metric math functions the emulator knows by name but does not implement.
const KNOWN_UNSUPPORTED_FUNCTIONS: &[&str] = &[
    "ABS",
    "ANOMALY_DETECTION_BAND",
    "AVG_OVER_TIME",
    "BOTTOM",
    "CEIL",
    "CONCAT",
    "DATAPOINT_COUNT",
    "DAY",
    "DB_PERF_INSIGHTS",
    "DIFF",
    "DIFF_TIME",
    "EPOCH",
    "FILL",
    "FIRST",
    "FLOOR",
    "HOUR",
    "IF",
    "INSIGHT_RULE_METRIC",
    "LAMBDA",
    "LAST",
    "LOG",
    "LOG10",
    "METRIC_COUNT",
    "MINUTE",
    "MONTH",
    "PERIOD",
    "RATE",
    "REMOVE_EMPTY",
    "RUNNING_SUM",
    "SEARCH",
    "SERVICE_QUOTA",
    "SLICE",
    "SORT",
    "STDDEV",
    "TIME_SERIES",
    "TOP",
    "YEAR",
];

/// Longest expression CloudWatch accepts.
pub(crate) const MAX_EXPRESSION_LEN: usize = 2048;
/// Parentheses/brackets/unary-minus nesting the parser follows before giving up (no stack overflow).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Ident(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(char),
}

fn lex(src: &str) -> Result<Vec<Token>, MathError> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '[' => {
                tokens.push(Token::LBracket);
                i += 1;
            }
            ']' => {
                tokens.push(Token::RBracket);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '+' | '-' | '*' | '/' => {
                tokens.push(Token::Op(c));
                i += 1;
            }
            // SEARCH takes single-quoted strings, METRICS double-quoted ones.
            quote @ ('"' | '\'') => {
                let start = i + 1;
                let Some(len) = chars[start..].iter().position(|&ch| ch == quote) else {
                    return Err(MathError::Invalid("unterminated string literal".into()));
                };
                tokens.push(Token::Str(chars[start..start + len].iter().collect()));
                i = start + len + 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let value = text
                    .parse::<f64>()
                    .map_err(|_| MathError::Invalid(format!("invalid number {text}")))?;
                tokens.push(Token::Number(value));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            '^' => return Err(MathError::Unsupported("the ^ operator".into())),
            '<' | '>' | '=' | '!' => {
                return Err(MathError::Unsupported(
                    "comparison operators (<, <=, >, >=, ==, !=)".into(),
                ));
            }
            other => {
                return Err(MathError::Invalid(format!(
                    "unexpected character '{other}'"
                )));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Parses one metric math expression.
pub(crate) fn parse(src: &str) -> Result<Expr, MathError> {
    if src.trim().is_empty() {
        return Err(MathError::Invalid("the expression is empty".into()));
    }
    if src.len() > MAX_EXPRESSION_LEN {
        return Err(MathError::Invalid(format!(
            "the expression is longer than {MAX_EXPRESSION_LEN} characters"
        )));
    }
    let mut parser = Parser {
        tokens: lex(src)?,
        pos: 0,
        depth: 0,
    };
    let expr = parser.additive()?;
    match parser.peek() {
        None => Ok(expr),
        Some(Token::Ident(word)) if is_logical_keyword(word) => Err(MathError::Unsupported(
            "logical operators (AND, OR, NOT)".into(),
        )),
        Some(token) => Err(MathError::Invalid(format!(
            "unexpected {} after a complete expression",
            describe(token)
        ))),
    }
}

fn is_logical_keyword(word: &str) -> bool {
    matches!(word.to_ascii_uppercase().as_str(), "AND" | "OR" | "NOT")
}

fn describe(token: &Token) -> String {
    match token {
        Token::Number(n) => format!("number {n}"),
        Token::Ident(s) => format!("'{s}'"),
        Token::Str(s) => format!("string \"{s}\""),
        Token::LParen => "'('".into(),
        Token::RParen => "')'".into(),
        Token::LBracket => "'['".into(),
        Token::RBracket => "']'".into(),
        Token::Comma => "','".into(),
        Token::Op(c) => format!("'{c}'"),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn expect(&mut self, want: &Token, context: &str) -> Result<(), MathError> {
        match self.next() {
            Some(ref t) if t == want => Ok(()),
            Some(t) => Err(MathError::Invalid(format!(
                "expected {} {context}, found {}",
                describe(want),
                describe(&t)
            ))),
            None => Err(MathError::Invalid(format!(
                "expected {} {context}, found the end of the expression",
                describe(want)
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), MathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(MathError::Invalid(
                "the expression is nested too deeply".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn additive(&mut self) -> Result<Expr, MathError> {
        let mut left = self.multiplicative()?;
        while let Some(Token::Op(c @ ('+' | '-'))) = self.peek() {
            let op = if *c == '+' { BinOp::Add } else { BinOp::Sub };
            self.pos += 1;
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Expr, MathError> {
        let mut left = self.unary()?;
        while let Some(Token::Op(c @ ('*' | '/'))) = self.peek() {
            let op = if *c == '*' { BinOp::Mul } else { BinOp::Div };
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, MathError> {
        if let Some(Token::Op(c @ ('-' | '+'))) = self.peek() {
            let negate = *c == '-';
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(if negate {
                Expr::Neg(Box::new(inner))
            } else {
                inner
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, MathError> {
        match self.next() {
            Some(Token::Number(n)) => Ok(Expr::Number(n)),
            Some(Token::LParen) => {
                self.enter()?;
                let inner = self.additive()?;
                self.expect(&Token::RParen, "to close '('")?;
                self.depth -= 1;
                Ok(inner)
            }
            Some(Token::LBracket) => {
                self.enter()?;
                let mut items = vec![self.additive()?];
                while let Some(Token::Comma) = self.peek() {
                    self.pos += 1;
                    items.push(self.additive()?);
                }
                self.expect(&Token::RBracket, "to close '['")?;
                self.depth -= 1;
                Ok(Expr::Array(items))
            }
            Some(Token::Ident(name)) => {
                if let Some(Token::LParen) = self.peek() {
                    self.pos += 1;
                    self.enter()?;
                    let call = self.call(&name)?;
                    self.depth -= 1;
                    Ok(call)
                } else if is_logical_keyword(&name) {
                    Err(MathError::Unsupported(
                        "logical operators (AND, OR, NOT)".into(),
                    ))
                } else {
                    Ok(Expr::Ref(name))
                }
            }
            Some(token) => Err(MathError::Invalid(format!(
                "unexpected {}",
                describe(&token)
            ))),
            None => Err(MathError::Invalid(
                "the expression ends where a value was expected".into(),
            )),
        }
    }

    /// Parses the arguments of `name(` up to and including the closing parenthesis.
    fn call(&mut self, name: &str) -> Result<Expr, MathError> {
        let reducer = match name {
            "SUM" => Some(Reducer::Sum),
            "AVG" => Some(Reducer::Avg),
            "MIN" => Some(Reducer::Min),
            "MAX" => Some(Reducer::Max),
            _ => None,
        };
        if let Some(reducer) = reducer {
            if let Some(Token::RParen) = self.peek() {
                return Err(MathError::Invalid(format!("{name} needs one argument")));
            }
            let arg = self.additive()?;
            if let Some(Token::Comma) = self.peek() {
                return Err(MathError::Invalid(format!(
                    "{name} takes one argument (use [a, b] to pass several time series)"
                )));
            }
            self.expect(&Token::RParen, &format!("to close {name}("))?;
            return Ok(Expr::Reduce(reducer, Box::new(arg)));
        }
        if name == "METRICS" {
            let filter = match self.peek() {
                Some(Token::Str(s)) => {
                    let s = s.clone();
                    self.pos += 1;
                    Some(s)
                }
                _ => None,
            };
            self.expect(&Token::RParen, "to close METRICS(")?;
            return Ok(Expr::Metrics(filter));
        }
        if KNOWN_UNSUPPORTED_FUNCTIONS.contains(&name) {
            return Err(MathError::Unsupported(format!(
                "the metric math function {name}"
            )));
        }
        Err(MathError::Invalid(format!("unknown function {name}")))
    }
}

/// An intermediate value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Scalar(f64),
    Series(Series),
    Array(Vec<Series>),
}

/// What evaluation needs from the request: the series behind an id and `METRICS()`.
pub(crate) trait Env {
    /// The value of query `id`: a MetricStat's time series or another expression's result.
    fn value(&mut self, id: &str) -> Result<Val, MathError>;
    /// The MetricStat queries' series, in request order, whose Id contains `filter`.
    fn metrics(&mut self, filter: Option<&str>) -> Result<Vec<Series>, MathError>;
}

/// Evaluates an expression.
pub(crate) fn eval(expr: &Expr, env: &mut dyn Env) -> Result<Val, MathError> {
    match expr {
        Expr::Number(n) => Ok(Val::Scalar(*n)),
        Expr::Ref(id) => env.value(id),
        Expr::Metrics(filter) => Ok(Val::Array(env.metrics(filter.as_deref())?)),
        Expr::Neg(inner) => Ok(map_val(eval(inner, env)?, |v| -v)),
        Expr::Binary(op, a, b) => binary(*op, eval(a, env)?, eval(b, env)?),
        Expr::Reduce(reducer, inner) => Ok(reduce(*reducer, eval(inner, env)?)),
        Expr::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match eval(item, env)? {
                    Val::Series(s) => out.push(s),
                    Val::Array(many) => out.extend(many),
                    Val::Scalar(_) => {
                        return Err(MathError::Unsupported(
                            "a number inside an array [...]".into(),
                        ));
                    }
                }
            }
            Ok(Val::Array(out))
        }
    }
}

fn apply(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
    }
}

fn map_val(val: Val, f: impl Fn(f64) -> f64) -> Val {
    let map_series = |s: Series| s.into_iter().map(|(t, v)| (t, f(v))).collect();
    match val {
        Val::Scalar(x) => Val::Scalar(f(x)),
        Val::Series(s) => Val::Series(map_series(s)),
        Val::Array(many) => Val::Array(many.into_iter().map(map_series).collect()),
    }
}

fn binary(op: BinOp, a: Val, b: Val) -> Result<Val, MathError> {
    match (a, b) {
        (Val::Scalar(x), Val::Scalar(y)) => Ok(Val::Scalar(apply(op, x, y))),
        (Val::Scalar(x), other) => Ok(map_val(other, |v| apply(op, x, v))),
        (other, Val::Scalar(y)) => Ok(map_val(other, |v| apply(op, v, y))),
        (Val::Series(a), Val::Series(b)) => Ok(Val::Series(intersect(op, &a, &b))),
        _ => Err(MathError::Unsupported(
            "arithmetic between an array of time series and another time series or array".into(),
        )),
    }
}

/// Combines two series on the timestamps both have.
fn intersect(op: BinOp, a: &Series, b: &Series) -> Series {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, apply(op, a[i].1, b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn reduce_values(reducer: Reducer, values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut sum, mut min, mut max) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        count += 1;
        sum += v;
        min = min.min(v);
        max = max.max(v);
    }
    if count == 0 {
        // No data is not zero: NaN makes every datapoint derived from it disappear.
        return f64::NAN;
    }
    match reducer {
        Reducer::Sum => sum,
        Reducer::Avg => sum / count as f64,
        Reducer::Min => min,
        Reducer::Max => max,
    }
}

fn reduce(reducer: Reducer, val: Val) -> Val {
    match val {
        Val::Scalar(x) => Val::Scalar(x),
        Val::Series(s) => Val::Scalar(reduce_values(reducer, s.into_iter().map(|(_, v)| v))),
        Val::Array(many) => {
            let mut by_time: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for series in many {
                for (t, v) in series {
                    by_time.entry(t).or_default().push(v);
                }
            }
            Val::Series(
                by_time
                    .into_iter()
                    .map(|(t, vs)| (t, reduce_values(reducer, vs.into_iter())))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn r(id: &str) -> Box<Expr> {
        Box::new(Expr::Ref(id.into()))
    }

    #[test]
    fn parses_precedence_and_unary_minus() {
        assert_eq!(
            parse("m1 + m2 * 2").unwrap(),
            Expr::Binary(
                BinOp::Add,
                r("m1"),
                Box::new(Expr::Binary(
                    BinOp::Mul,
                    r("m2"),
                    Box::new(Expr::Number(2.0))
                ))
            )
        );
        assert_eq!(
            parse("-(m1 - m2) / 4").unwrap(),
            Expr::Binary(
                BinOp::Div,
                Box::new(Expr::Neg(Box::new(Expr::Binary(
                    BinOp::Sub,
                    r("m1"),
                    r("m2")
                )))),
                Box::new(Expr::Number(4.0))
            )
        );
        assert_eq!(
            parse("m1 - m2 - m3").unwrap(),
            Expr::Binary(
                BinOp::Sub,
                Box::new(Expr::Binary(BinOp::Sub, r("m1"), r("m2"))),
                r("m3")
            )
        );
    }

    #[test]
    fn parses_functions_arrays_and_metrics() {
        assert_eq!(
            parse("SUM(METRICS())").unwrap(),
            Expr::Reduce(Reducer::Sum, Box::new(Expr::Metrics(None)))
        );
        assert_eq!(
            parse("AVG(METRICS(\"errors\"))").unwrap(),
            Expr::Reduce(Reducer::Avg, Box::new(Expr::Metrics(Some("errors".into()))))
        );
        assert_eq!(
            parse("MAX([m1, m2])").unwrap(),
            Expr::Reduce(
                Reducer::Max,
                Box::new(Expr::Array(vec![
                    Expr::Ref("m1".into()),
                    Expr::Ref("m2".into())
                ]))
            )
        );
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let table = [
            ("FILL(m1, 0)", "FILL"),
            ("SEARCH('{AWS/SQS} MetricName', 'Sum', 60)", "SEARCH"),
            ("m1 ^ 2", "^"),
            ("m1 > 2", "comparison"),
            ("m1 AND m2", "logical"),
            ("RATE(m1)", "RATE"),
            ("IF(m1, 1, 0)", "IF"),
            ("[m1, 2]", ""),
        ];
        for (src, fragment) in table {
            match parse(src) {
                Err(MathError::Unsupported(msg)) => assert!(msg.contains(fragment), "{src}: {msg}"),
                Err(MathError::Invalid(msg)) => {
                    panic!("{src}: invalid instead of unsupported: {msg}")
                }
                Ok(expr) => {
                    // Arrays of numbers parse; evaluation refuses them.
                    let mut env = MapEnv::default();
                    env.0.insert("m1".into(), vec![(0, 1.0)]);
                    let got = eval(&expr, &mut env);
                    assert!(
                        matches!(got, Err(MathError::Unsupported(_))),
                        "{src}: {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_invalid_syntax() {
        for src in [
            "",
            "m1 +",
            "(m1",
            "m1 m2",
            "SUM()",
            "SUM(m1, m2)",
            "FOO(m1)",
            "m1 # 2",
            "\"x",
        ] {
            assert!(matches!(parse(src), Err(MathError::Invalid(_))), "{src}");
        }
        let deep = format!("{}m1{}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(parse(&deep), Err(MathError::Invalid(_))));
        let long = "m1+".repeat(1000) + "m1";
        assert!(matches!(parse(&long), Err(MathError::Invalid(_))));
    }

    #[derive(Default)]
    struct MapEnv(HashMap<String, Series>);

    impl Env for MapEnv {
        fn value(&mut self, id: &str) -> Result<Val, MathError> {
            self.0
                .get(id)
                .cloned()
                .map(Val::Series)
                .ok_or_else(|| MathError::Invalid(format!("unknown id {id}")))
        }
        fn metrics(&mut self, filter: Option<&str>) -> Result<Vec<Series>, MathError> {
            let mut ids: Vec<&String> = self.0.keys().collect();
            ids.sort();
            Ok(ids
                .into_iter()
                .filter(|id| filter.is_none_or(|f| id.contains(f)))
                .map(|id| self.0[id].clone())
                .collect())
        }
    }

    fn env() -> MapEnv {
        let mut env = MapEnv::default();
        env.0
            .insert("m1".into(), vec![(0, 1.0), (60, 2.0), (120, 3.0)]);
        env.0
            .insert("m2".into(), vec![(60, 10.0), (120, 20.0), (180, 30.0)]);
        env.0.insert("errors_a".into(), vec![(0, 5.0)]);
        env
    }

    fn run(src: &str) -> Val {
        eval(&parse(src).unwrap(), &mut env()).unwrap()
    }

    #[test]
    fn series_arithmetic_keeps_common_timestamps() {
        assert_eq!(run("m1 + m2"), Val::Series(vec![(60, 12.0), (120, 23.0)]));
        assert_eq!(
            run("m2 / m1"),
            Val::Series(vec![(60, 5.0), (120, 20.0 / 3.0)])
        );
        assert_eq!(
            run("m1 * 2 + 1"),
            Val::Series(vec![(0, 3.0), (60, 5.0), (120, 7.0)])
        );
        assert_eq!(
            run("10 - m1"),
            Val::Series(vec![(0, 9.0), (60, 8.0), (120, 7.0)])
        );
        assert_eq!(
            run("-m1"),
            Val::Series(vec![(0, -1.0), (60, -2.0), (120, -3.0)])
        );
        assert_eq!(run("(1 + 2) * 3"), Val::Scalar(9.0));
    }

    #[test]
    fn reducers_over_arrays_and_single_series() {
        assert_eq!(
            run("SUM([m1, m2])"),
            Val::Series(vec![(0, 1.0), (60, 12.0), (120, 23.0), (180, 30.0)])
        );
        assert_eq!(
            run("AVG([m1, m2])"),
            Val::Series(vec![(0, 1.0), (60, 6.0), (120, 11.5), (180, 30.0)])
        );
        assert_eq!(
            run("MIN([m1, m2])").clone(),
            Val::Series(vec![(0, 1.0), (60, 2.0), (120, 3.0), (180, 30.0)])
        );
        assert_eq!(run("MAX(m1)"), Val::Scalar(3.0));
        assert_eq!(run("SUM(m2)"), Val::Scalar(60.0));
        assert_eq!(
            run("m1 - AVG(m1)"),
            Val::Series(vec![(0, -1.0), (60, 0.0), (120, 1.0)])
        );
        assert_eq!(run("SUM(METRICS(\"errors\"))"), Val::Series(vec![(0, 5.0)]));
        assert_eq!(
            run("SUM(METRICS())"),
            Val::Series(vec![(0, 6.0), (60, 12.0), (120, 23.0), (180, 30.0)])
        );
        assert!(matches!(run("SUM(METRICS(\"nothing\"))"), Val::Series(s) if s.is_empty()));
        assert!(matches!(run("MAX(METRICS(\"nothing\")) + 1"), Val::Series(s) if s.is_empty()));
    }
}
