//! The definitions file (`--config`): read, parse and validate, reporting every problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spec::DefinitionsFile;
use super::{Definition, DefinitionSet};

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
    /// The YAML is not a definitions file.
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

/// Read, parse and validate a definitions file, reporting every problem at once.
pub fn load_file(path: &Path) -> Result<DefinitionSet, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|err| match err {
        ParseError::Invalid { problems } => LoadError::Invalid {
            path: path.to_path_buf(),
            problems,
        },
        source => LoadError::Parse {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Parse and validate definitions text.
pub fn parse(text: &str) -> Result<DefinitionSet, ParseError> {
    let options = serde_saphyr::options! {
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
        .map_err(|source| ParseError::Yaml {
            path,
            source: Box::new(source),
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
