//! The watch folder: which files in it are complete and ready to read.
//!
//! A file is taken only when complete: names starting with `.` or ending in `.tmp`, `.part`
//! or `.partial` are being written (write, then rename), and any other file must keep its
//! size and modification time for `settle`. inotify wakes the loop early; the listing, not
//! the events, decides.

use anyhow::Context as _;
use notify::Watcher as _;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

/// Whether a file of this name is still being written (by convention).
pub fn in_progress(name: &str) -> bool {
    name.starts_with('.')
        || [".tmp", ".part", ".partial"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

/// A watched folder and what its last listing showed.
pub struct WatchFolder {
    dir: PathBuf,
    settle: Duration,
    // Kept for its inotify watch, which ends when it is dropped.
    _watcher: notify::RecommendedWatcher,
    wake: Receiver<()>,
    /// path → (size, modified, first time seen with these)
    seen: HashMap<PathBuf, (u64, Option<SystemTime>, Instant)>,
    present: HashSet<PathBuf>,
    listing_failed: Option<Instant>,
}

impl WatchFolder {
    /// Watches `dir`; a file is ready once unchanged for `settle`.
    pub fn new(dir: &Path, settle: Duration) -> anyhow::Result<Self> {
        let (tx, wake) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Our own scan opens the directory, which inotify reports as an access: waking on
            // those would make the loop feed itself and spin a core while idle.
            if ev.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(());
            }
        })
        .context("cannot start the file watcher (inotify)")?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("{}: cannot watch", dir.display()))?;
        Ok(WatchFolder {
            dir: dir.to_owned(),
            settle,
            _watcher: watcher,
            wake,
            seen: HashMap::new(),
            present: HashSet::new(),
            listing_failed: None,
        })
    }

    /// Lists the folder: the files ready to read, oldest first. A failed listing (EMFILE
    /// while a peer holds many connections, say) is said once a minute and gives nothing:
    /// the daemon goes on and lists again.
    pub fn ready(&mut self) -> Vec<PathBuf> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                if self
                    .listing_failed
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    tracing::error!("{}: cannot list: {e}; trying again", self.dir.display());
                    self.listing_failed = Some(Instant::now());
                }
                return Vec::new();
            }
        };
        let mut ready = Vec::new();
        self.present.clear();
        for e in listing.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || in_progress(&crate::sources::input::file_name(&p)) {
                continue;
            }
            self.present.insert(p.clone());
            let key = (meta.len(), meta.modified().ok());
            let entry = self
                .seen
                .entry(p.clone())
                .or_insert((key.0, key.1, Instant::now()));
            if (entry.0, entry.1) != key {
                *entry = (key.0, key.1, Instant::now());
            } else if entry.2.elapsed() >= self.settle {
                ready.push((key.1, p));
            }
        }
        let present = &self.present;
        self.seen.retain(|p, _| present.contains(p));
        ready.sort();
        ready.into_iter().map(|(_, p)| p).collect()
    }

    /// Whether the last listing showed `path`.
    pub fn holds(&self, path: &Path) -> bool {
        self.present.contains(path)
    }

    /// `path` is being read: should it come back, it settles again.
    pub fn taken(&mut self, path: &Path) {
        self.seen.remove(path);
    }

    /// Waits for a change in the folder, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let _ = self.wake.recv_timeout(timeout);
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_once_it_has_settled_and_names_being_written_never_are() {
        assert!(in_progress(".a.jpg") && in_progress("a.JPG.part") && in_progress("x.tmp"));
        assert!(!in_progress("a.jpg"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"1").unwrap();
        std::fs::write(dir.path().join("b.jpg.part"), b"1").unwrap();
        let mut slow = WatchFolder::new(dir.path(), Duration::from_secs(3600)).unwrap();
        assert!(slow.ready().is_empty(), "not settled for an hour yet");
        assert!(slow.holds(&dir.path().join("a.jpg")));
        let mut w = WatchFolder::new(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(w.ready(), vec![dir.path().join("a.jpg")]);
        assert!(w.holds(&dir.path().join("a.jpg")));
        assert!(!w.holds(&dir.path().join("b.jpg.part")));
        std::fs::remove_file(dir.path().join("a.jpg")).unwrap();
        assert!(w.ready().is_empty() && !w.holds(&dir.path().join("a.jpg")));
    }
}
