//! The definitions file (`--config`): read, parse and validate, reporting every problem at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::spec::DefinitionsFile;
use super::{Definition, DefinitionSet};

/// Why a definitions file could not be used: every problem, each naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read definitions file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("definitions file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the line and field.
        message: String,
    },
    /// The YAML parsed but some definitions are unusable.
    #[error("definitions file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// Read, parse and validate a definitions file, reporting every problem at once.
pub fn load_file(path: &Path) -> Result<DefinitionSet, LoadError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: display.clone(),
        source,
    })?;
    parse(&text).map_err(|err| match err {
        ParseError::Yaml(message) => LoadError::Parse {
            path: display.clone(),
            message,
        },
        ParseError::Invalid(problems) => LoadError::Invalid {
            path: display.clone(),
            problems,
        },
    })
}

/// Why definitions text could not be used.
#[derive(Debug)]
pub enum ParseError {
    /// Not valid YAML for the schema.
    Yaml(String),
    /// Valid YAML, invalid definitions.
    Invalid(Vec<String>),
}

/// Parse and validate definitions text.
pub fn parse(text: &str) -> Result<DefinitionSet, ParseError> {
    let file: DefinitionsFile =
        serde_saphyr::from_str(text).map_err(|err| ParseError::Yaml(err.to_string()))?;
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
            Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{place}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(DefinitionSet::cluster_wide_only(metrics))
    } else {
        Err(ParseError::Invalid(problems))
    }
}
