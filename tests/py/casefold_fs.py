"""A case-insensitive, case-preserving file system over a folder, as vfat and exfat SD cards
behave: a name is found whatever its case, and keeps the case it was created with; renaming onto
a name that exists in another case replaces that file. FUSE (fusepy), for tests on kernels that
cannot mount vfat or ext4 casefold.

Usage: casefold_fs.py BACKING MOUNTPOINT   (foreground; unmount with fusermount -u MOUNTPOINT)
"""
import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class CaseFold(Operations):
    def __init__(self, backing):
        self.backing = os.path.realpath(backing)

    def _real(self, path, must_exist=False):
        """The backing path, each component matched without regard to case."""
        cur = self.backing
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            match = None
            try:
                names = os.listdir(cur)
            except OSError:
                names = []
            if part in names:
                match = part
            else:
                folded = part.casefold()
                match = next((n for n in names if n.casefold() == folded), None)
            if match is None:
                if must_exist or i < len(parts) - 1:
                    raise FuseOSError(errno.ENOENT)
                match = part
            cur = os.path.join(cur, match)
        return cur

    # metadata
    def getattr(self, path, fh=None):
        st = os.lstat(self._real(path, must_exist=True))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid", "st_ino")
        out = {k: getattr(st, k) for k in keys}
        out["st_atime_ns"], out["st_mtime_ns"] = st.st_atime_ns, st.st_mtime_ns
        return out

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._real(path, must_exist=True))

    def statfs(self, path):
        st = os.statvfs(self.backing)
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def chmod(self, path, mode):
        os.chmod(self._real(path, must_exist=True), mode)

    def chown(self, path, uid, gid):
        os.chown(self._real(path, must_exist=True), uid, gid)

    def utimens(self, path, times=None):
        if times is None:
            os.utime(self._real(path, must_exist=True))
        else:
            os.utime(self._real(path, must_exist=True), ns=(int(times[0] * 1e9), int(times[1] * 1e9)))

    def access(self, path, mode):
        if not os.access(self._real(path, must_exist=True), mode):
            raise FuseOSError(errno.EACCES)

    # names
    def mkdir(self, path, mode):
        real = self._real(path)
        if os.path.lexists(real):
            raise FuseOSError(errno.EEXIST)
        os.mkdir(real, mode)

    def rmdir(self, path):
        os.rmdir(self._real(path, must_exist=True))

    def unlink(self, path):
        os.unlink(self._real(path, must_exist=True))

    def rename(self, old, new):
        os.rename(self._real(old, must_exist=True), self._real(new))

    # data
    def create(self, path, mode, fi=None):
        real = self._real(path)
        return os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path, flags):
        return os.open(self._real(path, must_exist=True), flags & ~os.O_CREAT)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._real(path, must_exist=True), length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    backing, mountpoint = sys.argv[1:3]
    FUSE(CaseFold(backing), mountpoint, foreground=True, nothreads=True, default_permissions=True)
