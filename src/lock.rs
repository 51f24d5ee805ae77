//! One writer at a time: an exclusive lock on `localDir` and on the state file for the length
//! of a pass, so a `gg-s3-sync once` started beside the running component fails fast instead of
//! sweeping the other's temporary files, mixing resume files or losing state records.
//!
//! `flock(2)` on the folder itself (nothing is added to `localDir`) and on `<state>.lock`. The
//! kernel releases both when the process ends, kill -9 included, so a crash never leaves a
//! stale lock. The holder's PID is read from `/proc/locks` (the parsing is pure and tested).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Lock failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the lock.
    #[error("{} is in use by another gg-s3-sync ({}); run one instance per localDir and stateDir, or wait for its pass to end", path.display(), holder.map_or_else(|| "its PID is unknown".to_owned(), |p| format!("PID {p}")))]
    InUse {
        /// The folder or lock file.
        path: PathBuf,
        /// The holder's PID, from `/proc/locks`.
        holder: Option<u32>,
    },
    /// The lock cannot be taken.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The folder or lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Held locks; dropping releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Vec<File>,
}

impl InstanceLock {
    /// Locks the folder `local_dir` and the file `<state_file>.lock`, without waiting.
    ///
    /// # Errors
    /// [`Error::InUse`] naming the holder, or [`Error::Io`].
    pub fn acquire(local_dir: &Path, state_file: &Path) -> Result<Self, Error> {
        let mut lock_name = state_file.as_os_str().to_owned();
        lock_name.push(".lock");
        let state_lock = PathBuf::from(lock_name);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        // The folder the pass writes to: the configured path may be a link the user chose (or
        // the link releases left when they were turned off), as `Folder::open_root` allows;
        // nothing below it is followed. Two paths to one folder share one lock.
        let dir = rustix::fs::open(
            local_dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| io(local_dir)(e.into()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&state_lock)
            .map_err(io(&state_lock))?;
        let mut held = Vec::with_capacity(2);
        for (f, path) in [(dir, local_dir), (file, state_lock.as_path())] {
            match flock(&f, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => held.push(f),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let holder = f.metadata().ok().and_then(|m| {
                        let locks = std::fs::read_to_string("/proc/locks").ok()?;
                        flock_holder(&locks, m.dev(), m.ino())
                    });
                    return Err(Error::InUse {
                        path: path.to_owned(),
                        holder,
                    });
                }
                Err(e) => return Err(io(path)(e.into())),
            }
        }
        Ok(Self { _held: held })
    }
}

/// The PID holding a `FLOCK` on the file `(dev, ino)`, from the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`; the device as hex major:minor).
#[must_use]
pub fn flock_holder(proc_locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    proc_locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "N:" "FLOCK" "ADVISORY" "WRITE" pid dev:ino start end; "->" marks waiters.
        if fields.get(1) != Some(&"FLOCK") || fields.contains(&"->") {
            return None;
        }
        (fields.get(5) == Some(&want.as_str())).then(|| fields.get(4)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_of_a_flock() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 fd:01:1234 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 5151 fd:01:1234 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 77 08:02:99 0 EOF\n";
        let dev = rustix::fs::makedev(0xfd, 1);
        assert_eq!(flock_holder(locks, dev, 1234), Some(4242));
        assert_eq!(flock_holder(locks, rustix::fs::makedev(8, 2), 99), Some(77));
        assert_eq!(flock_holder(locks, dev, 1), None);
    }

    #[test]
    fn a_second_lock_fails_fast_naming_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.jsonl");
        let first = InstanceLock::acquire(dir.path(), &state).unwrap();
        match InstanceLock::acquire(dir.path(), &state) {
            Err(Error::InUse { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(first);
        InstanceLock::acquire(dir.path(), &state).expect("released on drop");
    }
}
