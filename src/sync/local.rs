//! Local file-system side: atomic writes and safe paths under `localDir`.
//!
//! - A download is streamed to `.gg-s3-sync.<random>.part` in the destination folder, fsynced,
//!   given the object's `LastModified` as mtime, and renamed over the final name; the folder is
//!   then fsynced. A [`TempFile`] that is dropped before [`TempFile::commit`] (error,
//!   cancellation, SIGTERM) deletes itself, so no partial file ever has a final name.
//! - Parent folders are created one segment at a time; an existing segment that is a symlink
//!   or a file is refused, so a symlink planted inside `localDir` is never followed out of it.
//! - Temporary files left by a `kill -9` are swept at start-up.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;

use super::plan::{LocalFile, RelPath, TEMP_PREFIX, TEMP_SUFFIX};

/// Local file-system failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS error on a path.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path segment is a symlink.
    #[error("refusing to write through the symlink {} inside localDir", path.display())]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// A file stands where a folder is needed, or a folder where a file is needed.
    #[error("{} is a {found}, but the object needs a {needed} there", path.display())]
    Conflict {
        /// The path.
        path: PathBuf,
        /// What is there.
        found: &'static str,
        /// What the object needs.
        needed: &'static str,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Creates the folders above `rel` under `root` without following symlinks; returns the
/// destination path.
///
/// # Errors
/// [`Error::Symlink`], [`Error::Conflict`], or [`Error::Io`].
pub fn prepare_destination(root: &Path, rel: &RelPath) -> Result<PathBuf, Error> {
    let mut path = root.to_path_buf();
    let mut segments = rel.segments().peekable();
    while let Some(seg) = segments.next() {
        path.push(seg);
        let last = segments.peek().is_none();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                if last {
                    // rename() replaces the link itself, never its target.
                    return Ok(path);
                }
                return Err(Error::Symlink { path });
            }
            Ok(m) if last && m.is_dir() => {
                return Err(Error::Conflict {
                    path,
                    found: "folder",
                    needed: "file",
                });
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(Error::Conflict {
                    path,
                    found: "file",
                    needed: "folder",
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !last {
                    match fs::create_dir(&path) {
                        Ok(()) => {}
                        // Another download created it meanwhile; the next check re-reads it.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                                return Err(Error::Conflict {
                                    path,
                                    found: "file",
                                    needed: "folder",
                                });
                            }
                        }
                        Err(e) => return Err(io_err("create folder", &path)(e)),
                    }
                }
            }
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
    }
    Ok(path)
}

/// Bytes available to this process on the file system holding `dir`.
#[must_use]
pub fn free_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether an error is the disk being full.
#[must_use]
pub fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28))
}

/// What is at `path` now, if it is a regular file (symlinks are not followed).
#[must_use]
pub fn observe(path: &Path) -> Option<LocalFile> {
    let m = fs::symlink_metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    Some(LocalFile {
        size: m.len(),
        mtime_ns: mtime_ns(m.modified().ok()?),
    })
}

/// A time as nanoseconds since the epoch (negative before it).
#[must_use]
pub fn mtime_ns(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

/// Write buffer per download: tokio file writes are blocking-pool round trips, so small body
/// chunks must not each become one.
pub const WRITE_BUFFER: usize = 256 * 1024;

/// A temporary file that becomes the destination on [`TempFile::commit`], or vanishes.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    committed: bool,
}

impl TempFile {
    /// Creates a new temporary file in `dir`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be created.
    pub async fn create(dir: &Path) -> Result<Self, Error> {
        loop {
            let name = format!("{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}", fastrand::u64(..));
            let path = dir.join(name);
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file)),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create a temporary file in", dir)(e)),
            }
        }
    }

    /// Where the data is being written.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes.
    ///
    /// # Errors
    /// [`Error::Io`], e.g. on a full disk.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let path = &self.path;
        match self.file.as_mut() {
            Some(f) => f.write_all(data).await.map_err(io_err("write", path)),
            None => Err(io_err("write", path)(io::Error::other(
                "file already closed",
            ))),
        }
    }

    /// Makes the data durable under `dest`: fsync, set mtime, rename, fsync the folder.
    /// Returns the resulting file's size and mtime as read back.
    ///
    /// # Errors
    /// [`Error::Io`]; the temporary file is removed.
    pub async fn commit(
        mut self,
        dest: &Path,
        mtime: Option<SystemTime>,
    ) -> Result<LocalFile, Error> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io_err("commit", &self.path)(io::Error::other("file already closed")))?;
        file.flush().await.map_err(io_err("write", &self.path))?;
        let std_file = file.into_inner().into_std().await;
        let tmp = self.path.clone();
        let dest = dest.to_owned();
        let result = tokio::task::spawn_blocking(move || -> Result<LocalFile, Error> {
            if let Some(t) = mtime {
                std_file
                    .set_modified(t)
                    .map_err(io_err("set the modification time of", &tmp))?;
            }
            std_file.sync_all().map_err(io_err("sync", &tmp))?;
            drop(std_file);
            fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
            if let Some(dir) = dest.parent() {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("sync folder", dir))?;
            }
            observe(&dest).ok_or_else(|| io_err("read back", &dest)(io::ErrorKind::NotFound.into()))
        })
        .await
        .map_err(|e| io_err("finish writing", &self.path)(io::Error::other(e)))?;
        if result.is_ok() {
            self.committed = true;
        }
        result
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// How long a resumable partial download is kept for the same object version to come back.
pub const RESUME_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether a file named `name` is a leftover to remove (pure): any plain temporary file, and
/// resumable downloads untouched for [`RESUME_MAX_AGE`] (their object likely went for good).
#[must_use]
pub fn is_leftover(name: &str, modified: Option<SystemTime>, now: SystemTime) -> bool {
    if !name.starts_with(TEMP_PREFIX) {
        return false;
    }
    if name.contains(super::ranged::RESUME_MARK) {
        return modified
            .is_some_and(|m| now.duration_since(m).unwrap_or_default() > RESUME_MAX_AGE);
    }
    name.ends_with(TEMP_SUFFIX)
}

/// Removes temporary files a killed process left under `root` (symlinks are not followed),
/// and resumable downloads abandoned for [`RESUME_MAX_AGE`].
/// Returns how many were removed.
///
/// # Errors
/// [`Error::Io`] if a folder cannot be read.
pub fn sweep_temp_files(root: &Path, now: SystemTime) -> Result<usize, Error> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read folder", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read folder", &dir))?;
            let ft = entry
                .file_type()
                .map_err(io_err("inspect", &entry.path()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && {
                let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
                is_leftover(&name, modified, now)
            } {
                fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::plan::{map_key, KeyVerdict};

    fn rel(s: &str) -> RelPath {
        match map_key(s, "", 1) {
            KeyVerdict::Path(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn creates_parents_and_refuses_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = prepare_destination(root.path(), &rel("a/b/c.txt")).unwrap();
        assert_eq!(dest, root.path().join("a/b/c.txt"));
        assert!(root.path().join("a/b").is_dir());

        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let err = prepare_destination(root.path(), &rel("link/x.txt")).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err:?}");

        fs::write(root.path().join("file"), b"x").unwrap();
        let err = prepare_destination(root.path(), &rel("file/x.txt")).unwrap_err();
        assert!(
            matches!(err, Error::Conflict { found: "file", .. }),
            "{err:?}"
        );
        let err = prepare_destination(root.path(), &rel("a/b")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Conflict {
                    found: "folder",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn temp_file_commits_or_vanishes() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("f.txt");
        let mut t = TempFile::create(root.path()).await.unwrap();
        t.write(b"hello").await.unwrap();
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let got = t.commit(&dest, Some(mtime)).await.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(
            got,
            LocalFile {
                size: 5,
                mtime_ns: mtime_ns(mtime)
            }
        );

        let mut t = TempFile::create(root.path()).await.unwrap();
        t.write(b"partial").await.unwrap();
        let tmp = t.path().to_owned();
        drop(t);
        assert!(!tmp.exists());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn leftovers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 24 * 3600);
        let day = Duration::from_secs(24 * 3600);
        assert!(is_leftover(".gg-s3-sync.00ff.part", Some(now), now));
        assert!(
            !is_leftover(".gg-s3-sync.ab.resume.part", Some(now - day), now),
            "recent partial kept"
        );
        assert!(is_leftover(
            ".gg-s3-sync.ab.resume.part",
            Some(now - 8 * day),
            now
        ));
        assert!(is_leftover(
            ".gg-s3-sync.ab.resume.json",
            Some(now - 8 * day),
            now
        ));
        assert!(!is_leftover("keep.part", Some(now - 8 * day), now));
        assert!(
            !is_leftover(".gg-s3-sync.ab.resume.json", None, now),
            "unknown age is kept"
        );
    }

    #[test]
    fn sweeps_only_temp_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/.gg-s3-sync.00ff.part"), b"x").unwrap();
        fs::write(root.path().join("d/keep.part"), b"x").unwrap();
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let old = root.path().join("d/.gg-s3-sync.aa.resume.part");
        fs::write(&old, b"x").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(now - RESUME_MAX_AGE * 2)
            .unwrap();
        fs::write(root.path().join("d/.gg-s3-sync.bb.resume.part"), b"x").unwrap();
        assert_eq!(sweep_temp_files(root.path(), now).unwrap(), 2);
        assert!(!old.exists(), "abandoned partial download removed");
        assert!(
            root.path().join("d/.gg-s3-sync.bb.resume.part").exists(),
            "recent one kept for resuming"
        );
        assert!(root.path().join("d/keep.part").exists());
    }
}
