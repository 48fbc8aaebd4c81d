"""harness.mounts and the start-up check built on it: a results folder on a filesystem whose flock may hold
within one mount only (FUSE, NFS with local locks, Lustre -o localflock, BeeGFS) is refused unless
--trust-flock says so, since a flock test on this host passes there while two nodes can claim one run."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import mounts
from harness.store import StoreError, check_locking

ROOT_LINE = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard"


def line(number: int, point: str, fstype: str, source: str = "server:/export", options: str = "rw") -> str:
    point = point.replace("\\", "\\134").replace(" ", "\\040")
    return f"{number} 27 0:{number} / {point} rw,relatime shared:{number} - {fstype} {source} {options}"


def test_the_deepest_and_last_mount_holds_a_folder(tmp_path):
    folder = tmp_path / "a b" / "results"
    folder.mkdir(parents=True)
    info = "\n".join([ROOT_LINE, line(50, str(tmp_path), "tmpfs"), line(51, str(tmp_path / "a b"), "nfs4"),
                      line(52, str(tmp_path / "a b"), "fuse.sshfs", "me@host:/x", "rw,user_id=0"),
                      line(53, str(tmp_path / "a"), "xfs")])
    mount = mounts.mount_of(folder, info)
    assert (mount.point, mount.fstype, mount.source) == (str(tmp_path / "a b"), "fuse.sshfs", "me@host:/x")
    assert {"relatime", "user_id=0"} <= mount.options  # the mount's and the superblock's options
    assert mounts.mount_of(tmp_path / "ab", info).fstype == "tmpfs"  # a sibling whose name starts alike
    assert mounts.mount_of(Path("/"), info).fstype == "ext4"
    (tmp_path / "link").symlink_to(folder)
    assert mounts.mount_of(tmp_path / "link", info).fstype == "fuse.sshfs"  # the real path decides


@pytest.mark.parametrize("fstype,options,shared", [
    ("ext4", "rw", True), ("xfs", "rw", True), ("fuseblk", "rw", True), ("gpfs", "rw", True),
    ("fuse", "rw,user_id=0", False), ("fuse.sshfs", "rw", False), ("fuse.ceph-fuse", "rw", True),
    ("nfs", "rw,vers=3,local_lock=none,addr=10.0.0.1", True), ("nfs4", "rw,vers=4.2,local_lock=none", True),
    ("nfs", "rw,vers=3,nolock,local_lock=all", False), ("nfs4", "rw,vers=4.1,local_lock=flock", False),
    ("nfs", "rw,vers=3,local_lock=posix", True),  # posix stays local, flock still reaches the server
    ("lustre", "rw,flock", True), ("lustre", "rw,localflock", False), ("beegfs", "rw,cfgFile=/etc/x", False),
])
def test_which_mounts_may_keep_flock_within_one_mount(fstype, options, shared):
    mount = mounts.mount_of(Path("/data"), "\n".join([ROOT_LINE, line(60, "/data", fstype, options=options)]))
    assert mount.fstype == fstype
    assert (mounts.unshared_flock(mount) is None) == shared


def test_a_folder_on_a_fuse_mount_is_refused_unless_flock_is_trusted(tmp_path, monkeypatch):
    results = tmp_path / "results"
    info = tmp_path / "mountinfo"
    info.write_text("\n".join([ROOT_LINE, line(70, os.path.realpath(tmp_path), "fuse.sshfs")]) + "\n")
    monkeypatch.setattr(mounts, "MOUNTINFO", info)
    with pytest.raises(StoreError) as refused:
        check_locking(results)
    message = str(refused.value)
    assert str(results) in message and "fuse.sshfs" in message and "--trust-flock" in message, message
    check_locking(results, trust_flock=True)  # the user says every process goes through this mount


def test_an_unreadable_mountinfo_leaves_the_flock_test_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "MOUNTINFO", tmp_path / "missing")
    check_locking(tmp_path / "results")


def _flock_excludes(held: Path, tried: Path) -> bool:
    """Does a flock that another process holds on `held` keep this process's flock on `tried` out?"""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
                               " fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); sys.stdin.read()", str(held)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        fd = os.open(tried, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.skipif(not (shutil.which("bindfs") and shutil.which("fusermount") and os.path.exists("/dev/fuse")
                         and os.geteuid() == 0), reason="needs bindfs, fusermount, /dev/fuse and root")
def test_two_fuse_mounts_of_one_folder_share_no_flock_and_the_harness_refuses_them(tmp_path):
    """The hazard itself, on real mounts: bindfs keeps flock inside each mount (each one passes a flock
    test), so two harnesses on two mounts would both claim a run; with lock forwarding the mounts share it."""
    lower, one, two = tmp_path / "lower", tmp_path / "one", tmp_path / "two"
    for folder in (lower, one, two):
        folder.mkdir()
    (lower / ".lock").touch()
    for forward in ([], ["--multithreaded", "--enable-lock-forwarding"]):
        mounted = []
        try:
            for point in (one, two):
                subprocess.run(["bindfs", *forward, str(lower), str(point)], check=True, timeout=30)
                mounted.append(point)
            assert _flock_excludes(one / ".lock", two / ".lock") == bool(forward)
            assert _flock_excludes(one / ".lock", one / ".lock")  # within one mount flock always works
            with pytest.raises(StoreError, match="fuse"):  # the type cannot tell forwarding: both refused
                check_locking(one)
        finally:
            for point in mounted:
                subprocess.run(["fusermount", "-u", str(point)], check=True, timeout=30)
