//! The definitions file (`--config`): read, parse and validate, reporting every problem at once.
//!
//! The YAML is read as strictly as the CRD's schema reads an `ExternalMetric`: a quoted `"60"`
//! where an integer belongs, or `"no"` (or a bare YAML 1.1 `no`) where a boolean belongs, is an
//! error naming the field, its line and column, never a silent conversion. The parser's budget
//! bounds what a file may cost to read, and a file over it is refused naming the limit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::budget::BudgetBreach;

use super::spec::DefinitionsFile;
use super::{Definition, DefinitionSet};

/// The most YAML nodes (values, lists and maps) a definitions file may hold: serde-saphyr's own
/// default, set explicitly so that the message can name it. A metric takes 20 to 40 nodes, so
/// this is several thousand metrics; the limit is there so a broken or hostile file cannot make
/// the loader use unbounded memory and time.
pub const MAX_YAML_NODES: usize = 250_000;

/// Why a definitions file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read definitions file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is not a definitions file, or is over the loader's limits.
    #[error("definitions file {} is not valid", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        #[source]
        source: ParseError,
    },
    /// The YAML parsed but some definitions are unusable.
    #[error("definitions file {} has {} problem(s):\n  - {}", path.display(), problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, each naming the metric and the field.
        problems: Vec<String>,
    },
}

/// Why definitions text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not YAML of the definitions file's shape: the parser's message (the source) says what is
    /// wrong, at which line and column; this names the field.
    #[error("{}", describe_path(path))]
    Yaml {
        /// Where in the document, as `metrics[0].queries[1].period` (`.` for the document).
        path: String,
        /// The parser's error.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// Over one of the parser's limits (see [`MAX_YAML_NODES`]).
    #[error(
        "it is larger than the loader reads: {limit}. Define fewer metrics in the file: one definition with ${{label}} placeholders serves every value of the label (every queue, say), and teams can define their own metrics as ExternalMetric objects"
    )]
    TooLarge {
        /// Which limit, in words.
        limit: String,
    },
    /// Valid YAML, invalid definitions.
    #[error("{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// Every problem found, each naming the metric and the field.
        problems: Vec<String>,
    },
}

fn describe_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "in the document".to_string()
    } else {
        format!("at {path}")
    }
}

/// The limit a budget breach ran into, in words a user can act on.
fn describe_breach(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Nodes { .. } => {
            format!("more than {MAX_YAML_NODES} YAML nodes (values, lists and maps)")
        }
        BudgetBreach::Events { .. } => "more than 1000000 YAML parser events".to_string(),
        BudgetBreach::Depth { .. } => "lists and maps nested more than 64 deep".to_string(),
        BudgetBreach::ScalarBytes { .. } => "more than 64 MiB of text".to_string(),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => {
            "too many YAML anchors and aliases (write the definitions out)".to_string()
        }
        other => format!("the parser's limit {other:?}"),
    }
}

/// Read, parse and validate a definitions file, reporting every problem at once. A file that
/// defines no metric is valid, and logged as a warning: it is more often a mistake (a wrong path
/// in a ConfigMap, an unindented list) than an intent.
pub fn load_file(path: &Path) -> Result<DefinitionSet, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let set = parse(&text).map_err(|err| match err {
        ParseError::Invalid { problems } => LoadError::Invalid {
            path: path.to_path_buf(),
            problems,
        },
        source => LoadError::Parse {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if set.is_empty() {
        tracing::warn!(
            path = %path.display(),
            "definitions file defines no metrics: only ExternalMetric objects (if watched) are served; check the file's path and its metrics: list"
        );
    }
    Ok(set)
}

/// Parse and validate definitions text.
pub fn parse(text: &str) -> Result<DefinitionSet, ParseError> {
    let options = serde_saphyr::options! {
        // YAML 1.2 booleans only: `no`, `off`, `n` are text, which a boolean field refuses,
        // instead of YAML 1.1's silent `false`.
        strict_booleans: true,
        budget: serde_saphyr::budget! { max_nodes: MAX_YAML_NODES },
        // One line, with the line and column: the message goes to logs and terminals alike.
        with_snippet: false,
    };
    let mut path = String::new();
    let file: DefinitionsFile =
        serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                path = err.path().to_string();
                err.into_inner()
            })
        })
        .map_err(|source| match source.without_snippet() {
            serde_saphyr::Error::Budget { breach, .. } => ParseError::TooLarge {
                limit: describe_breach(breach),
            },
            _ => ParseError::Yaml {
                path,
                source: Box::new(source),
            },
        })?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut metrics = BTreeMap::new();
    for (index, spec) in file.metrics.into_iter().enumerate() {
        let place = format!("metrics[{index}] ({})", spec.name);
        if !seen.insert(spec.name.clone()) {
            problems.push(format!("{place}: name is defined more than once"));
        }
        match Definition::new(spec) {
            Ok(definition) => {
                metrics.insert(definition.spec.name.clone(), Arc::new(definition));
            }
            Err(invalid) => problems.extend(
                invalid
                    .problems
                    .into_iter()
                    .map(|e| format!("{place}: {e}")),
            ),
        }
    }
    if problems.is_empty() {
        Ok(DefinitionSet::cluster_wide_only(metrics))
    } else {
        Err(ParseError::Invalid { problems })
    }
}
