//! Local file-system side: atomic writes and safe paths under `localDir`.
//!
//! Every operation inside `localDir` goes through a [`Folder`]: an open folder descriptor, with
//! entries named relative to it (`openat`, `mkdirat`, `renameat`, `unlinkat`, `statat`), each
//! with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`. A symlink planted at any name (a parent folder,
//! a temporary or resume file), or swapped in between a check and a use, is never followed:
//! the call fails instead. Nested folders are opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` where the kernel has it (Linux 5.6), else segment by segment.
//!
//! - A download is streamed to `.gg-s3-sync.<random>.part` in the destination folder, fsynced,
//!   given the object's `LastModified` as mtime, and renamed over the final name; the folder is
//!   then fsynced. A [`TempFile`] that is dropped before [`TempFile::commit`] (error,
//!   cancellation, SIGTERM) deletes itself, so no partial file ever has a final name.
//!   Small objects on most local file systems are committed a batch at a time instead
//!   (`super::group`: one `syncfs`, then the renames, then one fsync per folder).
//! - Parent folders are created one segment at a time; an existing segment that is a symlink
//!   or a file is refused, so a symlink planted inside `localDir` is never followed out of it.
//! - Temporary files left by a `kill -9` are swept at start-up.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

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

/// An [`Error::Io`] for `action` on `path`.
pub(crate) fn io_error(action: &'static str, path: PathBuf, source: io::Error) -> Error {
    Error::Io {
        action,
        path,
        source,
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Flags for opening a folder inside `localDir`: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Permission bits for what the component creates (`fileMode`, `dirMode`); `None`: the
/// umask decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes {
    /// Files.
    pub file: Option<u32>,
    /// Folders.
    pub dir: Option<u32>,
}

/// An open folder inside `localDir` (or `localDir` itself). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Folder {
    fd: Arc<OwnedFd>,
    /// For messages only; never used to reach the folder again.
    path: PathBuf,
    /// Applied to what is created below this folder.
    modes: Modes,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    e.into()
}

impl std::os::fd::AsFd for Folder {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Folder {
    /// Opens `localDir` itself. The configured path may be a symlink (the user chose it);
    /// nothing below it may.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn open_root(path: &Path) -> Result<Self, Error> {
        Self::open_root_with(path, Modes::default())
    }

    /// As [`Folder::open_root`]; files and folders created below get `modes`.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn open_root_with(path: &Path, modes: Modes) -> Result<Self, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open folder", path)(errno(e)))?;
        Ok(Self {
            fd: Arc::new(fd),
            path: path.to_owned(),
            modes,
        })
    }

    /// The folder's path, for messages.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside this folder, for messages.
    #[must_use]
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn refused(&self, name: &str, e: rustix::io::Errno, action: &'static str) -> Error {
        let path = self.display(name);
        match e {
            // O_DIRECTORY | O_NOFOLLOW on a symlink gives ENOTDIR (or ELOOP): say which.
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                let link = self.stat(name).is_some_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
                });
                if link || e == rustix::io::Errno::LOOP {
                    Error::Symlink { path }
                } else {
                    Error::Conflict {
                        path,
                        found: "file",
                        needed: "folder",
                    }
                }
            }
            other => io_err(action, &path)(errno(other)),
        }
    }

    /// The sub-folder `name`, created if `create` and missing. `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Symlink`] if `name` is a symlink, [`Error::Conflict`] if it is a file.
    pub fn subfolder(&self, name: &str, create: bool) -> Result<Option<Self>, Error> {
        let mut created = false;
        loop {
            match rustix::fs::openat(&*self.fd, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    if let (true, Some(mode)) = (created, self.modes.dir) {
                        // The umask applied at mkdirat; set the exact bits on the folder opened.
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| {
                            io_err("set the mode of", &self.display(name))(errno(e))
                        })?;
                    }
                    return Ok(Some(Self {
                        fd: Arc::new(fd),
                        path: self.display(name),
                        modes: self.modes,
                    }));
                }
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(0o777)) {
                        Ok(()) => created = true,
                        // Created by a concurrent download: open it (again checked).
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(self.refused(name, e, "create folder")),
                    }
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.refused(name, e, "open folder")),
            }
        }
    }

    /// The folder holding `rel`, and `rel`'s file name. Missing folders are created if
    /// `create`; `None` if one is missing otherwise.
    ///
    /// # Errors
    /// [`Error::Symlink`] or [`Error::Conflict`] for a segment that is not a real folder.
    pub fn parent_of<'r>(
        &self,
        rel: &'r RelPath,
        create: bool,
    ) -> Result<Option<(Self, &'r str)>, Error> {
        let segments: Vec<&str> = rel.segments().collect();
        let Some((name, parents)) = segments.split_last() else {
            return Ok(Some((self.clone(), rel.as_str())));
        };
        if parents.is_empty() {
            return Ok(Some((self.clone(), name)));
        }
        // One call for an existing folder: the kernel refuses any symlink and any escape.
        let joined = parents.join("/");
        // Missing, a symlink, a file, or no openat2 (old kernel, seccomp): the segment walk
        // below creates what is missing and names the segment that is wrong.
        if let Ok(fd) = rustix::fs::openat2(
            &*self.fd,
            joined.as_str(),
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            return Ok(Some((
                Self {
                    fd: Arc::new(fd),
                    path: self.path.join(&joined),
                    modes: self.modes,
                },
                name,
            )));
        }
        let mut folder = self.clone();
        for seg in parents {
            match folder.subfolder(seg, create)? {
                Some(f) => folder = f,
                None => return Ok(None),
            }
        }
        Ok(Some((folder, name)))
    }

    /// Creates the file `name`, which must not exist (not even as a symlink).
    ///
    /// # Errors
    /// [`Error::Io`]: `AlreadyExists` if the name is taken.
    pub fn create_new(&self, name: &str) -> Result<fs::File, Error> {
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map_err(|e| io_err("create", &self.display(name))(errno(e)))?;
        if let Some(mode) = self.modes.file {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|e| io_err("set the mode of", &self.display(name))(errno(e)))?;
        }
        Ok(fs::File::from(fd))
    }

    /// Opens the existing regular file `name` (never a symlink); `None` if it is missing.
    ///
    /// # Errors
    /// [`Error::Symlink`] if `name` is a symlink, [`Error::Io`] otherwise.
    pub fn open_file(&self, name: &str, write: bool) -> Result<Option<fs::File>, Error> {
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        match rustix::fs::openat(
            &*self.fd,
            name,
            access | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fs::File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.refused(name, e, "open")),
        }
    }

    /// What `name` is, without following a symlink; `None` if missing.
    #[must_use]
    pub fn stat(&self, name: &str) -> Option<rustix::fs::Stat> {
        rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// The regular file `name` as [`observe`] sees it.
    #[must_use]
    pub fn observe(&self, name: &str) -> Option<LocalFile> {
        regular_file(&self.stat(name)?)
    }

    /// Renames `from` to `to` in this folder (`to` is replaced, never followed).
    ///
    /// # Errors
    /// [`Error::Conflict`] if `to` is a folder, [`Error::Io`] otherwise.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        rustix::fs::renameat(&*self.fd, from, &*self.fd, to).map_err(|e| match e {
            rustix::io::Errno::ISDIR | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST => {
                Error::Conflict {
                    path: self.display(to),
                    found: "folder",
                    needed: "file",
                }
            }
            other => io_err("rename into place", &self.display(to))(errno(other)),
        })
    }

    /// Removes the file (or symlink) `name`; `false` if it was not there.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remove(&self, name: &str) -> Result<bool, Error> {
        match rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err("remove", &self.display(name))(errno(e))),
        }
    }

    /// Removes the folder `name` if it is empty; `false` if it is not (or is gone).
    ///
    /// # Errors
    /// [`Error::Io`] for other failures.
    pub fn remove_empty_folder(&self, name: &str) -> Result<bool, Error> {
        match rustix::fs::unlinkat(&*self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(
                rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST,
            ) => Ok(false),
            Err(e) => Err(io_err("remove folder", &self.display(name))(errno(e))),
        }
    }

    /// Whether this folder's file system tells `a` from `A` (vfat and exfat, common on SD
    /// cards, do not). Read-only when the folder has an entry with a letter: is its other-case
    /// name the same file? Otherwise a probe file is created in lower case and looked up in
    /// upper case. With no entry to look at and no room for a probe (a full disk), the folder
    /// is taken as case-sensitive: nothing can be written into it anyway, and a pass must not
    /// fail before it starts.
    ///
    /// # Errors
    /// [`Error::Io`] if the folder cannot be read or the probe cannot be created.
    pub fn is_case_insensitive(&self) -> Result<bool, Error> {
        if let Some(name) = self.first_entry(|n| n.to_ascii_uppercase() != n)? {
            let inode = |n: &str| self.stat(n).map(|st| (st.st_dev, st.st_ino));
            match (inode(&name), inode(&name.to_ascii_uppercase())) {
                // An insensitive file system would have found it.
                (_, None) => return Ok(false),
                (Some(a), Some(b)) if a == b => return Ok(true),
                // Two files, or one through a FUSE file system without stable inode
                // numbers: the probe tells.
                _ => {}
            }
        }
        let probe = format!("{TEMP_PREFIX}case{:08x}{TEMP_SUFFIX}", fastrand::u32(..));
        match self.create_new(&probe) {
            Ok(file) => drop(file),
            Err(e) if is_disk_full(&e) => {
                tracing::debug!(folder = %self.path.display(), "no room for a case probe; taken as case-sensitive");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let folded = self.stat(&probe.to_uppercase()).is_some();
        self.remove(&probe)?;
        Ok(folded)
    }

    /// A reader of the folder's entries from the start: a new open file description ("."), not
    /// a dup, which shares the read position (a second listing would start at the end).
    fn read_dir(&self) -> Result<rustix::fs::Dir, Error> {
        let fd = rustix::fs::openat(&*self.fd, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err("read folder", &self.path)(errno(e)))?;
        rustix::fs::Dir::new(fd).map_err(|e| io_err("read folder", &self.path)(errno(e)))
    }

    /// The first entry (in the folder's order) whose name `wanted` accepts, reading no further.
    fn first_entry(&self, wanted: impl Fn(&str) -> bool) -> Result<Option<String>, Error> {
        let mut dir = self.read_dir()?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| io_err("read folder", &self.path)(errno(e)))?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." && wanted(&name) {
                return Ok(Some(name.into_owned()));
            }
        }
        Ok(None)
    }

    /// Makes the folder's entries durable (after a rename or removal).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync(&self) -> Result<(), Error> {
        rustix::fs::fsync(&*self.fd).map_err(|e| io_err("sync folder", &self.path)(errno(e)))
    }

    /// Bytes available to this process on the folder's file system.
    #[must_use]
    pub fn free_space(&self) -> Option<u64> {
        let s = rustix::fs::fstatvfs(&*self.fd).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// The folder's entries: (name, is a real folder, is a regular file), without following
    /// symlinks.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn entries(&self) -> Result<Vec<(String, bool, bool)>, Error> {
        let mut dir = self.read_dir()?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| io_err("read folder", &self.path)(errno(e)))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::Unknown => self
                    .stat(&name)
                    .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
                    .unwrap_or(rustix::fs::FileType::Unknown),
                k => k,
            };
            out.push((
                name,
                kind == rustix::fs::FileType::Directory,
                kind == rustix::fs::FileType::RegularFile,
            ));
        }
        Ok(out)
    }
}

/// The folder that will hold `rel` (created as needed, never through a symlink) and `rel`'s
/// file name. A symlink at the file name itself is fine: the rename replaces the link.
///
/// # Errors
/// [`Error::Symlink`], [`Error::Conflict`] (also when a folder stands at the file name), or
/// [`Error::Io`].
pub fn prepare_destination<'r>(
    root: &Folder,
    rel: &'r RelPath,
) -> Result<(Folder, &'r str), Error> {
    let (folder, name) = root.parent_of(rel, true)?.ok_or_else(|| {
        io_err("create folders for", &root.display(rel.as_str()))(io::ErrorKind::NotFound.into())
    })?;
    if folder.stat(name).is_some_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    }) {
        return Err(Error::Conflict {
            path: folder.display(name),
            found: "folder",
            needed: "file",
        });
    }
    Ok((folder, name))
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

/// `st` as a [`LocalFile`], if it is a regular file.
#[must_use]
pub fn regular_file(st: &rustix::fs::Stat) -> Option<LocalFile> {
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile).then(
        || LocalFile {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
        },
    )
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
    folder: Folder,
    name: String,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    committed: bool,
}

impl TempFile {
    /// Creates a new temporary file in `folder` (`O_CREAT | O_EXCL | O_NOFOLLOW`: a name
    /// taken by anything, a planted symlink included, is skipped for another).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be created.
    pub async fn create(folder: &Folder) -> Result<Self, Error> {
        let f = folder.clone();
        let (name, file) = tokio::task::spawn_blocking(move || create_temp(&f))
            .await
            .map_err(|e| {
                io_err("create a temporary file in", folder.path())(io::Error::other(e))
            })??;
        Ok(Self {
            folder: folder.clone(),
            name,
            file: Some(tokio::io::BufWriter::with_capacity(
                WRITE_BUFFER,
                tokio::fs::File::from_std(file),
            )),
            committed: false,
        })
    }

    /// Where the data is being written.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.folder.display(&self.name)
    }

    /// Appends bytes.
    ///
    /// # Errors
    /// [`Error::Io`], e.g. on a full disk.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let path = self.path();
        match self.file.as_mut() {
            Some(f) => f.write_all(data).await.map_err(io_err("write", &path)),
            None => Err(io_err("write", &path)(io::Error::other(
                "file already closed",
            ))),
        }
    }

    /// Makes the data durable under `dest` in the same folder: fsync, set mtime, rename, fsync
    /// the folder ([`commit_file`]). Returns the file's size and mtime as read back.
    ///
    /// # Errors
    /// [`Error::Io`]; the temporary file is removed.
    pub async fn commit(
        mut self,
        dest: &str,
        mtime: Option<SystemTime>,
        entry: EntrySync,
    ) -> Result<LocalFile, Error> {
        let path = self.path();
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io_err("commit", &path)(io::Error::other("file already closed")))?;
        file.flush().await.map_err(io_err("write", &path))?;
        let std_file = file.into_inner().into_std().await;
        let (folder, tmp, dest) = (self.folder.clone(), self.name.clone(), dest.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            commit_file(&folder, std_file, &tmp, &dest, mtime, entry)
        })
        .await
        .map_err(|e| io_err("finish writing", &path)(io::Error::other(e)))?;
        if result.is_ok() {
            self.committed = true;
        }
        result
    }
}

/// A new temporary file in `folder` under a random name (`O_CREAT | O_EXCL | O_NOFOLLOW`: a
/// name taken by anything, a planted symlink included, is skipped for another). Blocking.
pub(crate) fn create_temp(folder: &Folder) -> Result<(String, fs::File), Error> {
    loop {
        let name = format!("{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}", fastrand::u64(..));
        match folder.create_new(&name) {
            Ok(file) => return Ok((name, file)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `data` (already in memory and verified) as `dest` in `folder` in one blocking task:
/// a temporary file, the data, then [`commit_file`]. For small objects this replaces a
/// blocking-pool hop per step with one. The temporary file is removed on any failure, and a
/// cancelled caller cannot stop it halfway: the name points at the old data or the new.
///
/// # Errors
/// [`Error::Io`] (e.g. a full disk) or [`Error::Conflict`].
pub async fn write_new(
    folder: &Folder,
    dest: &str,
    data: Vec<u8>,
    mtime: Option<SystemTime>,
    entry: EntrySync,
) -> Result<LocalFile, Error> {
    use std::io::Write as _;
    let (folder, dest) = (folder.clone(), dest.to_owned());
    let path = folder.display(&dest);
    tokio::task::spawn_blocking(move || {
        let (tmp, mut file) = create_temp(&folder)?;
        let result = file
            .write_all(&data)
            .map_err(io_err("write", &folder.display(&tmp)))
            .and_then(|()| commit_file(&folder, file, &tmp, &dest, mtime, entry));
        if result.is_err() {
            let _ = folder.remove(&tmp);
        }
        result
    })
    .await
    .map_err(|e| io_err("finish writing", &path)(io::Error::other(e)))?
}

/// When the folder entry a commit makes is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySync {
    /// The folder is fsynced before the commit returns.
    Now,
    /// The caller fsyncs the folder later, once for a batch of commits, and records none of
    /// them before that (the data itself is always synced before the rename).
    Batched,
}

/// The one durable commit of both download paths: `file` (written as `tmp` in `folder`) gets
/// `mtime`, is fsynced, renamed to `dest` (replacing whatever is there, never following it),
/// and the folder is fsynced ([`EntrySync::Now`], or by the caller for a batch), so the name
/// points at complete data after a crash. Blocking.
///
/// # Errors
/// [`Error::Io`] or [`Error::Conflict`].
pub fn commit_file(
    folder: &Folder,
    file: fs::File,
    tmp: &str,
    dest: &str,
    mtime: Option<SystemTime>,
    entry: EntrySync,
) -> Result<LocalFile, Error> {
    let path = folder.display(tmp);
    if let Some(t) = mtime {
        file.set_modified(t)
            .map_err(io_err("set the modification time of", &path))?;
    }
    file.sync_all().map_err(io_err("sync", &path))?;
    drop(file);
    folder.rename(tmp, dest)?;
    if entry == EntrySync::Now {
        folder.sync()?;
    }
    folder
        .observe(dest)
        .ok_or_else(|| io_err("read back", &folder.display(dest))(io::ErrorKind::NotFound.into()))
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            let _ = self.folder.remove(&self.name);
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
    if name.contains(super::plan::RESUME_MARK) {
        return modified
            .is_some_and(|m| now.duration_since(m).unwrap_or_default() > RESUME_MAX_AGE);
    }
    name.ends_with(TEMP_SUFFIX)
}

/// Removes temporary files a killed process left under `root` (symlinks are not followed),
/// and resumable downloads abandoned for [`RESUME_MAX_AGE`]. Every folder is opened relative to
/// its parent's descriptor, so a folder swapped for a symlink mid-sweep is not entered.
/// Returns how many were removed.
///
/// # Errors
/// [`Error::Io`] if a folder cannot be read.
pub fn sweep_temp_files(root: &Folder, now: SystemTime) -> Result<usize, Error> {
    let mut removed = 0;
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for (name, is_dir, is_file) in dir.entries()? {
            if is_dir {
                match dir.subfolder(&name, false) {
                    Ok(Some(sub)) => stack.push(sub),
                    // Gone, or swapped for a symlink or a file since it was listed.
                    Ok(None) | Err(Error::Symlink { .. } | Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            } else if is_file && name.starts_with(TEMP_PREFIX) {
                let modified = dir.stat(&name).map(|st| {
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(st.st_mtime).unwrap_or(0),
                            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
                        )
                });
                if is_leftover(&name, modified, now) && dir.remove(&name)? {
                    removed += 1;
                }
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

    fn open(root: &tempfile::TempDir) -> Folder {
        Folder::open_root(root.path()).unwrap()
    }

    #[test]
    fn a_folder_can_be_listed_twice() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), b"x").unwrap();
        let f = open(&root);
        assert_eq!(f.entries().unwrap().len(), 1);
        assert_eq!(
            f.entries().unwrap().len(),
            1,
            "the second listing starts at the top"
        );
    }

    #[test]
    fn creates_parents_and_refuses_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = open(&root);
        let abc = rel("a/b/c.txt");
        let (folder, name) = prepare_destination(&r, &abc).unwrap();
        assert_eq!(
            (folder.path(), name),
            (root.path().join("a/b").as_path(), "c.txt")
        );
        assert!(root.path().join("a/b").is_dir());

        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let err = prepare_destination(&r, &rel("link/x.txt")).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/deep")).unwrap();
        let err = prepare_destination(&r, &rel("a/deep/x/y.txt")).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err:?}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        fs::write(root.path().join("file"), b"x").unwrap();
        let err = prepare_destination(&r, &rel("file/x.txt")).unwrap_err();
        assert!(
            matches!(err, Error::Conflict { found: "file", .. }),
            "{err:?}"
        );
        let err = prepare_destination(&r, &rel("a/b")).unwrap_err();
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
        let r = open(&root);
        let dest = root.path().join("f.txt");
        let mut t = TempFile::create(&r).await.unwrap();
        t.write(b"hello").await.unwrap();
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let got = t
            .commit("f.txt", Some(mtime), EntrySync::Now)
            .await
            .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(
            got,
            LocalFile {
                size: 5,
                mtime_ns: mtime_ns(mtime)
            }
        );

        let mut t = TempFile::create(&r).await.unwrap();
        t.write(b"partial").await.unwrap();
        let tmp = t.path();
        drop(t);
        assert!(!tmp.exists());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    /// The in-memory path for small objects: same result as a streamed temporary file, a link
    /// at the final name replaced (not followed), and nothing left behind on failure.
    #[tokio::test(flavor = "multi_thread")]
    async fn small_writes_commit_in_one_step_or_leave_nothing() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = open(&root);
        let mtime = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let got = write_new(&r, "f.txt", b"hello".to_vec(), Some(mtime), EntrySync::Now)
            .await
            .unwrap();
        assert_eq!(fs::read(root.path().join("f.txt")).unwrap(), b"hello");
        assert_eq!(
            got,
            LocalFile {
                size: 5,
                mtime_ns: mtime_ns(mtime)
            }
        );
        let victim = outside.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("g.txt")).unwrap();
        write_new(&r, "g.txt", b"new".to_vec(), None, EntrySync::Now)
            .await
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(root.path().join("g.txt")).unwrap(), b"new");
        // A folder at the final name: refused, and no temporary file stays.
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/inside"), b"x").unwrap();
        assert!(write_new(&r, "d", b"data".to_vec(), None, EntrySync::Now)
            .await
            .is_err());
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
    }

    /// A symlink at the destination name is replaced, never written through.
    #[tokio::test]
    async fn a_link_at_the_final_name_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("f.txt")).unwrap();
        let mut t = TempFile::create(&open(&root)).await.unwrap();
        t.write(b"new").await.unwrap();
        t.commit("f.txt", None, EntrySync::Now).await.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(root.path().join("f.txt"))
            .unwrap()
            .is_file());
    }

    /// A thread swaps a folder for a symlink to outside as fast as it can while files are
    /// written below it: each write lands inside, or is refused; nothing lands outside.
    #[test]
    fn a_racing_swapper_never_redirects_a_write() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        let parked = root.path().join("d.real");
        fs::create_dir(&dir).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, parked, outside, stop) = (
                dir.clone(),
                parked.clone(),
                outside.path().to_owned(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                // When the writer recreates `d` while it is parked, the parked folder cannot
                // come back; a fresh parking name each round keeps the swapping going.
                let mut round = 0_u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    round += 1;
                    let parked = parked.with_extension(round.to_string());
                    let _ = fs::rename(&dir, &parked);
                    let _ = std::os::unix::fs::symlink(&outside, &dir);
                    let _ = fs::remove_file(&dir);
                    let _ = fs::rename(&parked, &dir);
                }
            })
        };
        let r = open(&root);
        let (mut written, mut refused) = (0, 0);
        // Until the swapper has won some races and lost others (bounded; under load it may
        // take longer to interleave).
        for i in 0..200_000 {
            if i >= 2_000 && written > 0 && refused > 0 {
                break;
            }
            let rel = rel(&format!("d/sub{}/f{i}.txt", i % 3));
            match prepare_destination(&r, &rel) {
                Ok((folder, name)) => {
                    let f = folder.create_new(name);
                    if f.is_ok() {
                        written += 1;
                    } else {
                        refused += 1;
                    }
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing was written outside ({written} written, {refused} refused)"
        );
        assert!(
            written > 0 && refused > 0,
            "the race happened: {written} written, {refused} refused"
        );
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
        assert_eq!(sweep_temp_files(&open(&root), now).unwrap(), 2);
        assert!(!old.exists(), "abandoned partial download removed");
        assert!(
            root.path().join("d/.gg-s3-sync.bb.resume.part").exists(),
            "recent one kept for resuming"
        );
        assert!(root.path().join("d/keep.part").exists());
    }
}
