//! Logging setup. `RUST_LOG` filters (default `info`); `--log-format json` for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. Logs go to stderr so `query` output stays clean on stdout.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a pod's log is a pipe, and escape codes there are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        eprintln!("logging already initialised: {err}");
    }
}

/// An error and its causes on one line (`outer: cause: root cause`), for log fields. Each error
/// in a chain says only its own part (its cause is its `source`, not part of its message), so
/// every cause is printed once.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn a_chain_prints_each_cause_once() {
        assert_eq!(Chain(&Outer(Inner)).to_string(), "outer: inner");
    }
}
