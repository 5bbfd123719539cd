//! The on-disk outbox: every result is written and fsync'd here before it is published, and
//! removed only after the broker's PUBACK. After a reconnect or a restart it is replayed in
//! order. Delivery is at-least-once; consumers de-duplicate by the result's `id`.
//!
//! It is bounded by entry count, bytes and age. When a bound is hit the oldest entries are
//! dropped, and each drop is logged and appended to `dropped.jsonl` beside the outbox (the
//! result itself also stays beside its done file), so nothing is lost silently.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Bounds of the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// At most this many queued results.
    pub max_entries: usize,
    /// At most this many bytes of queued results.
    pub max_bytes: u64,
    /// Results older than this many hours are dropped (0: never).
    pub max_age_hours: u64,
}

impl Default for OutboxLimits {
    /// 100 000 results, 512 MiB, 30 days: weeks offline at a busy unit.
    fn default() -> Self {
        OutboxLimits {
            max_entries: 100_000,
            max_bytes: 512 << 20,
            max_age_hours: 24 * 30,
        }
    }
}

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number: the replay order.
    pub seq: u64,
    /// File holding it.
    pub path: PathBuf,
}

/// The outbox directory.
pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    next_seq: u64,
    dropped: u64,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`.
    pub fn open(dir: &Path, limits: OutboxLimits) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the outbox", dir.display()))?;
        let mut o = Outbox {
            dir: dir.to_owned(),
            limits,
            next_seq: 0,
            dropped: 0,
        };
        // Leftover temporaries are writes that never completed: not results yet.
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        o.next_seq = o.entries()?.last().map_or(0, |e| e.seq + 1);
        Ok(o)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Results dropped by the bounds since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queued entries, oldest first.
    pub fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let mut v: Vec<Entry> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("{}: cannot read the outbox", self.dir.display()))?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                if p.extension()? != "json" {
                    return None;
                }
                let seq = p.file_stem()?.to_str()?.parse().ok()?;
                Some(Entry { seq, path: p })
            })
            .collect();
        v.sort_by_key(|e| e.seq);
        Ok(v)
    }

    /// Number of queued entries.
    pub fn depth(&self) -> usize {
        self.entries().map_or(0, |v| v.len())
    }

    /// Writes `payload` durably (temporary file, fsync, rename, fsync of the directory),
    /// then enforces the bounds.
    pub fn push(&mut self, payload: &[u8]) -> anyhow::Result<Entry> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.dir.join(format!("{seq:020}.json"));
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)
                .with_context(|| format!("{}: cannot write to the outbox", tmp.display()))?;
            f.write_all(payload)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        fsync_dir(&self.dir)?;
        self.enforce_limits()?;
        Ok(Entry { seq, path })
    }

    /// The payload of an entry.
    pub fn read(&self, e: &Entry) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&e.path).with_context(|| format!("{}: cannot read", e.path.display()))
    }

    /// Removes an acknowledged entry.
    pub fn remove(&self, e: &Entry) -> anyhow::Result<()> {
        match std::fs::remove_file(&e.path) {
            Ok(()) => Ok(fsync_dir(&self.dir)?),
            // Already gone (acknowledged twice after a replay): fine.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn drop_entry(&mut self, e: &Entry, reason: &str) -> anyhow::Result<()> {
        let id = self
            .read(e)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            .unwrap_or_default();
        tracing::warn!(
            "outbox: dropping result {id} (entry {}) unsent: {reason}",
            e.seq
        );
        let log = self.dir.with_file_name("dropped.jsonl");
        let mut f = OpenOptions::new().create(true).append(true).open(&log)?;
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": id, "seq": e.seq, "reason": reason,
                "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string()})
        )?;
        f.sync_all()?;
        self.remove(e)?;
        self.dropped += 1;
        Ok(())
    }

    /// Drops the oldest entries while a bound is exceeded.
    pub fn enforce_limits(&mut self) -> anyhow::Result<()> {
        let entries = self.entries()?;
        let l = self.limits;
        let sizes: Vec<u64> = entries
            .iter()
            .map(|e| std::fs::metadata(&e.path).map_or(0, |m| m.len()))
            .collect();
        let mut bytes: u64 = sizes.iter().sum();
        let mut count = entries.len();
        let max_age = Duration::from_secs(l.max_age_hours * 3600);
        for (e, size) in entries.iter().zip(sizes) {
            let old = l.max_age_hours > 0
                && std::fs::metadata(&e.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
            let reason = if count > l.max_entries {
                format!("more than {} queued results", l.max_entries)
            } else if bytes > l.max_bytes {
                format!("more than {} bytes queued", l.max_bytes)
            } else if old {
                format!("older than {} hours", l.max_age_hours)
            } else {
                continue;
            };
            self.drop_entry(e, &reason)?;
            count -= 1;
            bytes -= size;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_in_order_and_drops_loudly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let limits = OutboxLimits {
            max_entries: 3,
            ..OutboxLimits::default()
        };
        let mut o = Outbox::open(&dir, limits).unwrap();
        for i in 0..4 {
            o.push(format!("{{\"id\":\"r{i}\"}}").as_bytes()).unwrap();
        }
        // The oldest went, logged with its id.
        assert_eq!(o.dropped(), 1);
        let log = std::fs::read_to_string(tmp.path().join("dropped.jsonl")).unwrap();
        assert!(log.contains("\"r0\""), "{log}");

        // A half-written temporary from a crash is not a result.
        std::fs::write(dir.join("00000000000000000099.tmp"), b"{").unwrap();
        let mut o = Outbox::open(&dir, limits).unwrap();
        let ids: Vec<String> = o
            .entries()
            .unwrap()
            .iter()
            .map(|e| String::from_utf8(o.read(e).unwrap()).unwrap())
            .collect();
        assert_eq!(
            ids,
            ["{\"id\":\"r1\"}", "{\"id\":\"r2\"}", "{\"id\":\"r3\"}"]
        );
        let e = o.push(b"{\"id\":\"r4\"}").unwrap();
        assert_eq!(e.seq, 4, "sequence continues after a restart");
        let first = o.entries().unwrap()[0].clone();
        o.remove(&first).unwrap();
        o.remove(&first).unwrap();
        assert_eq!(o.depth(), 2);
    }
}
