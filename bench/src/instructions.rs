//! Instructions per request: the adapter run under valgrind's callgrind, its counters dumped
//! around a fixed number of requests. Instruction counts measure work, not seconds, so two
//! builds compare on a machine other builders share, where wall-clock figures drift by a
//! quarter within minutes. (`perf stat -e instructions` would be cheaper, but virtual machines
//! often do not expose the counter.)
//!
//! The adapter does some work of its own while requests run (timers, the refresh engine): an
//! idle window is measured first and its rate is subtracted, so what remains is the requests'.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Whether valgrind and callgrind_control can be run here.
pub async fn available() -> bool {
    let runs = |tool: &'static str| async move {
        Command::new(tool)
            .arg("--version")
            .output()
            .await
            .is_ok_and(|output| output.status.success())
    };
    runs("valgrind").await && runs("callgrind_control").await
}

/// The launcher that runs a program under callgrind, its dumps in `dir`.
pub fn launcher(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        "--quiet".to_string(),
        format!(
            "--callgrind-out-file={}",
            dir.join("callgrind.out").display()
        ),
    ]
}

/// Reads the instruction counters of one process running under [`launcher`].
#[derive(Debug)]
pub struct Counter {
    pid: u32,
    dir: PathBuf,
    dumps: u32,
}

impl Counter {
    /// The counters of process `pid`, whose dumps go to `dir`.
    pub fn new(pid: u32, dir: &Path) -> Counter {
        Counter {
            pid,
            dir: dir.to_path_buf(),
            dumps: 0,
        }
    }

    /// Instructions executed since the last call (or since the start), all threads; the
    /// counters start again from zero.
    pub async fn take(&mut self) -> anyhow::Result<u64> {
        let output = Command::new("callgrind_control")
            .args(["--dump", &self.pid.to_string()])
            .output()
            .await
            .context("cannot run callgrind_control")?;
        if !output.status.success() {
            bail!(
                "callgrind_control --dump failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.dumps += 1;
        let file = self.dir.join(format!("callgrind.out.{}", self.dumps));
        // The dump is written by the process itself, shortly after the command returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(total) = totals(&text)
            {
                return Ok(total);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no callgrind dump in {}", file.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `totals:` (or `summary:`) line of a callgrind dump: instructions, the only event counted.
fn totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct PerRequest {
    /// Instructions per request, the idle rate subtracted.
    pub instructions: f64,
    /// The idle rate subtracted, instructions per second.
    pub idle_per_second: f64,
}

/// Instructions per request from `total` over `requests` requests that took `elapsed`, given an
/// idle window of `idle` instructions over `idle_for`.
pub fn per_request(
    total: u64,
    requests: u64,
    elapsed: Duration,
    idle: u64,
    idle_for: Duration,
) -> PerRequest {
    let idle_per_second = idle as f64 / idle_for.as_secs_f64().max(1e-9);
    let background = idle_per_second * elapsed.as_secs_f64();
    PerRequest {
        instructions: (total as f64 - background).max(0.0) / requests.max(1) as f64,
        idle_per_second,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_totals_of_a_dump() {
        let dump =
            "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 300188\ntotals: 300188\n";
        assert_eq!(totals(dump), Some(300_188));
        assert_eq!(totals("events: Ir\n"), None);
    }

    #[test]
    fn the_idle_rate_is_subtracted() {
        let measured = per_request(
            1_000_000,
            100,
            Duration::from_secs(2),
            50_000,
            Duration::from_secs(1),
        );
        assert_eq!(measured.idle_per_second, 50_000.0);
        assert_eq!(measured.instructions, 9_000.0);
    }
}
