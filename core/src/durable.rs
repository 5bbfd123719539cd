//! Writing a file so that a crash or a power cut leaves either the old file or the new one,
//! whole: a temporary name beside it, fsync, rename, fsync of the folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` whole and durably (see the module doc). On failure the
/// temporary is removed and `path` is as it was.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let done = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| commit(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// The temporary name [`write`] uses beside `path` (`PATH.tmp`).
pub fn temporary(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp", path.display()))
}

/// Makes a file written under the temporary name `tmp` (by a library that writes files
/// itself) durable as `path`: fsync, rename, fsync of the folder.
pub fn commit(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Makes `path`'s entry in its folder durable (after a create or a rename).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        super::write(&p, b"one").unwrap();
        super::write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Into a folder that is not there: an error, and nothing left behind.
        let e = super::write(&dir.path().join("none/b.json"), b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
