#!/usr/bin/env bash
# Shared-filesystem semantics of the results folder (issue 20, part 5), on this machine: a user-space NFS
# server (nfs-ganesha, VFS FSAL, on 127.0.0.1) with its export mounted twice through FUSE (nfsfuse.py; the
# kernel here has no NFS client), and a local folder mounted twice with bindfs. For each pair of mounts:
# does flock through one exclude flock through the other, what the harness's start-up check says, and
# whether two harness processes can both take over one stale claim (claim_race.py, 3 tries).
#
# usage: sudo PYTHON=/path/to/venv/bin/python benchmarks/shared_fs/check.sh
# needs root, /dev/fuse and Debian's nfs-ganesha nfs-ganesha-vfs rpcbind libnfs13 python3-fusepy bindfs fuse3.
# Everything it starts (rpcbind if none runs, ganesha, FUSE daemons, mounts, a temp folder) ends with it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/shared-fs.XXXXXX)
PIDS=()
MOUNTS=()
RPCBIND_FILES=()

cleanup() {
    for point in "${MOUNTS[@]}"; do fusermount -u "$point" 2>/dev/null || fusermount -uz "$point" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$WORK" "${RPCBIND_FILES[@]}"
}
trap cleanup EXIT

for tool in ganesha.nfsd rpcbind rpcinfo bindfs fusermount; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind bindfs fuse3)"; exit 2; }
done
/usr/bin/python3 -c "import fusepy" || { echo "missing Debian's python3-fusepy"; exit 2; }

if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then  # ganesha registers NFSv3, mountd and NLM there
    mkdir -p /run/rpcbind
    rpcbind -f & PIDS+=($!)  # (rpcbind -h 127.0.0.1 crashes: "free(): double free detected in tcache 2")
    RPCBIND_FILES=(/run/rpcbind /run/rpcbind.sock /run/rpcbind.lock)
    sleep 1
fi

mkdir -p "$WORK/export" "$WORK/lower"
cat > "$WORK/ganesha.conf" <<EOF
NFS_CORE_PARAM { Bind_addr = 127.0.0.1; Protocols = 3, 4; Enable_NLM = true; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; Lease_Lifetime = 120; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
    Export_Id = 1; Path = $WORK/export; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash;
    SecType = sys; Protocols = 3, 4; Transports = TCP; FSAL { Name = VFS; }
}
EOF
ganesha.nfsd -F -f "$WORK/ganesha.conf" -L "$WORK/ganesha.log" -p "$WORK/ganesha.pid" -N NIV_EVENT & PIDS+=($!)
for _ in $(seq 30); do grep -q "NFS SERVER INITIALIZED" "$WORK/ganesha.log" 2>/dev/null && break; sleep 0.5; done
grep -q "NFS SERVER INITIALIZED" "$WORK/ganesha.log" || { echo "ganesha did not start:"; tail "$WORK/ganesha.log"; exit 1; }

mount_pair() {  # mount_pair KIND OPTION...: two mounts, $WORK/one and $WORK/two
    mkdir -p "$WORK/one" "$WORK/two"
    for point in "$WORK/one" "$WORK/two"; do
        if [ "$1" = nfs ]; then
            /usr/bin/python3 "$HERE/nfsfuse.py" 127.0.0.1 "$WORK/export" /export "$point" "${@:2}" \
                >>"$WORK/nfsfuse.log" 2>&1 & PIDS+=($!)
            for _ in $(seq 40); do mountpoint -q "$point" && break; sleep 0.25; done
        else
            bindfs "${@:2}" "$WORK/lower" "$point"
        fi
        MOUNTS+=("$point")
    done
}

unmount_pair() {
    for point in "$WORK/one" "$WORK/two"; do fusermount -u "$point"; done
    MOUNTS=()
}

check_pair() {  # check_pair TITLE
    echo "== $1"
    grep -E " $WORK/one " /proc/self/mountinfo | awk '{for (i = 7; $i != "-"; i++); print "mount type:", $(i+1)}'
    "$PYTHON" "$HERE/flock_across.py" "$WORK/one/probe" "$WORK/two/probe"
    PYTHONPATH=$ROOT "$PYTHON" - "$WORK/one/results" <<'EOF'
import sys
from pathlib import Path
from harness.store import StoreError, check_locking
folder = Path(sys.argv[1])
check_locking(folder, trust_flock=True)
print("harness flock test alone (the check before the mount check): passes")
try:
    check_locking(folder)
    print("harness start-up check: accepts the folder")
except StoreError as err:
    print(f"harness start-up check: refuses it: {err}")
EOF
    for n in 1 2 3; do
        PYTHONPATH=$ROOT "$PYTHON" "$HERE/claim_race.py" "$WORK/one/results" "$WORK/two/results" "race$RANDOM$n"
    done
}

mount_pair nfs;  check_pair "NFS (ganesha) mounted twice through FUSE, flock kept in each mount (as fuse-nfs)"; unmount_pair
mount_pair nfs --forward-flock; check_pair "NFS (ganesha) mounted twice through FUSE, flock forwarded as NFSv4 LOCK"; unmount_pair
mount_pair bindfs; check_pair "a local folder mounted twice with bindfs"; unmount_pair
mount_pair bindfs --multithreaded --enable-lock-forwarding
check_pair "a local folder mounted twice with bindfs --enable-lock-forwarding"; unmount_pair
mkdir -p "$WORK/local"
echo "== one local folder, one mount (control)"
PYTHONPATH=$ROOT "$PYTHON" "$HERE/claim_race.py" "$WORK/local/results" "$WORK/local/results" race
