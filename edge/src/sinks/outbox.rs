//! The on-disk outbox: every result is written and fsync'd here before it is published, and
//! removed only after the broker's PUBACK. After a reconnect or a restart it is replayed in
//! order. Delivery is at-least-once; consumers de-duplicate by the result's `id`.
//!
//! It is bounded by entry count, bytes and age. When a bound is hit the oldest entries are
//! dropped, and each drop is logged and appended to `dropped.jsonl` beside the outbox (the
//! result itself also stays beside its done file), so nothing is lost silently.
//!
//! Each record is one file, `<seq>.rec`: a header line `FVQ1 <crc32 hex> <length>` and the
//! payload. It is written ahead under a temporary name, fsync'd, then renamed, so a crash
//! leaves either the whole record or a `.tmp` that is not one. Should a record still come
//! back torn or altered (a power cut on a file system that reorders writes, a bad sector),
//! its checksum says so: it is moved to `outbox-corrupt/`, logged and counted as dropped,
//! and the records around it are published as usual. Records written by older versions
//! (`<seq>.json`, no header) are still read.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Bounds of the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxLimits {
    /// At most this many queued results.
    pub max_entries: usize,
    /// At most this many bytes of queued results.
    pub max_bytes: u64,
    /// Results queued for longer than this many hours are dropped (0: never). Measured on a
    /// clock that does not jump (from when this process queued or found the record), never
    /// by file times: a board without an RTC whose clock NTP corrects by years drops nothing.
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

/// What the index knows of one record.
#[derive(Clone, Debug)]
struct Meta {
    path: PathBuf,
    bytes: u64,
    /// When this process queued it, or found it queued at start: its age can only be
    /// underestimated (by the time the unit was off), never made up by a clock that jumped.
    queued: Instant,
}

/// The outbox directory.
pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    next_seq: u64,
    index: std::collections::BTreeMap<u64, Meta>,
    bytes: u64,
}

/// The outbox, shared by the worker (pushes) and the publisher (reads, removes).
pub type SharedOutbox = std::sync::Arc<std::sync::Mutex<Outbox>>;

const MAGIC: &str = "FVQ1";

/// A record file's bytes: header line, then the payload.
fn encode(payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "{MAGIC} {:08x} {}\n",
        crc32fast::hash(payload),
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// The payload of a record file, or why it is not a whole record.
fn decode(bytes: &[u8]) -> Result<&[u8], String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line (torn record)")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not text")?;
    let mut parts = header.split(' ');
    let (Some(MAGIC), Some(crc), Some(len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad header `{header}`"));
    };
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum `{crc}`"))?;
    let len: usize = len.parse().map_err(|_| format!("bad length `{len}`"))?;
    let payload = &bytes[nl + 1..];
    if payload.len() != len {
        return Err(format!(
            "{} of {len} payload bytes (torn record)",
            payload.len()
        ));
    }
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(format!(
            "checksum {actual:08x}, header says {crc:08x} (damaged record)"
        ));
    }
    Ok(payload)
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
            index: Default::default(),
            bytes: 0,
        };
        // Leftover temporaries are writes that never completed: not results yet (their
        // inputs were not moved to done/, so they are read again).
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "tmp") {
                tracing::info!(
                    "outbox: removing {}, a write that never completed",
                    e.path().display()
                );
                let _ = std::fs::remove_file(e.path());
            }
        }
        for e in std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read the outbox", dir.display()))?
            .flatten()
        {
            let p = e.path();
            let is_record = p.extension().is_some_and(|x| x == "rec" || x == "json");
            let Some(seq) = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if !is_record {
                continue;
            }
            let m = Meta {
                path: p,
                bytes: e.metadata().map_or(0, |m| m.len()),
                queued: Instant::now(),
            };
            o.bytes += m.bytes;
            o.index.insert(seq, m);
        }
        let entries = o.entries()?;
        o.next_seq = entries.last().map_or(0, |e| e.seq + 1);
        // The tail is where a crash would tear a record: check it now, so that the log says
        // so at start-up rather than when the broker comes back.
        if let Some(last) = entries.last() {
            let _ = o.read(last);
        }
        o.enforce_limits()?;
        Ok(o)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Results dropped unsent (bounds or damage), ever: the lines of `dropped.jsonl`.
    pub fn dropped(&self) -> u64 {
        std::fs::read(self.dropped_log())
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
    }

    fn dropped_log(&self) -> PathBuf {
        self.dir.with_file_name("dropped.jsonl")
    }

    fn corrupt_dir(&self) -> PathBuf {
        self.dir.with_file_name("outbox-corrupt")
    }

    /// Queued entries, oldest first.
    pub fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        Ok(self.after(None, usize::MAX))
    }

    /// At most `n` queued entries after sequence `seq` (from the oldest when `None`), in
    /// order: what the publisher hands on next.
    pub fn after(&self, seq: Option<u64>, n: usize) -> Vec<Entry> {
        let range = match seq {
            Some(s) => self.index.range(s + 1..),
            None => self.index.range(..),
        };
        range
            .take(n)
            .map(|(&seq, m)| Entry {
                seq,
                path: m.path.clone(),
            })
            .collect()
    }

    /// Number of queued entries.
    pub fn depth(&self) -> usize {
        self.index.len()
    }

    /// Bytes of queued entries.
    pub fn queued_bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes `payload` durably (temporary file, fsync, rename, fsync of the directory),
    /// then enforces the bounds.
    ///
    /// On a full disk or a read-only state directory it fails with an error naming the file
    /// and the cause, leaves no partial record, and the records already queued stay intact.
    pub fn push(&mut self, payload: &[u8]) -> anyhow::Result<Entry> {
        let seq = self.next_seq;
        let path = self.dir.join(format!("{seq:020}.rec"));
        let record = encode(payload);
        if let Err(e) = fv_core::durable::write(&path, &record) {
            let hint = match e.raw_os_error() {
                Some(28) => " (the disk is full: free space in the state directory)",
                Some(30) => {
                    " (the state directory is read-only: check its mount and StateDirectory=)"
                }
                _ => "",
            };
            return Err(anyhow::anyhow!(
                "{}: cannot store the result in the outbox: {e}{hint}",
                path.display()
            ));
        }
        self.next_seq += 1;
        let bytes = record.len() as u64;
        self.bytes += bytes;
        self.index.insert(
            seq,
            Meta {
                path: path.clone(),
                bytes,
                queued: Instant::now(),
            },
        );
        self.enforce_limits()?;
        Ok(Entry { seq, path })
    }

    /// The payload of an entry. A record that fails its check is moved to `outbox-corrupt/`,
    /// logged and counted as dropped, and an error is returned: the caller skips it.
    pub fn read(&mut self, e: &Entry) -> anyhow::Result<Vec<u8>> {
        let bytes = match std::fs::read(&e.path) {
            Ok(b) => b,
            Err(err) => {
                if err.kind() == std::io::ErrorKind::NotFound {
                    // Removed behind our back: nothing left to send.
                    self.forget(e.seq);
                }
                return Err(err).with_context(|| format!("{}: cannot read", e.path.display()));
            }
        };
        if e.path.extension().is_some_and(|x| x == "json") {
            return Ok(bytes);
        }
        match decode(&bytes) {
            Ok(payload) => Ok(payload.to_vec()),
            Err(why) => {
                self.set_aside(e, &why)?;
                anyhow::bail!("{}: {why}; set aside", e.path.display())
            }
        }
    }

    fn forget(&mut self, seq: u64) {
        if let Some(m) = self.index.remove(&seq) {
            self.bytes -= m.bytes;
        }
    }

    fn set_aside(&mut self, e: &Entry, why: &str) -> anyhow::Result<()> {
        self.forget(e.seq);
        let dir = self.corrupt_dir();
        std::fs::create_dir_all(&dir)?;
        let to = dir.join(e.path.file_name().expect("a record file name"));
        tracing::warn!(
            "outbox: record {} is damaged ({why}); moved to {} and skipped; the records before and after it are kept",
            e.path.display(),
            to.display()
        );
        std::fs::rename(&e.path, &to)?;
        fsync_dir(&self.dir)?;
        self.log_drop("", e.seq, &format!("damaged record: {why}"))
    }

    fn log_drop(&self, id: &str, seq: u64, reason: &str) -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dropped_log())?;
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": id, "seq": seq, "reason": reason,
                "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string()})
        )?;
        f.sync_all()?;
        Ok(())
    }

    /// Removes an acknowledged entry.
    pub fn remove(&mut self, e: &Entry) -> anyhow::Result<()> {
        match std::fs::remove_file(&e.path) {
            Ok(()) => {
                self.forget(e.seq);
                Ok(fsync_dir(&self.dir)?)
            }
            // Already gone (acknowledged twice after a replay): fine.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.forget(e.seq);
                Ok(())
            }
            Err(err) => Err(anyhow::Error::new(err).context(format!(
                "{}: cannot remove the acknowledged record",
                e.path.display()
            ))),
        }
    }

    /// Sets an entry aside unsent, with its reason in `dropped.jsonl` (e.g. a result larger
    /// than the broker takes): logged and counted, never silent.
    pub fn drop_entry(&mut self, e: &Entry, reason: &str) -> anyhow::Result<()> {
        let Ok(payload) = self.read(e) else {
            // Damaged: already set aside and counted.
            return Ok(());
        };
        let id = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            .unwrap_or_default();
        tracing::warn!(
            "outbox: dropping result {id} (entry {}) unsent: {reason}",
            e.seq
        );
        self.log_drop(&id, e.seq, reason)?;
        self.remove(e)?;
        Ok(())
    }

    /// Drops the oldest entries while a bound is exceeded. The index is in sequence order,
    /// which is the order written, so only the front is ever looked at.
    pub fn enforce_limits(&mut self) -> anyhow::Result<()> {
        let l = self.limits;
        let max_age = Duration::from_secs(l.max_age_hours * 3600);
        while let Some((&seq, m)) = self.index.iter().next() {
            let old = l.max_age_hours > 0 && m.queued.elapsed() > max_age;
            let reason = if self.index.len() > l.max_entries {
                format!("more than {} queued results", l.max_entries)
            } else if self.bytes > l.max_bytes {
                format!("more than {} bytes queued", l.max_bytes)
            } else if old {
                format!("older than {} hours", l.max_age_hours)
            } else {
                break;
            };
            let e = Entry {
                seq,
                path: m.path.clone(),
            };
            self.drop_entry(&e, &reason)?;
            // Whatever happened on disk, the entry leaves the index: the loop must progress.
            self.forget(seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_years_off_drops_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let limits = OutboxLimits {
            max_age_hours: 1,
            ..OutboxLimits::default()
        };
        let mut o = Outbox::open(&dir, limits).unwrap();
        for i in 0..4 {
            o.push(format!("{{\"id\":\"r{i}\"}}").as_bytes()).unwrap();
        }
        // Written while the board's clock said 2016, or 2036: NTP has set it right since.
        for (e, when) in o
            .entries()
            .unwrap()
            .iter()
            .zip(["2016-01-01", "2036-01-01"].iter().cycle())
        {
            let ok = std::process::Command::new("touch")
                .args(["-m", "-d", when])
                .arg(&e.path)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let o = Outbox::open(&dir, limits).unwrap();
        assert_eq!((o.depth(), o.dropped()), (4, 0));
    }

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

    #[test]
    fn a_torn_or_damaged_record_is_set_aside_and_the_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        // A record from an older version, without a header.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{:020}.json", 0)), b"{\"id\":\"legacy\"}").unwrap();
        let mut o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        let entries: Vec<Entry> = (0..4)
            .map(|i| o.push(format!("{{\"id\":\"r{i}\"}}").as_bytes()).unwrap())
            .collect();
        // r1 altered in place (a bad sector), r3 (the tail) cut short (a torn write).
        let mut b = std::fs::read(&entries[1].path).unwrap();
        *b.last_mut().unwrap() ^= 0x20;
        std::fs::write(&entries[1].path, b).unwrap();
        let b = std::fs::read(&entries[3].path).unwrap();
        std::fs::write(&entries[3].path, &b[..b.len() - 3]).unwrap();

        // Re-opening checks the tail.
        let mut o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        assert!(
            !entries[3].path.exists(),
            "the torn tail is set aside at start-up"
        );
        let payloads: Vec<String> = o
            .entries()
            .unwrap()
            .iter()
            .filter_map(|e| o.read(e).ok())
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(
            payloads,
            ["{\"id\":\"legacy\"}", "{\"id\":\"r0\"}", "{\"id\":\"r2\"}"]
        );
        assert_eq!(o.dropped(), 2);
        let corrupt: Vec<_> = std::fs::read_dir(tmp.path().join("outbox-corrupt"))
            .unwrap()
            .collect();
        assert_eq!(corrupt.len(), 2, "kept for inspection, not deleted");
        let log = std::fs::read_to_string(tmp.path().join("dropped.jsonl")).unwrap();
        assert!(
            log.contains("torn record") && log.contains("damaged record"),
            "{log}"
        );
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
        assert!(decode(b"FVQ1 00000000 5\nabc").is_err());
        assert!(decode(b"FVQ2 00000000 0\n").is_err());
    }

    /// A small tmpfs, where the test may mount one (root in a sandbox that allows it).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
            std::fs::create_dir_all(at).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| Tmpfs(at.to_owned()))
        }

        fn remount_ro(&self) {
            let ok = std::process::Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&self.0)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_full_disk_or_read_only_state_gives_a_clear_error_and_keeps_the_queue() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(&tmp.path().join("state"), "64k") else {
            fv_e2e::missing("MOUNT", "cannot mount a tmpfs here (needs root)");
            return;
        };
        let dir = fs.0.join("outbox");
        let mut o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        let payload = vec![b'x'; 3000];
        let mut stored = 0;
        let err = loop {
            match o.push(&payload) {
                Ok(_) => stored += 1,
                Err(e) => break e.to_string(),
            }
            assert!(stored < 1000, "a 64k tmpfs never filled up");
        };
        assert!(stored > 0);
        assert!(
            err.contains("disk is full") && err.contains(".rec"),
            "names the file and the cause: {err}"
        );
        let check = |o: &mut Outbox| {
            let e = o.entries().unwrap();
            assert_eq!(e.len(), stored, "no stored record lost");
            for e in &e {
                assert_eq!(o.read(e).unwrap(), payload);
            }
            assert!(std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .all(|e| e.path().extension().is_some_and(|x| x == "rec")));
        };
        check(&mut o);

        fs.remount_ro();
        let err = o.push(b"{}").unwrap_err().to_string();
        assert!(err.contains("read-only"), "{err}");
        check(&mut o);
        // And it opens again read-only, for the publisher.
        check(&mut Outbox::open(&dir, OutboxLimits::default()).unwrap());
    }

    /// The index answers without listing the directory: with a file put into the folder
    /// behind the outbox's back, `depth` and `after` still see only what was pushed.
    #[test]
    fn what_is_queued_comes_from_the_index_not_a_directory_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let mut o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        let a = o.push(b"{\"id\":\"a\"}").unwrap();
        std::fs::write(dir.join(format!("{:020}.rec", 77)), encode(b"{}")).unwrap();
        let b = o.push(b"{\"id\":\"b\"}").unwrap();
        assert_eq!(o.depth(), 2);
        assert_eq!(o.after(Some(a.seq), 10), vec![b.clone()]);
        assert_eq!(o.after(None, 1), vec![a.clone()]);
        o.remove(&a).unwrap();
        assert_eq!(o.after(None, 10), vec![b]);
        // Re-opened, the directory is read once: the stray record is found then.
        let o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        assert_eq!(o.depth(), 2);
    }

    /// A measurement, not a check: `cargo test -p fv-edge --release --lib --
    /// --ignored outbox_drain --nocapture`. Queues N records (written directly, as a long
    /// offline spell leaves them), opens the outbox, then drains it as the publisher does:
    /// the next 32 after the last handed, read, remove (with its directory fsync).
    #[test]
    #[ignore = "a measurement (RELIABILITY.md): run with --ignored --nocapture"]
    fn outbox_drain_of_many_records() {
        let n: usize = std::env::var("FV_DRAIN_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        std::fs::create_dir_all(&dir).unwrap();
        let payload = vec![b'x'; 1500];
        for seq in 0..n {
            std::fs::write(dir.join(format!("{seq:020}.rec")), encode(&payload)).unwrap();
        }
        let t = std::time::Instant::now();
        let mut o = Outbox::open(&dir, OutboxLimits::default()).unwrap();
        let opened = t.elapsed();
        assert_eq!(o.depth(), n);
        let t = std::time::Instant::now();
        let mut last = None;
        let mut done = 0;
        let mut first_half = Duration::ZERO;
        loop {
            let batch = o.after(last, 32);
            if batch.is_empty() {
                break;
            }
            for e in batch {
                let _ = o.read(&e).unwrap();
                o.remove(&e).unwrap();
                last = Some(e.seq);
                done += 1;
                if done == n / 2 {
                    first_half = t.elapsed();
                }
            }
        }
        let all = t.elapsed();
        assert_eq!(o.depth(), 0);
        println!(
            "outbox of {n} records: opened in {:.2} s; drained in {:.1} s ({:.0} records/s; first half {:.1} s, second half {:.1} s)",
            opened.as_secs_f64(),
            all.as_secs_f64(),
            n as f64 / all.as_secs_f64(),
            first_half.as_secs_f64(),
            (all - first_half).as_secs_f64()
        );
    }
}
