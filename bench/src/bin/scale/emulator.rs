//! The CloudWatch emulator on a runtime of its own: a GetMetricData of 500 queries is CPU work
//! done inside a request handler, and on the load generator's runtime it would hold up the reads
//! being timed. Its threads are named, so the emulator's own CPU time can be read apart.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cloudwatch_emulator::Emulator;

/// The name of the emulator runtime's worker threads (at most 15 bytes: Linux's `comm`).
const THREAD_NAME: &str = "cw-emulator";

/// A running emulator on its own runtime; stopped when dropped.
#[derive(Debug)]
pub struct EmulatorThread {
    /// The emulator.
    pub emulator: Arc<Emulator>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmulatorThread {
    /// Start an emulator on 127.0.0.1 on a runtime with `workers` threads.
    pub fn start(workers: usize) -> anyhow::Result<EmulatorThread> {
        let (started, emulator) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{THREAD_NAME}-main"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .thread_name(THREAD_NAME)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(anyhow::Error::new(error)));
                        return;
                    }
                };
                let emulator = runtime.block_on(Emulator::start()).map(Arc::new);
                let running = emulator.as_ref().ok().cloned();
                let _ = started.send(emulator.map_err(anyhow::Error::new));
                // The server runs on the runtime's workers until told to stop.
                let _ = stopped.recv();
                drop(running);
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("starting the emulator's thread")?;
        let emulator = emulator
            .recv()
            .context("the emulator's thread ended at start")??;
        Ok(EmulatorThread {
            emulator,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU time (user + system) the emulator's threads have used so far.
    pub fn cpu_time(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Duration::ZERO;
        };
        let mut ticks = 0u64;
        for task in tasks.flatten() {
            let path = task.path();
            let named = std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|comm| comm.trim_end() == THREAD_NAME);
            if !named {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
                ticks += stat_ticks(&stat);
            }
        }
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }
}

/// utime + stime, in clock ticks, from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> u64 {
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0;
    };
    fields
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // pid (comm with ") " inside) state ppid ... utime=7 stime=5 ...
        let stat = "42 (cw emu) x) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_ticks(stat), 12);
        assert_eq!(stat_ticks("garbage"), 0);
    }
}
