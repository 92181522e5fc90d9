#!/usr/bin/env bash
# kluis in two minutes: back up a small VM disk with a real filesystem on it,
# change a file inside the guest, back up again, and get both versions back;
# replicate the vault to a second one and restore from it; mount it.
#
# Usage:  scripts/demo.sh
#
# Runs on a fresh Debian/Ubuntu machine as root (missing tools are installed
# with apt-get); as another user it needs cargo, sfdisk, mkfs.ext4, debugfs
# and qemu-img on PATH. Exits non-zero if any restored byte differs.
#
# Environment:
#   KLUIS_VAULT     use this vault (created if missing) instead of a fresh
#                   temporary one; the demo adds points of item "demo-vm"
#   KLUIS_BIN       use this kluis binary instead of `cargo build --release`
#   DEMO_KEEP=1     keep the work directory (disk images, temporary vault)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ITEM=demo-vm
DISK_MIB=64
PART_START=2048          # sectors: the partition starts at 1 MiB

if [[ -t 1 ]]; then B=$'\033[1m' N=$'\033[0m'; else B= N=; fi
say()  { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }
# Shows a kluis command, then runs it.
k() { printf '    $ kluis %s\n' "$*"; "$KLUIS" "$@" | sed 's/^/      /'; return "${PIPESTATUS[0]}"; }

# ------------------------------------------------------------------ tools

declare -A PKG_OF=([sfdisk]=fdisk [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs
                   [e2fsck]=e2fsprogs [qemu-img]=qemu-utils [sha256sum]=coreutils)
missing=()
for tool in "${!PKG_OF[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${PKG_OF[$tool]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "Installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing tools; install these packages: ${missing[*]}"
    fi
fi

# ------------------------------------------------------------------ kluis

if [[ -n ${KLUIS_BIN:-} ]]; then
    KLUIS=$KLUIS_BIN
else
    command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
    say "Building kluis (cargo build --release; the first build takes a few minutes)"
    (cd "$ROOT" && cargo build --release --quiet)
    KLUIS=$ROOT/target/release/kluis
fi
[[ -x $KLUIS ]] || die "$KLUIS is not executable"
HELP=$("$KLUIS" --help)
HAS_MOUNT=0 HAS_FILES=0
grep -qE '^ +mount ' <<<"$HELP" && HAS_MOUNT=1
grep -qE '^ +files ' <<<"$HELP" && HAS_FILES=1

W=$(mktemp -d "${TMPDIR:-/tmp}/kluis-demo.XXXXXX")
MNT=$W/mnt
MOUNT_PID=
cleanup() {
    if [[ -n $MOUNT_PID ]]; then
        "$KLUIS" umount "$MNT" 2>/dev/null || fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
        kill "$MOUNT_PID" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    if [[ ${DEMO_KEEP:-0} == 1 ]]; then
        echo "demo: kept $W"
    else
        rm -rf "$W"
    fi
}
trap cleanup EXIT

if [[ $HAS_MOUNT == 1 ]] && ! command -v fusermount3 >/dev/null; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
    else
        info "fusermount3 not found (package fuse3): skipping the mount part"
        HAS_MOUNT=0
    fi
fi

if [[ -n ${KLUIS_VAULT:-} ]]; then
    say "Vault: $KLUIS_VAULT (from KLUIS_VAULT)"
else
    export KLUIS_VAULT=$W/vault
    say "Vault: $KLUIS_VAULT (a fresh temporary vault; set KLUIS_VAULT to use your own)"
fi
if [[ -e $KLUIS_VAULT/kluis.vault ]]; then
    info "existing vault, adding points of item $ITEM"
else
    k init
fi

# ------------------------------------------------------------------ the VM

say "Making a ${DISK_MIB} MiB VM disk: GPT, one ext4 partition with a few files"
mkdir -p "$W/guest/etc" "$W/guest/srv/www"
echo "$ITEM" >"$W/guest/etc/hostname"
printf '<h1>Hello from %s</h1>\n' "$ITEM" >"$W/guest/srv/www/index.html"
printf 'notes, version 1\n' >"$W/guest/notes.txt"
head -c 3M /dev/urandom >"$W/guest/srv/data.bin"
DISK=$W/os.raw
truncate -s "${DISK_MIB}M" "$DISK"
printf 'label: gpt\nstart=%d, type=linux, name=root\n' "$PART_START" | sfdisk -q "$DISK"
PART_SECTORS=$(sfdisk -d "$DISK" | sed -n 's/.*start= *'"$PART_START"', size= *\([0-9]*\).*/\1/p')
[[ -n $PART_SECTORS ]] || die "could not read the partition table back"
mkfs.ext4 -q -F -L root -d "$W/guest" "$W/part.img" "$((PART_SECTORS / 2))k" >/dev/null
dd if="$W/part.img" of="$DISK" bs=512 seek="$PART_START" conv=notrunc,sparse status=none
rm "$W/part.img"
FS="$DISK?offset=$((PART_START * 512))"   # e2fsprogs opens a filesystem at an offset this way
e2fsck -fn "$FS" >/dev/null 2>&1 || die "the demo filesystem does not check clean"
guest_cat() { debugfs -R "cat $2" "$1?offset=$((PART_START * 512))" 2>/dev/null; }
cat >"$W/$ITEM.xml" <<EOF
<domain type='kvm'>
  <name>$ITEM</name>
  <memory unit='MiB'>512</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$DISK'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
info "$(sfdisk -l "$DISK" | grep -E "^$DISK" | tr -s ' ')"
info "guest /notes.txt: $(guest_cat "$DISK" /notes.txt)"

# ------------------------------------------------------------------ backups

say "First backup"
k backup "$ITEM" --disk os="$DISK" --config "$W/$ITEM.xml"
FIRST=$("$KLUIS" --json points "$ITEM" | sed -n 's/^ *"id": "\([0-9a-f]*\)".*/\1/p' | tail -n 1)
[[ -n $FIRST ]] || die "no recovery point after the first backup"
cp --sparse=always "$DISK" "$W/original.raw"
SHA_FIRST=$(sha256sum <"$DISK" | cut -d' ' -f1)

say "Changing /notes.txt inside the guest filesystem (debugfs -w)"
printf 'notes, version 2: changed after the first backup\n' >"$W/notes-v2.txt"
debugfs -w -R "rm /notes.txt" "$FS" >/dev/null 2>&1
debugfs -w -R "write $W/notes-v2.txt /notes.txt" "$FS" >/dev/null 2>&1
info "guest /notes.txt: $(guest_cat "$DISK" /notes.txt)"
SHA_SECOND=$(sha256sum <"$DISK" | cut -d' ' -f1)
[[ $SHA_FIRST != "$SHA_SECOND" ]] || die "the disk did not change"

say "Second backup: only the changed blocks are new"
k backup "$ITEM" --disk os="$DISK" --config "$W/$ITEM.xml"

say "Recovery points"
k points "$ITEM"

# ------------------------------------------------------------------ restores

say "Restoring the first point (${FIRST:0:8}) and comparing with the original disk"
k restore "$ITEM@${FIRST:0:12}" --disk os --to "$W/first.raw"
SHA_RESTORED=$(sha256sum <"$W/first.raw" | cut -d' ' -f1)
info "original  sha256 $SHA_FIRST"
info "restored  sha256 $SHA_RESTORED"
[[ $SHA_RESTORED == "$SHA_FIRST" ]] || die "restored first point differs from the original disk"
info "guest /notes.txt in the restored disk: $(guest_cat "$W/first.raw" /notes.txt)"

say "Restoring the latest point as a VHD"
k restore "$ITEM@latest" --disk os --to "$W/latest.vhd" --format vhd
# A fixed VHD is raw data plus a footer: qemu cannot probe it, so name the format.
qemu-img info -f vpc "$W/latest.vhd" | grep -E '^(image|file format|virtual size|disk size):' | sed 's/^/    /'
qemu-img compare -q -f vpc -F raw "$W/latest.vhd" "$DISK" || die "latest.vhd differs from the current disk"
info "qemu-img compare: latest.vhd holds exactly the current disk"

if [[ $HAS_FILES == 1 ]]; then
    say "Guest files, straight from the vault (no mount, no loop device)"
    k files versions "$ITEM" os:p1/notes.txt
    k files cp "$ITEM@${FIRST:0:12}" os:p1/notes.txt "$W/notes-first.txt"
    [[ $(cat "$W/notes-first.txt") == "notes, version 1" ]] || die "files cp did not give back version 1 of notes.txt"
    info "notes.txt of the first point: $(cat "$W/notes-first.txt")"
fi

say "Verifying the vault (re-reading every chunk)"
k verify --read-data

say "Replicating the vault to a second one, for disaster recovery"
k replicate --to "$W/replica"
k --vault "$W/replica" restore "$ITEM@latest" --disk os --to "$W/from-replica.raw"
[[ $(sha256sum <"$W/from-replica.raw" | cut -d' ' -f1) == "$SHA_SECOND" ]] \
    || die "the disk restored from the replica differs from the current disk"
info "restored from the replica: same sha256 as the current disk"

# ------------------------------------------------------------------ mount

if [[ $HAS_MOUNT == 1 ]]; then
    say "Mounting the vault at $MNT"
    mkdir -p "$MNT"
    printf '    $ kluis mount %s &\n' "$MNT"
    "$KLUIS" mount "$MNT" >"$W/mount.log" 2>&1 &
    MOUNT_PID=$!
    for _ in $(seq 100); do
        [[ -e $MNT/$ITEM/latest ]] && break
        kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$W/mount.log" >&2; die "kluis mount exited"; }
        sleep 0.1
    done
    [[ -e $MNT/$ITEM/latest ]] || die "$MNT/$ITEM/latest did not appear"
    (cd "$MNT/$ITEM" && ls -l . latest/ latest/disks/) | sed 's/^/    /'
    cp "$MNT/$ITEM/latest/disks/os.raw" "$W/from-mount.raw"
    [[ $(sha256sum <"$W/from-mount.raw" | cut -d' ' -f1) == "$SHA_SECOND" ]] \
        || die "disks/os.raw copied from the mount differs from the current disk"
    info "cp $ITEM/latest/disks/os.raw: same sha256 as the current disk"
    if [[ -d $MNT/$ITEM/latest/files ]]; then
        GUEST_FILE=$MNT/$ITEM/latest/files/os/p1/notes.txt
        cp "$GUEST_FILE" "$W/notes-from-mount.txt"
        cmp -s "$W/notes-from-mount.txt" "$W/notes-v2.txt" || die "files/os/p1/notes.txt differs from the guest's file"
        info "cp $ITEM/latest/files/os/p1/notes.txt: $(cat "$W/notes-from-mount.txt")"
    fi
    k umount "$MNT"
    wait "$MOUNT_PID" || die "kluis mount exited with an error: $(cat "$W/mount.log")"
    MOUNT_PID=
fi

say "All good: both recovery points came back byte for byte, and the replica restores the latest."
