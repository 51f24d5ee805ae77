//! Group commit of small files: one writer thread writes them as temporary files, makes a
//! whole batch durable with one `syncfs` before it renames any of them, then syncs each
//! folder once, as git's `core.fsyncMethod=batch` does for loose objects.
//!
//! The rule is the engine's: no file reaches its final name before its data is durable, and
//! no object is recorded before its folder entry is. A per-file `fsync` pays for a device
//! cache flush and an inode write per file; a batch pays for two flushes. The download tasks
//! hand a verified body over and go on ([`Writer::queue`]); the engine calls
//! [`Writer::flush`] before it records the objects ([`Ticket::wait`]).
//!
//! `syncfs` is used only where it is known to write and report everything:
//! - on ext2/3/4, XFS, Btrfs, F2FS and tmpfs (a network or FUSE file system may not pass it on);
//! - on Linux 5.8 or later (before, `syncfs` returned 0 even when write-back failed);
//! - for 4 or more files on one file system (fewer are fsynced one by one, so a trickle of
//!   changes does not flush what other programs have written).
//!
//! Elsewhere the engine keeps its per-file path ([`Writer::accepts`] says which).

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::SystemTime;

use super::local::{self, Folder};
use super::plan::LocalFile;

/// Files on one file system below which each is fsynced instead of syncing the whole file
/// system: `syncfs` also writes what other programs left dirty.
pub(crate) const SYNCFS_MIN: usize = 4;
/// Written files held before the writer makes them durable on its own (each holds an open
/// descriptor until then).
const PENDING_MAX: usize = 256;
/// Bodies queued for the writer; a full queue holds the download tasks back (at most
/// `QUEUE` × 256 KiB of memory).
const QUEUE: usize = 32;

/// File systems whose `syncfs` writes back every dirty file and inode and flushes the device
/// (`f_type`, from `linux/magic.h`).
const SYNCFS_FILE_SYSTEMS: [(u32, &str); 5] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0xF2F5_2010, "f2fs"),
    (0x0102_1994, "tmpfs"),
];

/// Whether `syncfs` on a file system of type `magic` makes its files durable (pure).
#[must_use]
pub(crate) fn syncfs_file_system(magic: u32) -> bool {
    SYNCFS_FILE_SYSTEMS.iter().any(|(m, _)| *m == magic)
}

/// Whether a kernel of this release (`uname -r`) reports write-back errors from `syncfs`
/// (Linux 5.8, "vfs: track per-sb writeback errors and report them to syncfs"). Pure.
#[must_use]
pub(crate) fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

/// How a batch of `files` written on one file system is made durable (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// One `syncfs` for all of them.
    SyncFs,
    /// An `fsync` each.
    EachFile,
}

/// Picks [`Durability`] for `files` files on a file system where `syncfs` can be trusted
/// (`trusted`) or not. Pure.
#[must_use]
pub(crate) fn durability(files: usize, trusted: bool) -> Durability {
    if trusted && files >= SYNCFS_MIN {
        Durability::SyncFs
    } else {
        Durability::EachFile
    }
}

fn kernel_reports_syncfs_errors() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let uts = rustix::system::uname();
        syncfs_reports_errors(&uts.release().to_string_lossy())
    })
}

/// What the writer answers for one file: where it is now, or why it is not there.
type Reply = Result<LocalFile, local::Error>;

/// A file handed to the [`Writer`]; [`Ticket::wait`] after [`Writer::flush`] says how it went.
#[derive(Debug)]
pub(crate) struct Ticket(std_mpsc::Receiver<Reply>);

impl Ticket {
    /// The file's fate. Blocks until the writer has made it durable or given up on it: call
    /// it after [`Writer::flush`], off the runtime's threads.
    ///
    /// # Errors
    /// Why the file is not in place (its temporary file is gone).
    pub(crate) fn wait(self) -> Reply {
        self.0.recv().unwrap_or_else(|_| Err(writer_gone()))
    }
}

fn writer_gone() -> local::Error {
    local::Error::Io {
        action: "write",
        path: "a small file".into(),
        source: std::io::Error::other("the file writer stopped"),
    }
}

enum Message {
    Write {
        folder: Folder,
        dest: String,
        data: Vec<u8>,
        mtime: Option<SystemTime>,
        reply: std_mpsc::Sender<Reply>,
        /// A place in the queue, given back once the body is written.
        slot: tokio::sync::OwnedSemaphorePermit,
    },
    /// Make everything queued so far durable, then answer.
    Flush(std_mpsc::Sender<()>),
}

/// A file written under a temporary name, not yet durable.
struct Pending {
    folder: Folder,
    dev: u64,
    /// The file as written (a rename keeps its inode, so this is what the final name shows).
    written: LocalFile,
    tmp: String,
    dest: String,
    file: fs::File,
    reply: std_mpsc::Sender<Reply>,
}

/// The group-commit writer: a thread started on first use, stopped when the last handle goes
/// (what it held and had not made durable is removed).
#[derive(Debug)]
pub(crate) struct Writer {
    tx: OnceLock<tokio::sync::mpsc::UnboundedSender<Message>>,
    /// Bodies handed over and not written yet: at most [`QUEUE`].
    slots: Arc<tokio::sync::Semaphore>,
    /// Per device: whether `syncfs` can be trusted there.
    trusted: Mutex<HashMap<u64, bool>>,
}

impl Default for Writer {
    fn default() -> Self {
        Self {
            tx: OnceLock::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(QUEUE)),
            trusted: Mutex::default(),
        }
    }
}

impl Writer {
    /// Whether files for `folder` go through the writer: its file system is one where
    /// `syncfs` is trusted. Elsewhere each file is fsynced as it is written.
    pub(crate) fn accepts(&self, folder: &Folder) -> bool {
        let Ok(st) = rustix::fs::fstat(folder) else {
            return false;
        };
        let dev = st.st_dev;
        let Ok(mut known) = self.trusted.lock() else {
            return false;
        };
        *known
            .entry(dev)
            .or_insert_with(|| kernel_reports_syncfs_errors() && trusted_file_system(folder))
    }

    /// Hands `data` over to be written as `dest` in `folder` with `mtime`. Waits only while the
    /// writer's queue is full.
    ///
    /// # Errors
    /// If the writer stopped.
    pub(crate) async fn queue(
        &self,
        folder: &Folder,
        dest: &str,
        data: Vec<u8>,
        mtime: Option<SystemTime>,
    ) -> Result<Ticket, local::Error> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| writer_gone())?;
        let (reply, rx) = std_mpsc::channel();
        self.sender()
            .send(Message::Write {
                folder: folder.clone(),
                dest: dest.to_owned(),
                data,
                mtime,
                reply,
                slot,
            })
            .map_err(|_| writer_gone())?;
        Ok(Ticket(rx))
    }

    /// Makes every file queued so far durable under its final name (or fails it). Blocking:
    /// call it off the runtime's threads.
    pub(crate) fn flush(&self) {
        let Some(tx) = self.tx.get() else { return };
        let (done, wait) = std_mpsc::channel();
        if tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    fn sender(&self) -> &tokio::sync::mpsc::UnboundedSender<Message> {
        self.tx.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::Builder::new()
                .name("gg-s3-sync-writer".into())
                .spawn(move || run(rx))
                .map_or_else(
                    |e| {
                        // No thread: every queue() fails with "the file writer stopped".
                        tracing::error!(error = %e, "cannot start the file writer");
                        tokio::sync::mpsc::unbounded_channel().0
                    },
                    |_| tx,
                )
        })
    }
}

fn trusted_file_system(folder: &Folder) -> bool {
    rustix::fs::fstatfs(folder).is_ok_and(|s| {
        // `f_type` is signed on some targets; the magic numbers are 32-bit patterns.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let magic = s.f_type as u32;
        syncfs_file_system(magic)
    })
}

/// The writer thread: writes each body as it arrives, and makes the written files durable on
/// a flush, or when it holds [`PENDING_MAX`].
fn run(mut rx: tokio::sync::mpsc::UnboundedReceiver<Message>) {
    let mut pending: Vec<Pending> = Vec::new();
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Write {
                folder,
                dest,
                data,
                mtime,
                reply,
                slot,
            } => {
                let written = write(&folder, &data, mtime);
                drop((data, slot));
                match written {
                    Ok((tmp, file, dev, written)) => pending.push(Pending {
                        folder,
                        dev,
                        written,
                        tmp,
                        dest,
                        file,
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                if pending.len() >= PENDING_MAX {
                    commit(std::mem::take(&mut pending));
                }
            }
            Message::Flush(done) => {
                commit(std::mem::take(&mut pending));
                let _ = done.send(());
            }
        }
    }
    // Every handle is gone: nobody will record these, so they do not get a final name.
    for p in pending {
        drop(p.file);
        let _ = p.folder.remove(&p.tmp);
    }
}

/// A temporary file with `data` and `mtime`, not synced. Returns its name, the open file, its
/// device and what it is now.
fn write(
    folder: &Folder,
    data: &[u8],
    mtime: Option<SystemTime>,
) -> Result<(String, fs::File, u64, LocalFile), local::Error> {
    use std::io::Write as _;
    let (tmp, mut file) = local::create_temp(folder)?;
    let written = file
        .write_all(data)
        .map_err(|e| local::io_error("write", folder.display(&tmp), e))
        .and_then(|()| match mtime {
            Some(t) => file.set_modified(t).map_err(|e| {
                local::io_error("set the modification time of", folder.display(&tmp), e)
            }),
            None => Ok(()),
        })
        .and_then(|()| {
            rustix::fs::fstat(&file)
                .map_err(|e| local::io_error("stat", folder.display(&tmp), e.into()))
        });
    match written {
        Ok(st) => Ok((
            tmp,
            file,
            st.st_dev,
            local::regular_file(&st).unwrap_or(LocalFile {
                size: data.len() as u64,
                mtime_ns: 0,
            }),
        )),
        Err(e) => {
            drop(file);
            let _ = folder.remove(&tmp);
            Err(e)
        }
    }
}

/// Makes `batch` durable: per device one `syncfs` (or an `fsync` per file), then the
/// renames, then one `fsync` per folder; then answers every file.
fn commit(batch: Vec<Pending>) {
    let mut per_dev: HashMap<u64, usize> = HashMap::new();
    for p in &batch {
        *per_dev.entry(p.dev).or_default() += 1;
    }
    // Durable data first, per device.
    let mut synced: HashMap<u64, Result<(), rustix::io::Errno>> = HashMap::new();
    let mut durable: Vec<Pending> = Vec::with_capacity(batch.len());
    for p in batch {
        let result = match durability(per_dev[&p.dev], true) {
            Durability::SyncFs => (*synced
                .entry(p.dev)
                .or_insert_with(|| rustix::fs::syncfs(p.file.as_fd())))
            .map_err(std::io::Error::from),
            Durability::EachFile => p.file.sync_all(),
        };
        match result {
            Ok(()) => durable.push(p),
            Err(e) => {
                let error = local::io_error("sync", p.folder.display(&p.tmp), e);
                fail(p, error);
            }
        }
    }
    // Then the final names, then each folder once.
    let mut renamed: Vec<Pending> = Vec::with_capacity(durable.len());
    for p in durable {
        match p.folder.rename(&p.tmp, &p.dest) {
            Ok(()) => renamed.push(p),
            Err(e) => fail(p, e),
        }
    }
    let mut folders: Vec<(std::path::PathBuf, Result<(), rustix::io::Errno>)> = Vec::new();
    for p in renamed {
        let synced = match folders.iter().find(|(path, _)| path == p.folder.path()) {
            Some((_, r)) => *r,
            None => {
                let r = rustix::fs::fsync(&p.folder);
                folders.push((p.folder.path().to_owned(), r));
                r
            }
        };
        let reply = match synced {
            Err(e) => Err(local::io_error(
                "sync folder",
                p.folder.path().to_owned(),
                e.into(),
            )),
            Ok(()) => Ok(p.written),
        };
        let _ = p.reply.send(reply);
    }
}

/// Answers `p` with `error`, removing its temporary file.
fn fail(p: Pending, error: local::Error) {
    drop(p.file);
    let _ = p.folder.remove(&p.tmp);
    let _ = p.reply.send(Err(error));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_file_systems() {
        assert!(syncfs_file_system(0xEF53));
        assert!(syncfs_file_system(0x9123_683E));
        // NFS, FUSE, overlayfs, vfat: each file is fsynced instead.
        for magic in [0x6969, 0x6573_5546, 0x794C_7630, 0x4d44] {
            assert!(!syncfs_file_system(magic), "{magic:#x}");
        }
    }

    #[test]
    fn kernels_that_report_syncfs_errors() {
        for (release, ok) in [
            ("5.8.0", true),
            ("5.10.104-tegra", true),
            ("6.18.0-1-cloud-amd64", true),
            ("5.7.19", false),
            ("4.19.0-rpi", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(syncfs_reports_errors(release), ok, "{release}");
        }
    }

    #[test]
    fn a_few_files_are_fsynced_one_by_one() {
        assert_eq!(durability(1, true), Durability::EachFile);
        assert_eq!(durability(SYNCFS_MIN - 1, true), Durability::EachFile);
        assert_eq!(durability(SYNCFS_MIN, true), Durability::SyncFs);
        assert_eq!(durability(1000, false), Durability::EachFile);
    }
}
