"""Which mount holds a folder (/proc/self/mountinfo), and whether flock there may hold for one mount only.

A flock taken through one mount of a shared filesystem excludes a flock through another mount (another
node, or a second mount on this host) only when the filesystem takes its locks on the server. Where it
keeps them in each client's kernel, flock still works inside each mount, so a test on this host passes
while two nodes can claim the same run: only the mount's type and options tell.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
FORWARDS_FLOCK = ("fuse.ceph-fuse",)  # FUSE filesystems that pass flock on to their servers
LOCAL_NFS_LOCKS = ("nolock", "local_lock=flock", "local_lock=all")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str
    options: frozenset[str]  # the mount's and its superblock's options together


def _unescape(field: str) -> str:  # mountinfo writes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _holds(point: str, path: str) -> bool:
    return path == point or path.startswith(point.rstrip("/") + "/")


def mount_of(folder: Path, mountinfo: str | None = None) -> Mount | None:
    """The mount that holds `folder`: the deepest mount point above its real path, the last mounted
    where several are stacked there; None when mountinfo cannot be read (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    path = os.path.realpath(folder)
    found = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        point = _unescape(fields[4])
        if _holds(point, path) and (found is None or len(point) >= len(found.point)):
            options = fields[5].split(",") + (fields[dash + 3].split(",") if len(fields) > dash + 3 else [])
            found = Mount(point, fields[dash + 1], _unescape(fields[dash + 2]), frozenset(options))
    return found


def unshared_flock(mount: Mount) -> str | None:
    """Why a flock through this mount may not exclude one through another mount of the same files;
    None where the filesystem shares its locks (or is a local one, mounted once)."""
    kind = mount.fstype
    if (kind == "fuse" or kind.startswith("fuse.")) and kind not in FORWARDS_FLOCK:
        return ("a FUSE filesystem keeps flock inside each mount unless it forwards locks, and most do not "
                "(sshfs, s3fs, fuse-nfs, bindfs without --enable-lock-forwarding)")
    if kind in ("nfs", "nfs4"):
        local = sorted(mount.options.intersection(LOCAL_NFS_LOCKS))
        if local:
            return (f"it is mounted with {', '.join(local)}: flock stays on this client and never reaches "
                    f"the NFS server (mount with local_lock=none and a running lockd/statd for NFSv3)")
    if kind == "lustre" and "localflock" in mount.options:
        return "it is mounted with -o localflock: flock holds on this client only (mount with -o flock)"
    if kind == "beegfs":
        return ("BeeGFS keeps flock on each client unless its client config sets tuneUseGlobalFileLocks = "
                "true, which the mount does not show")
    return None
