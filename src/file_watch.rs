//! Files that rotate in place, re-read on an interval: serving and client certificates, CA
//! bundles, bearer tokens (and, later, a projected ServiceAccount token).
//!
//! Kubernetes updates Secret, ConfigMap and projected volumes by writing a new timestamped
//! directory and swapping the `..data` symlink to it, then deleting the old directory. Watching
//! inodes (inotify on the file) misses that or follows a deleted file. So a [`FilePoller`]
//! opens every path by name on each tick, following symlinks to whatever they point at now,
//! and compares the bytes it read with the ones last put in use: a change is noticed whatever
//! the volume did, and an unchanged file costs one read. Reads run on the blocking pool: a
//! stuck network volume must never stall an async worker that serves requests.
//!
//! Several files read together (a certificate and its key) are one [`Contents`]: the consumer
//! sees them as one change and decides whether they are usable yet. Only contents the consumer
//! accepted become the base of comparison, so a pair caught half-way through a rotation (new
//! certificate, old key) is refused, kept out of use, and read again on the next tick.
//!
//! This module is a leaf: it knows files and time, not what the bytes mean.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// Why the files could not be read this time (the caller keeps what it has in use).
#[derive(Debug, thiserror::Error)]
pub enum FileWatchError {
    /// A file could not be read (missing, unreadable, a dangling symlink mid-swap).
    #[error("cannot read {}", path.display())]
    Read {
        /// The file, as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The read on the blocking pool did not finish (the runtime is shutting down).
    #[error("the read of {} did not finish", path.display())]
    Interrupted {
        /// The first file of the set.
        path: PathBuf,
        /// Why the blocking task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The bytes of a set of files, in the order their paths were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents(Vec<Vec<u8>>);

impl Contents {
    /// Contents made of these bytes (one entry per file).
    pub fn new(files: Vec<Vec<u8>>) -> Self {
        Contents(files)
    }

    /// The bytes of the file at `index` in the set (empty past the end).
    pub fn file(&self, index: usize) -> &[u8] {
        self.0.get(index).map_or(&[], Vec::as_slice)
    }
}

/// Read `paths` now, in order, following symlinks, on the blocking pool.
pub async fn read(paths: &[PathBuf]) -> Result<Contents, FileWatchError> {
    read_shared(paths.to_vec().into()).await
}

async fn read_shared(paths: Arc<[PathBuf]>) -> Result<Contents, FileWatchError> {
    let first = paths.first().cloned().unwrap_or_default();
    tokio::task::spawn_blocking(move || read_blocking(&paths))
        .await
        .map_err(|source| FileWatchError::Interrupted {
            path: first,
            source,
        })?
}

/// Read `paths` in order on the calling thread (for callers already off the async workers).
pub fn read_blocking(paths: &[PathBuf]) -> Result<Contents, FileWatchError> {
    paths
        .iter()
        .map(|path| read_one(path))
        .collect::<Result<Vec<_>, _>>()
        .map(Contents)
}

fn read_one(path: &Path) -> Result<Vec<u8>, FileWatchError> {
    std::fs::read(path).map_err(|source| FileWatchError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Re-reads a set of files every interval and reports when their bytes differ from the ones in
/// use (see the module documentation).
#[derive(Debug)]
pub struct FilePoller {
    paths: Arc<[PathBuf]>,
    ticker: Interval,
    accepted: Option<Contents>,
}

impl FilePoller {
    /// Poll `paths` every `interval`, the first read one interval from now. `in_use` is what
    /// the consumer loaded at start (`None`: nothing yet, so the first successful read is a
    /// change).
    pub fn new(paths: Vec<PathBuf>, interval: Duration, in_use: Option<Contents>) -> Self {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A tick missed while a slow volume answered is not made up in a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        FilePoller {
            paths: paths.into(),
            ticker,
            accepted: in_use,
        }
    }

    /// The files, in order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Wait for the next tick at which the files' bytes differ from the ones in use, and return
    /// them. A failed read is returned as it happens (the caller logs it and keeps what it has);
    /// the next call reads again at the next tick. Cancel-safe.
    pub async fn changed(&mut self) -> Result<Contents, FileWatchError> {
        loop {
            self.ticker.tick().await;
            let contents = read_shared(self.paths.clone()).await?;
            if self.accepted.as_ref() != Some(&contents) {
                return Ok(contents);
            }
        }
    }

    /// The consumer put `contents` in use: later reads are compared with them.
    pub fn accept(&mut self, contents: Contents) {
        self.accepted = Some(contents);
    }

    /// Until `stop` resolves: hand every change to `apply`, which puts it in use (and says so)
    /// or refuses it. Refused contents and failed reads are logged as warnings naming `what`,
    /// and what is in use stays; the files are read again at the next tick.
    pub async fn run<E>(
        mut self,
        what: &str,
        stop: impl Future<Output = ()>,
        mut apply: impl FnMut(&Contents) -> Result<(), E>,
    ) where
        E: std::error::Error + 'static,
    {
        let mut stop = std::pin::pin!(stop);
        loop {
            let changed = tokio::select! {
                () = &mut stop => return,
                changed = self.changed() => changed,
            };
            match changed {
                Ok(contents) => match apply(&contents) {
                    Ok(()) => self.accept(contents),
                    Err(err) => tracing::warn!(
                        error = %Causes(&err),
                        "new {what} not usable (yet); keeping the one in use"
                    ),
                },
                Err(err) => tracing::warn!(
                    error = %Causes(&err),
                    "cannot re-read the {what}; keeping the one in use"
                ),
            }
        }
    }
}

/// An error and its causes on one line, each printed once: `outer: inner: innermost`.
struct Causes<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;
    use tokio_util::sync::CancellationToken;

    /// Publish `files` as a new version of a Secret volume in `dir`: a timestamped directory,
    /// the `..data` symlink swapped to it atomically, the old version deleted, and per-file
    /// symlinks through `..data` (what the kubelet's atomic writer does).
    fn publish(dir: &Path, version: &str, files: &[(&str, &str)]) {
        let versioned = dir.join(version);
        std::fs::create_dir(&versioned).unwrap();
        for (name, text) in files {
            std::fs::write(versioned.join(name), text).unwrap();
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        let tmp = dir.join("..data_tmp");
        symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
        for (name, _) in files {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }

    const TICK: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_symlink_swap_is_a_change_and_an_unchanged_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), "..v1", &[("token", "first")]);
        let paths = vec![dir.path().join("token")];
        let start = read(&paths).await.unwrap();
        assert_eq!(start.file(0), b"first");
        let mut poller = FilePoller::new(paths, TICK, Some(start));

        // Unchanged bytes, tick after tick: nothing to report.
        let waited = tokio::time::timeout(TICK * 5, poller.changed()).await;
        assert!(waited.is_err(), "reported {waited:?}");

        // The volume swaps `..data` to a new directory and deletes the old one: the path, read
        // by name, now holds the new bytes.
        publish(dir.path(), "..v2", &[("token", "second")]);
        let before = tokio::time::Instant::now();
        let changed = poller.changed().await.unwrap();
        assert_eq!(changed.file(0), b"second");
        assert!(
            before.elapsed() <= TICK,
            "noticed after {:?}",
            before.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_contents_are_offered_again_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "cert-1").unwrap();
        std::fs::write(&key, "key-1").unwrap();
        let paths = vec![cert.clone(), key.clone()];
        let mut poller = FilePoller::new(paths.clone(), TICK, Some(read(&paths).await.unwrap()));

        // Half-way through a rotation: the consumer refuses the pair, so it is not accepted...
        std::fs::write(&cert, "cert-2").unwrap();
        let half = poller.changed().await.unwrap();
        assert_eq!(
            (half.file(0), half.file(1)),
            (&b"cert-2"[..], &b"key-1"[..])
        );
        // ...and the same bytes are a change again at the next tick.
        assert_eq!(poller.changed().await.unwrap(), half);
        std::fs::write(&key, "key-2").unwrap();
        let whole = poller.changed().await.unwrap();
        assert_eq!(whole.file(1), b"key-2");
        poller.accept(whole);
        let waited = tokio::time::timeout(TICK * 3, poller.changed()).await;
        assert!(waited.is_err(), "reported {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_file_is_an_error_naming_it_and_polling_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let mut poller = FilePoller::new(vec![path.clone()], TICK, None);
        let err = poller.changed().await.unwrap_err();
        assert!(
            matches!(&err, FileWatchError::Read { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("ca.crt"), "{err}");
        // Nothing was in use: the first file that can be read is a change.
        std::fs::write(&path, "ca").unwrap();
        assert_eq!(poller.changed().await.unwrap().file(0), b"ca");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("not usable")]
    struct NotUsable;

    #[tokio::test(start_paused = true)]
    async fn run_applies_each_change_once_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "a").unwrap();
        let paths = vec![path.clone()];
        let poller = FilePoller::new(paths.clone(), TICK, Some(read(&paths).await.unwrap()));
        let stop = CancellationToken::new();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let task =
            tokio::spawn(
                poller.run("token", stop.clone().cancelled_owned(), move |contents| {
                    let text = String::from_utf8_lossy(contents.file(0)).into_owned();
                    seen_tx.send(text.clone()).unwrap();
                    // "bad" is refused: it must come back until the file changes again.
                    if text == "bad" {
                        Err(NotUsable)
                    } else {
                        Ok(())
                    }
                }),
            );
        std::fs::write(&path, "bad").unwrap();
        assert_eq!(seen.recv().await.unwrap(), "bad");
        assert_eq!(seen.recv().await.unwrap(), "bad");
        std::fs::write(&path, "b").unwrap();
        assert_eq!(seen.recv().await.unwrap(), "b");
        // Accepted: not applied again while the bytes stay the same.
        tokio::time::sleep(TICK * 5).await;
        assert!(seen.try_recv().is_err());
        stop.cancel();
        task.await.unwrap();
    }
}
