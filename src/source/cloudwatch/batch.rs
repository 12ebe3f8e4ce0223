//! Packing many series' queries into as few `GetMetricData` calls as CloudWatch allows.
//!
//! One call carries one time window, so series are grouped by target (region and identity) and
//! window, then packed first-fit up to 500 queries. Query ids are rewritten to be unique in the
//! call (`s{n}_{id}`), including the references inside metric math expressions, and results are
//! mapped back to each series under its own ids. Metrics Insights (SQL) queries are limited to one
//! per call.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use super::{MetricDataRequest, Query, QueryKind, QueryResult, Target};
use crate::definition::cloudwatch::{Token, tokens};

/// One combined call and which series it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The combined request.
    pub request: MetricDataRequest,
    /// For each member: its index in the planned input.
    pub members: Vec<usize>,
}

impl Batch {
    /// Split the call's results back per member, with the member's original query ids.
    pub fn distribute(&self, results: Vec<QueryResult>) -> BTreeMap<usize, Vec<QueryResult>> {
        let mut out: BTreeMap<usize, Vec<QueryResult>> = BTreeMap::new();
        for mut result in results {
            let Some((slot, original)) = split_id(&result.id) else {
                continue;
            };
            if let Some(&member) = self.members.get(slot) {
                result.id = original.to_string();
                out.entry(member).or_default().push(result);
            }
        }
        out
    }
}

fn split_id(id: &str) -> Option<(usize, &str)> {
    let rest = id.strip_prefix('s')?;
    let (slot, original) = rest.split_once('_')?;
    Some((slot.parse().ok()?, original))
}

fn is_sql(query: &Query) -> bool {
    matches!(&query.kind, QueryKind::Expression(e) if e.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("select")))
}

/// Pack `items` (one request per series) into calls of at most `max_queries` queries each.
/// Within a group, earlier requests go into earlier calls. Every item is a member of exactly one
/// batch.
pub fn plan(items: &[&MetricDataRequest], max_queries: usize) -> Vec<Batch> {
    type GroupKey = (Target, SystemTime, SystemTime, &'static str);
    let mut groups: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
    for (index, request) in items.iter().enumerate() {
        groups
            .entry((
                request.target.clone(),
                request.start_time,
                request.end_time,
                request.scan_by,
            ))
            .or_default()
            .push(index);
    }
    let mut batches = Vec::new();
    for ((target, start_time, end_time, scan_by), members) in groups {
        // (batch, holds a SQL query, closed to other series)
        let mut open: Vec<(Batch, bool, bool)> = Vec::new();
        for index in members {
            let request = items[index];
            let size = request.metric_data_queries.len();
            let sql = request.metric_data_queries.iter().any(is_sql);
            let alone = !self_contained(request);
            let fits = |(batch, has_sql, closed): &(Batch, bool, bool)| {
                let full = batch.request.metric_data_queries.len() + size > max_queries;
                let second_sql = sql && *has_sql;
                !(alone || *closed || full || second_sql)
            };
            let slot = match open.iter().position(fits) {
                Some(slot) => slot,
                None => {
                    open.push((
                        Batch {
                            request: MetricDataRequest {
                                target: target.clone(),
                                start_time,
                                end_time,
                                scan_by,
                                metric_data_queries: Vec::new(),
                            },
                            members: Vec::new(),
                        },
                        false,
                        false,
                    ));
                    open.len() - 1
                }
            };
            let (batch, has_sql, closed) = &mut open[slot];
            let prefix = format!("s{}_", batch.members.len());
            batch
                .request
                .metric_data_queries
                .extend(rename(&request.metric_data_queries, &prefix));
            batch.members.push(index);
            *has_sql |= sql;
            *closed |= alone;
        }
        batches.extend(open.into_iter().map(|(batch, _, _)| batch));
    }
    batches
}

fn rename(queries: &[Query], prefix: &str) -> Vec<Query> {
    let ids: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    queries
        .iter()
        .map(|query| {
            let mut renamed = query.clone();
            renamed.id = format!("{prefix}{}", query.id);
            if let QueryKind::Expression(expression) = &query.kind
                && !is_sql(query)
            {
                renamed.kind =
                    QueryKind::Expression(rename_in_expression(expression, &ids, prefix));
            }
            renamed
        })
        .collect()
}

/// Whether a series' queries only refer to each other, so it can share a call. `METRICS()`
/// reads every query in the call, and a lowercase identifier that is not one of the series' own
/// ids (for example a label value filled into an expression) would read another series' query:
/// such a series gets a call of its own.
fn self_contained(request: &MetricDataRequest) -> bool {
    let ids: HashSet<&str> = request
        .metric_data_queries
        .iter()
        .map(|q| q.id.as_str())
        .collect();
    request
        .metric_data_queries
        .iter()
        .all(|query| match &query.kind {
            QueryKind::Expression(_) if is_sql(query) => true,
            QueryKind::Expression(expression) => {
                tokens(expression).iter().all(|token| match token {
                    Token::Word { text, call: true } => !text.eq_ignore_ascii_case("METRICS"),
                    // Ids start with a lowercase letter; capitalised words are keywords.
                    Token::Word { text, call: false } => {
                        !text.starts_with(|c: char| c.is_ascii_lowercase())
                            || ids.contains(text.as_str())
                    }
                    Token::Text(_) => true,
                })
            }
            QueryKind::MetricStat(_) => true,
        })
}

/// Prefix every identifier in `expression` that names one of `ids`, leaving string literals,
/// function names (followed by `(`) and everything else untouched.
pub fn rename_in_expression(expression: &str, ids: &HashSet<&str>, prefix: &str) -> String {
    let mut out = String::with_capacity(expression.len() + 16);
    for token in tokens(expression) {
        match token {
            Token::Word { text, call } => {
                if !call && ids.contains(text.as_str()) {
                    out.push_str(prefix);
                }
                out.push_str(&text);
            }
            Token::Text(text) => out.push_str(&text),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::source::cloudwatch::{MetricStat, ResultStatus};
    use std::time::{Duration, UNIX_EPOCH};

    fn stat(id: &str, value_query: bool) -> Query {
        Query {
            id: id.into(),
            label: None,
            return_data: value_query,
            period: None,
            account_id: None,
            kind: QueryKind::MetricStat(MetricStat {
                namespace: "AWS/SQS".into(),
                metric_name: "ApproximateNumberOfMessagesVisible".into(),
                dimensions: vec![],
                period: 60,
                stat: "Average".into(),
                unit: None,
            }),
        }
    }

    fn expression(id: &str, text: &str) -> Query {
        Query {
            id: id.into(),
            label: None,
            return_data: true,
            period: None,
            account_id: None,
            kind: QueryKind::Expression(text.into()),
        }
    }

    fn request(queries: Vec<Query>, region: Option<&str>, start: u64) -> MetricDataRequest {
        MetricDataRequest {
            target: Target {
                region: region.map(str::to_string),
                role_arn: None,
                external_id: None,
            },
            start_time: UNIX_EPOCH + Duration::from_secs(start),
            end_time: UNIX_EPOCH + Duration::from_secs(start + 300),
            scan_by: "TimestampDescending",
            metric_data_queries: queries,
        }
    }

    #[test]
    fn packs_into_ceil_n_over_500_calls_with_unique_valid_ids() {
        let requests: Vec<MetricDataRequest> = (0..1201)
            .map(|_| request(vec![stat("visible", true)], None, 600))
            .collect();
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, crate::definition::MAX_QUERIES);
        assert_eq!(batches.len(), 3);
        assert_eq!(
            batches
                .iter()
                .map(|b| b.request.metric_data_queries.len())
                .collect::<Vec<_>>(),
            vec![500, 500, 201]
        );
        let id = regex::Regex::new(r"^[a-z][a-zA-Z0-9_]*$").unwrap();
        for batch in &batches {
            let ids: HashSet<&str> = batch
                .request
                .metric_data_queries
                .iter()
                .map(|q| q.id.as_str())
                .collect();
            assert_eq!(
                ids.len(),
                batch.request.metric_data_queries.len(),
                "ids unique"
            );
            assert!(ids.iter().all(|i| id.is_match(i)));
        }
        let members: usize = batches.iter().map(|b| b.members.len()).sum();
        assert_eq!(members, 1201);
    }

    #[test]
    fn separates_targets_and_windows() {
        let requests = [
            request(vec![stat("a", true)], None, 600),
            request(vec![stat("a", true)], Some("eu-west-1"), 600),
            request(vec![stat("a", true)], None, 660),
            request(vec![stat("a", true)], None, 600),
        ];
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, 500);
        assert_eq!(batches.len(), 3);
        let shared = batches.iter().find(|b| b.members.len() == 2).unwrap();
        assert_eq!(shared.members, vec![0, 3]);
    }

    #[test]
    fn a_series_is_never_split_across_calls() {
        // Two series of 300 queries and one of 150: 750 queries fit two calls of 500 only if a
        // series is split, so the planner must make three calls, each series whole in one.
        let series = |n: usize| {
            request(
                (0..n).map(|i| stat(&format!("m{i}"), i == 0)).collect(),
                None,
                0,
            )
        };
        let requests = [series(300), series(300), series(150)];
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, 500);
        for (member, request) in requests.iter().enumerate() {
            let holding: Vec<&Batch> = batches
                .iter()
                .filter(|b| b.members.contains(&member))
                .collect();
            assert_eq!(
                holding.len(),
                1,
                "series {member} is in {} calls",
                holding.len()
            );
            let batch = holding[0];
            let slot = batch.members.iter().position(|m| *m == member).unwrap();
            let prefix = format!("s{slot}_");
            let carried = batch
                .request
                .metric_data_queries
                .iter()
                .filter(|q| q.id.starts_with(&prefix))
                .count();
            assert_eq!(
                carried,
                request.metric_data_queries.len(),
                "series {member} has only part of its queries in its call"
            );
        }
        assert!(
            batches
                .iter()
                .all(|b| b.request.metric_data_queries.len() <= 500)
        );
    }

    #[test]
    fn only_one_metrics_insights_query_per_call() {
        let sql = || {
            request(
                vec![expression(
                    "q",
                    "SELECT AVG(CPUUtilization) FROM \"AWS/EC2\"",
                )],
                None,
                0,
            )
        };
        let requests = [sql(), sql(), request(vec![stat("a", true)], None, 0), sql()];
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, 500);
        for batch in &batches {
            let sql_queries = batch
                .request
                .metric_data_queries
                .iter()
                .filter(|q| is_sql(q))
                .count();
            assert!(sql_queries <= 1, "a call with {sql_queries} SQL queries");
        }
        // Each SQL series got a call, and the plain one shares a call with one of them.
        let members: usize = batches.iter().map(|b| b.members.len()).sum();
        assert_eq!(members, 4);
        assert_eq!(batches.len(), 3);
    }

    #[test]
    fn expressions_follow_their_renamed_ids() {
        let ids = HashSet::from(["visible", "inflight", "m1"]);
        assert_eq!(
            rename_in_expression("visible + inflight * 2", &ids, "s3_"),
            "s3_visible + s3_inflight * 2"
        );
        assert_eq!(
            rename_in_expression("SUM([m1, other]) / FILL(m1, 0)", &ids, "s0_"),
            "SUM([s0_m1, other]) / FILL(s0_m1, 0)"
        );
        // String literals and function names are left alone.
        assert_eq!(
            rename_in_expression("SEARCH('{AWS/SQS} visible', 'Sum', 60)", &ids, "s0_"),
            "SEARCH('{AWS/SQS} visible', 'Sum', 60)"
        );
        let call = HashSet::from(["m1", "e1"]);
        assert_eq!(rename_in_expression("m1(e1)", &call, "p_"), "m1(p_e1)");
    }

    #[test]
    fn series_that_could_read_other_series_get_a_call_of_their_own() {
        let metrics = || {
            request(
                vec![stat("m1", false), expression("total", "SUM(METRICS())")],
                None,
                0,
            )
        };
        // A label value filled into an expression that names another series' query id.
        let injected = request(
            vec![
                stat("visible", false),
                expression("e", "visible * s0_visible"),
            ],
            None,
            0,
        );
        let plain = || {
            request(
                vec![stat("visible", false), expression("e", "visible * 2 + 1e3")],
                None,
                0,
            )
        };
        let requests = [plain(), metrics(), plain(), injected, metrics(), plain()];
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, 500);
        let mut members: Vec<Vec<usize>> = batches.iter().map(|b| b.members.clone()).collect();
        members.sort();
        assert_eq!(members, vec![vec![0, 2, 5], vec![1], vec![3], vec![4]]);
    }

    #[test]
    fn results_map_back_to_their_series_with_original_ids() {
        let requests = [
            request(
                vec![
                    stat("visible", false),
                    stat("inflight", false),
                    expression("backlog", "visible + inflight"),
                ],
                None,
                0,
            ),
            request(vec![stat("visible", true)], None, 0),
        ];
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        let batches = plan(&refs, 500);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let QueryKind::Expression(text) = &batch.request.metric_data_queries[2].kind else {
            panic!("expression expected");
        };
        assert_eq!(text, "s0_visible + s0_inflight");
        let result = |id: &str, value: f64| QueryResult {
            id: id.into(),
            label: None,
            points: vec![(UNIX_EPOCH, value)],
            status: ResultStatus::Complete,
            messages: vec![],
        };
        let split = batch.distribute(vec![
            result("s1_visible", 2.0),
            result("s0_backlog", 9.0),
            result("junk", 1.0),
        ]);
        assert_eq!(split[&0][0].id, "backlog");
        assert_eq!(split[&0][0].points[0].1, 9.0);
        assert_eq!(split[&1][0].id, "visible");
        assert_eq!(split.len(), 2);
    }
}
