"""A tiny FUSE NFS client over libnfs, for check.sh: mounts an export where the kernel has no NFS client.

usage: /usr/bin/python3 nfsfuse.py SERVER EXPORT V4_PSEUDO_PATH MOUNTPOINT [--forward-flock]
(Debian: python3-fusepy, libnfs13). Data goes over NFSv3. Without --forward-flock it does what fuse-nfs
does: the kernel keeps flock inside this mount. With it, flock becomes an NFSv4 LOCK on the server, as
the kernel NFS client makes of flock with local_lock=none. An experiment, not a file system to use.
"""
import ctypes
import errno
import fcntl
import os
import sys
import threading
import time

import fusepy
from fusepy import FUSE, FuseOSError, Operations

lib = ctypes.CDLL("libnfs.so.13")
lib.nfs_init_context.restype = ctypes.c_void_p
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_readdir.restype = ctypes.c_void_p
V = ctypes.c_void_p
U64 = ctypes.c_uint64


class Stat64(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "dev ino mode nlink uid gid rdev size blksize blocks atime mtime ctime atime_nsec mtime_nsec ctime_nsec "
        "used").split()]


class Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


class Dirent(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("name", ctypes.c_char_p)]


# libfuse 2.9's fuse_operations goes on after ioctl: poll, write_buf, read_buf, flock, fallocate
FLOCK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(fusepy.fuse_file_info), ctypes.c_int)


class FullOps(ctypes.Structure):
    _fields_ = fusepy.fuse_operations._fields_ + [
        ("poll", ctypes.c_void_p), ("write_buf", ctypes.c_void_p), ("read_buf", ctypes.c_void_p),
        ("flock", FLOCK), ("fallocate", ctypes.c_void_p)]


class FlockFUSE(FUSE):
    def flock(self, path, fip, op):
        return self.operations("flock", self._decode_optional_path(path), fip.contents.fh, op)


class NFS(Operations):
    use_ns = True

    def __init__(self, server, export, pseudo, forward):
        self.nfs = self.connect(server, export, 3)  # data over NFSv3, libnfs's mature path
        self.files, self.next, self.paths, self.held = {}, 1, {}, {}
        self.mutex, self.forward = threading.Lock(), forward
        if forward:  # locks over NFSv4 (libnfs locks on v4 only): the same files opened by a v4 client
            self.v4_at = (server, pseudo)
        else:
            self.flock = None

    def connect(self, server, export, version):
        nfs = V(lib.nfs_init_context())
        lib.nfs_set_version(nfs, version)
        rc = lib.nfs_mount(nfs, server.encode(), export.encode())
        if rc:
            sys.exit(f"nfs_mount v{version} {server}:{export}: {lib.nfs_get_error(nfs).decode()}")
        return nfs

    def check(self, rc):
        if rc < 0:
            raise FuseOSError(-rc)
        return rc

    def getattr(self, path, fh=None):
        st = Stat64()
        self.check(lib.nfs_lstat64(self.nfs, path.encode(), ctypes.byref(st)))
        return {"st_mode": st.mode, "st_ino": st.ino, "st_nlink": st.nlink, "st_uid": st.uid, "st_gid": st.gid,
                "st_size": st.size, "st_atime": st.atime * 10**9 + st.atime_nsec,
                "st_mtime": st.mtime * 10**9 + st.mtime_nsec, "st_ctime": st.ctime * 10**9 + st.ctime_nsec}

    def readdir(self, path, fh):
        d = V()
        self.check(lib.nfs_opendir(self.nfs, path.encode(), ctypes.byref(d)))
        names = []
        while entry := lib.nfs_readdir(self.nfs, d):
            names.append(Dirent.from_address(entry).name.decode())
        lib.nfs_closedir(self.nfs, d)
        return names

    def _keep(self, fh, path):
        self.files[self.next], self.paths[self.next] = fh, path
        self.next += 1
        return self.next - 1

    def open(self, path, flags):
        fh = V()
        self.check(lib.nfs_open(self.nfs, path.encode(), flags & (os.O_ACCMODE | os.O_TRUNC | os.O_APPEND),
                                ctypes.byref(fh)))
        return self._keep(fh, path)

    def create(self, path, mode, fi=None):
        fh = V()
        self.check(lib.nfs_create(self.nfs, path.encode(), os.O_RDWR | os.O_CREAT, mode & 0o7777,
                                  ctypes.byref(fh)))
        return self._keep(fh, path)

    def read(self, path, size, offset, fh):
        buf = ctypes.create_string_buffer(size)
        n = self.check(lib.nfs_pread(self.nfs, self.files[fh], U64(offset), U64(size), buf))
        return buf.raw[:n]

    def write(self, path, data, offset, fh):
        return self.check(lib.nfs_pwrite(self.nfs, self.files[fh], U64(offset), U64(len(data)), data))

    def truncate(self, path, length, fh=None):
        self.check(lib.nfs_truncate(self.nfs, path.encode(), U64(length)))

    def fsync(self, path, datasync, fh):
        self.check(lib.nfs_fsync(self.nfs, self.files[fh]))

    def release(self, path, fh):
        if self.forward:
            self._unlock(self.paths[fh], fh)
        self.paths.pop(fh)
        self.check(lib.nfs_close(self.nfs, self.files.pop(fh)))

    def unlink(self, path):
        self.check(lib.nfs_unlink(self.nfs, path.encode()))

    def mkdir(self, path, mode):
        self.check(lib.nfs_mkdir(self.nfs, path.encode()))

    def rmdir(self, path):
        self.check(lib.nfs_rmdir(self.nfs, path.encode()))

    def rename(self, old, new):
        self.check(lib.nfs_rename(self.nfs, old.encode(), new.encode()))

    def chmod(self, path, mode):
        self.check(lib.nfs_chmod(self.nfs, path.encode(), mode & 0o7777))

    def chown(self, path, uid, gid):
        pass

    def utimens(self, path, times=None):
        now = time.time_ns()
        a, m = times or (now, now)
        tv = (Timeval * 2)((a // 10**9, a % 10**9 // 1000), (m // 10**9, m % 10**9 // 1000))
        self.check(lib.nfs_utimes(self.nfs, path.encode(), tv))

    def __call__(self, op, *args):
        if op == "flock":
            return self.flock(*args)
        with self.mutex:  # libnfs contexts are not thread-safe; the daemon is multithreaded for blocking flock
            return super().__call__(op, *args)

    def flock(self, path, fh, op):
        """flock as an NFSv4 LOCK of the file's first byte, taken by a new libnfs v4 client per lock (libnfs 4.0:
        a second OPEN on one client fails with NFS4ERR_BAD_SEQID, and a client once denied is denied for good),
        plus a table of which open file of this mount holds it."""
        key = self.paths[fh]
        if op & fcntl.LOCK_UN:
            with self.mutex:
                self._unlock(key, fh)
            return 0
        while True:
            with self.mutex:
                if key in self.held:
                    if self.held[key][0] == fh:
                        return 0
                else:
                    nfs, v4fh = self.connect(*self.v4_at, 4), V()
                    rc = lib.nfs_open(nfs, key.encode(), os.O_RDWR, ctypes.byref(v4fh))
                    if rc == 0:
                        rc = lib.nfs_lockf(nfs, v4fh, 1, U64(1))
                    if rc == 0:
                        self.held[key] = (fh, nfs, v4fh)
                        return 0
                    lib.nfs_destroy_context(nfs)
            if op & fcntl.LOCK_NB:
                raise FuseOSError(errno.EWOULDBLOCK)
            time.sleep(0.2)

    def _unlock(self, key, fh):
        if key in self.held and self.held[key][0] == fh:
            _, nfs, v4fh = self.held.pop(key)
            rc = lib.nfs_lockf(nfs, v4fh, 2, U64(1))
            lib.nfs_close(nfs, v4fh)
            lib.nfs_destroy_context(nfs)
            self.check(rc)


if __name__ == "__main__":
    server, export, pseudo, point = sys.argv[1:5]
    forward = "--forward-flock" in sys.argv
    fusepy.fuse_operations = FullOps
    FlockFUSE(NFS(server, export, pseudo, forward), point, foreground=True, nothreads=not forward,
              allow_other=True, subtype="nfsfuse", attr_timeout=0, entry_timeout=0, negative_timeout=0)
