#!/usr/bin/env bash
# Guest-file benchmark (issue 4). Figures are ratios against a baseline from
# the same run, except the latency ones, whose targets are absolute:
#   1 `kluis mount` start -> first byte of a guest file on a 2 GiB disk   [< 1 s]
#   2 readdir of a 100,000-entry guest directory through the mount       [< 1 s]
#     (info: `ls -l` of it, `kluis files ls` of it)
#   3 cp -r of a guest tree from the mount / cp -r of the same tree from a
#     loop mount of the restored raw image                                [<= 1.5]
#     (info: `kluis files cp -r` / the loop mount)
# Both sides of 3 start with the filesystem mounted and its root listed, and
# the page cache dropped (BENCH_DROP_CACHES=1, the default); they alternate
# CP_RUNS times (3) and the medians are compared.
#
# Needs root (loop devices, mkfs -d with owners). Usage:
#   scripts/bench-guestfs.sh            # KLUIS=path/to/kluis (default target/release/kluis)
set -euo pipefail

KLUIS=${KLUIS:-$(dirname "$0")/../target/release/kluis}
KLUIS=$(realpath "$KLUIS")
DIR=$(mktemp -d /var/tmp/kluis-bench-guest.XXXXXX)
MP=$DIR/mnt
LOOPMP=$DIR/loop
LOOPDEV=
cleanup() {
    set +e
    mountpoint -q "$MP" && fusermount3 -u "$MP"
    mountpoint -q "$LOOPMP" && umount "$LOOPMP"
    [ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV"
    [ -n "${MOUNT_PID:-}" ] && wait "$MOUNT_PID" 2>/dev/null
    [ -z "${BENCH_KEEP:-}" ] && rm -rf "$DIR"
}
trap cleanup EXIT
export KLUIS_VAULT=$DIR/vault
now() { date +%s.%N; }
drop() { [ "${BENCH_DROP_CACHES:-1}" = 1 ] && { sync; echo 3 > /proc/sys/vm/drop_caches; } || true; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

echo "== building the workload in $DIR"
mkdir -p "$DIR/src/tree" "$DIR/src/many" "$MP" "$LOOPMP"
# A tree like a system's: many small files and a few big ones (~400 MiB).
python3 - "$DIR/src/tree" <<'EOF'
import os, random, sys
root = sys.argv[1]; r = random.Random(7)
for d in range(40):
    p = os.path.join(root, f"dir{d:02}", f"sub{d % 7}")
    os.makedirs(p, exist_ok=True)
    for f in range(60):
        n = int(r.lognormvariate(8.5, 1.6))
        n = min(n, 4 << 20)
        with open(os.path.join(p, f"f{f:03}"), "wb") as fh:
            fh.write(os.urandom(n // 2) + bytes(n - n // 2))
for b in range(4):
    with open(os.path.join(root, f"big{b}"), "wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1 << 20))
EOF
# BENCH_ENTRIES shrinks the big directory (mkfs.ext4 -d fills it in quadratic time).
python3 -c "
import os, sys
for i in range(int(sys.argv[2])): open(os.path.join(sys.argv[1], f'f{i:06}'), 'w').close()" "$DIR/src/many" "${BENCH_ENTRIES:-100000}"
echo "hello" > "$DIR/src/hello"
du -sh "$DIR/src/tree" | sed 's/^/   tree: /'
truncate -s 2G "$DIR/os.img"
printf 'label: gpt\n2048,,L\n' | sfdisk -q "$DIR/os.img"
truncate -s $((2048*1024*1024 - 2*1024*1024)) "$DIR/p1.ext4"
mkfs.ext4 -q -F -d "$DIR/src" "$DIR/p1.ext4"
# mkfs -d writes unindexed directories; a guest kernel indexes (htree) any
# directory past one block, so index them as a real guest's would be.
e2fsck -fyD "$DIR/p1.ext4" >/dev/null 2>&1 || [ $? -le 2 ]
dd if="$DIR/p1.ext4" of="$DIR/os.img" bs=1M seek=1 conv=notrunc,sparse status=none
rm "$DIR/p1.ext4"
"$KLUIS" init >/dev/null
"$KLUIS" backup vm --disk os="$DIR/os.img" >/dev/null
rm "$DIR/os.img"

echo "== 1. mount start -> first byte of a guest file (2 GiB disk)"
drop
t0=$(now)
"$KLUIS" mount "$MP" >/dev/null 2>"$DIR/mount.log" &
MOUNT_PID=$!
until head -c1 "$MP/vm/latest/files/os/p1/hello" >/dev/null 2>&1; do
    sleep 0.005
    python3 -c "import sys; sys.exit(0 if $(now)-$t0 < 30 else 1)" || { echo "no first byte in 30 s"; cat "$DIR/mount.log"; exit 1; }
done
t1=$(now)
first=$(python3 -c "print(f'{$t1-$t0:.3f}')")
echo "   first byte after ${first} s [< 1 s]"

echo "== 2. listing a ${BENCH_ENTRIES:-100000}-entry directory"
t0=$(now); n=$(ls -f "$MP/vm/latest/files/os/p1/many" | wc -l); t1=$(now)
ls_s=$(python3 -c "print(f'{$t1-$t0:.3f}')")
echo "   readdir (ls -f) of $((n-2)) entries: ${ls_s} s [< 1 s]"
t0=$(now); ls -l "$MP/vm/latest/files/os/p1/many" >/dev/null; t1=$(now)
echo "   info: ls -l: $(python3 -c "print(f'{$t1-$t0:.3f}')") s"
t0=$(now); "$KLUIS" files ls vm@latest os:p1/many >/dev/null; t1=$(now)
echo "   info: kluis files ls: $(python3 -c "print(f'{$t1-$t0:.3f}')") s"
fusermount3 -u "$MP"; wait "$MOUNT_PID" || true; MOUNT_PID=

echo "== 3. cp -r of the tree: mount vs loop mount of the restored raw image"
"$KLUIS" restore vm@latest --disk os --to "$DIR/restored.raw" >/dev/null
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
# Each side: the filesystem mounted and its root listed (what mounting does
# for the kernel's ext4), then the page cache dropped and the copy timed.
# Sides alternate, CP_RUNS times each; the medians are compared.
cp_loop() {
    # The partition by offset (no udev here for loopXpN nodes): 1 MiB to the end - 1 MiB.
    LOOPDEV=$(losetup -r -f --show -o $((1 << 20)) --sizelimit $((2048 * 1024 * 1024 - 2 * 1024 * 1024)) "$DIR/restored.raw")
    mount -o ro "$LOOPDEV" "$LOOPMP"
    ls "$LOOPMP" >/dev/null
    rm -rf "$DIR/out-loop"; drop
    local t0 t1; t0=$(now); cp -r "$LOOPMP/tree" "$DIR/out-loop"; t1=$(now)
    umount "$LOOPMP"; losetup -d "$LOOPDEV"; LOOPDEV=
    python3 -c "print($t1-$t0)"
}
cp_mount() {
    "$KLUIS" mount "$MP" >/dev/null 2>>"$DIR/mount.log" &
    MOUNT_PID=$!
    until [ -d "$MP/vm" ]; do sleep 0.01; done
    ls "$MP/vm/latest/files/os/p1" >/dev/null
    rm -rf "$DIR/out-mount"; drop
    local t0 t1; t0=$(now); cp -r "$MP/vm/latest/files/os/p1/tree" "$DIR/out-mount"; t1=$(now)
    fusermount3 -u "$MP"; wait "$MOUNT_PID" || true; MOUNT_PID=
    python3 -c "print($t1-$t0)"
}
loops=() mounts=()
for _ in $(seq "${CP_RUNS:-3}"); do
    loops+=("$(cp_loop)")
    mounts+=("$(cp_mount)")
done
diff -r "$DIR/out-loop" "$DIR/out-mount" >/dev/null || { echo "copies differ"; exit 1; }
rm -f "$DIR/restored.raw"
drop
t0=$(now); "$KLUIS" files cp -r vm@latest os:p1/tree "$DIR/out-cli" >/dev/null; t1=$(now)
cli_s=$(python3 -c "print($t1-$t0)")
diff -r "$DIR/out-loop" "$DIR/out-cli" >/dev/null || { echo "CLI copy differs"; exit 1; }
loop_s=$(median "${loops[@]}") mount_s=$(median "${mounts[@]}")
echo "   loop mount: ${loops[*]} s; kluis mount: ${mounts[*]} s"
echo "   medians: loop mount $(python3 -c "print(f'{$loop_s:.2f}')") s, kluis mount $(python3 -c "print(f'{$mount_s:.2f}')") s"
echo "   cp -r from the mount / from a loop mount: $(ratio "$mount_s" "$loop_s") [<= 1.5]"
echo "   info: kluis files cp -r / loop mount: $(ratio "$cli_s" "$loop_s")"
