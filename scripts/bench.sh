#!/usr/bin/env bash
# kluis benchmark: every figure is a RATIO against a baseline measured in the
# same invocation on the same machine (cold `cat`/`dd` of the same images,
# restic 0.14 and BorgBackup 1.2 on the same data), never a bare absolute time.
#
# Usage:  scripts/bench.sh                 # full run, "a few GiB" (3 GiB OS + 1 GiB data disk)
#         BENCH_QUICK=1 scripts/bench.sh   # ~256 MiB smoke run
#         BENCH_ONLY=objstore scripts/bench.sh   # object-storage baseline only (below)
#
# Needs root: the workload is built and churned through loop mounts, and cold
# measurements drop the page cache. The script reports: it exits 0 even when
# figures MISS their target, and non-zero only when something broke (a tool
# failed, kluis crashed, restored bytes differ).
#
# Workload: an OS disk (sparse raw, GPT, ESP + ext4 root filled with real
# files from /usr and /etc) and a data disk (ext4 with a database file of
# 4 KiB semi-compressible pages), then "a day of churn" applied in place
# through loop mounts: random page writes, appended logs, a new large file,
# edited and deleted files.
#
# Figures (targets in brackets; time baselines are measured cold right before
# and after the kluis step and averaged, see base_before). The time figures 1,
# 5 and 7 are measured in BENCH_ROUNDS rounds, each kluis run paired with its
# own baselines, and the median of the rounds' ratios is the figure (see
# round_add): this VM's disk and CPU have slow spells that moved one cold
# `cat` of the images from 2.4 s to 8.0 s within a run.
#   1 full backup time / cold cat of the images                      [<= 1.3]
#   2 incremental backup time (after churn) / cold cat               [<= 1.15]
#   3 vault growth for the churn / restic repo growth                [<= 0.35]
#   4 vault size after the full backup / borg repo size (zstd,3)     [<= 1.0]
#   5 restore of all disks (raw, cold) / restic restore              [<= 0.5]
#     plus: restored bytes identical (cmp), restored images sparse
#   6 peak RSS of a backup of a 1 GiB and an 8 GiB disk / 100 MB     [<= 1.0]
#     and 8 GiB RSS / 1 GiB RSS                                      [<= 1.25]
#   7 sequential read of the mounted disk: cold dd of the raw image
#     time / kluis time [>= 1.0]; restic mount / kluis, borg mount /
#     kluis [>= 3.0]; 4 KiB random read p50/p99 vs the raw image (info)
#   R replication to a secondary vault (info): the first `kluis replicate`
#     / cold `cp -r` of the vault; the one after the churn / cold `cp` of
#     the files it had to bring (the new packs and the index)
#   block-size sweep (BENCH_BLOCK_SIZES): backup times and churn growth per
#     block size (info), to justify the default.
#   B a big sparse disk (1 TiB, 64 GiB of distinct compressible blocks, an
#     ext4 partition at its start) against a small one of the same kind
#     (4 GiB): first byte of the mounted disk and of one guest file (fresh
#     mount, cold), and the mount's RSS after reading 1 GiB scattered over
#     the disk. Big / small [<= 1.5] each; the big disk's first bytes / 0.3 s
#     and its RSS / 256 MB [<= 1.0]. Runs alone with BENCH_ONLY=bigdisk.
#   H hypervisor sources (issue 21; needs qemu-img, qemu-nbd,
#     qemu-storage-daemon), on the OS disk:
#     H1 tracked incremental (dirty bitmap over NBD) after the OS disk's
#        churn / compare-by-hash incremental of the same export   [<= 0.15]
#        and bytes it read / dirty bytes (QEMU's count)           [<= 1.3]
#     H2 full backup speed from a qcow2 of the disk / from raw     [>= 0.9]
#     H3 full backup speed over NBD (qemu-nbd, unix socket) / raw  [>= 0.8]
# Lines indented under a figure are extra context ("info"), not targets.
#
# Environment (defaults in brackets; QUICK defaults second):
#   BENCH_DIR            work directory [mktemp -d under /var/tmp]; removed at exit
#   BENCH_KEEP=1         keep BENCH_DIR (images, vaults, logs) for inspection
#   BENCH_QUICK=1        small sizes for a smoke run
#   BENCH_OS_GIB         OS disk size [3 | 0.1875]
#   BENCH_DATA_GIB       data disk size [1 | 0.0625]
#   BENCH_FILL_PCT       how full the OS ext4 partition is with real files [65]
#   BENCH_DB_PCT         database file size as % of the data disk [60]
#   BENCH_CHURN_PAGES    random 4 KiB database pages rewritten [2000 | 200]
#   BENCH_CHURN_LOG_MIB  log text appended [32 | 2]
#   BENCH_CHURN_NEW_MIB  new large file [100 | 8]
#   BENCH_CHURN_EDITS / BENCH_CHURN_DELETES   files edited / deleted [200/300 | 40/60]
#   BENCH_RSS=0          skip the peak-RSS figures
#   BENCH_RSS_SMALL_MIB / BENCH_RSS_BIG_MIB   RSS test disks [1024/8192 | 128/1024]
#   BENCH_RSS_BUDGET_MB  RSS budget in MB (10^6 bytes) [100]
#   BENCH_MOUNT=0        skip the mount figures
#   BENCH_REPLICATE=0    skip the replication figures
#   BENCH_ROUNDS         rounds of the time figures 1, 5 and 7 [3 | 1]
#   BENCH_RESTIC=0 / BENCH_BORG=0             skip a baseline tool
#   BENCH_BLOCK_SIZES    e.g. "32768 65536 131072 262144": block-size sweep
#                        (needs `kluis init --block-size N`) [off]
#   BENCH_RANDREAD_COUNT 4 KiB random reads per latency measurement [3000]
#   BENCH_SKIP_BUILD=1   don't run `cargo build --release`
#   BENCH_KLUIS          kluis binary [target/release/kluis]
#   BENCH_JSON=FILE      also write the summary as JSON to FILE
#   BENCH_ONLY=bigdisk   only the big-disk figures B (skips the workload)
#   BENCH_ONLY=hypervisor  build the workload, run only the H figures
#   BENCH_BIGDISK=0      skip the big-disk figures B
#   BENCH_BIG_GIB / BENCH_BIG_SMALL_GIB   the two disks of B [1024/4 | 64/4]

# trun/ctrun assign their first argument with printf -v, which shellcheck
# cannot follow.
# shellcheck disable=SC2153,SC2154
set -euo pipefail

# The whole script is one { ... } block: bash parses it completely before
# running it, so editing this file during a (long) run cannot derail the run.
{
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=(python3 "$ROOT/scripts/bench/workload.py")

# BENCH_ONLY=objstore: the baseline for the object-storage vault (issue 20;
# not part of the full run yet, as no command uses object storage): 1 GiB
# (KLUIS_BENCH_OBJSTORE_MIB) of 128 MiB objects put from a file into a
# local directory and into Azurite on the same disk, then read back as
# concurrent 8 MiB ranges; times and remote/local ratios (info). Needs
# Azurite as .ci/run installs it (tests/integration/objstore.rs). The test
# profile is enough: the time goes in dependencies (object_store, tokio,
# hyper), which Cargo.toml builds optimized in every profile.
if [[ ${BENCH_ONLY:-} == objstore ]]; then
    cd "$ROOT"
    KLUIS_BENCH_DIR=${BENCH_DIR:-/var/tmp} cargo test --test integration objstore_bench -- --ignored --nocapture
    exit
fi
START_TIME=$EPOCHREALTIME

# ---------------------------------------------------------------- configuration

QUICK=${BENCH_QUICK:-0}
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }
gib2mib() { awk -v g="$1" 'BEGIN { printf "%d", g * 1024 + 0.5 }'; }

OS_MIB=$(gib2mib "${BENCH_OS_GIB:-$(q 3 0.1875)}")
DATA_MIB=$(gib2mib "${BENCH_DATA_GIB:-$(q 1 0.0625)}")
FILL_PCT=${BENCH_FILL_PCT:-65}
DB_PCT=${BENCH_DB_PCT:-60}
CHURN_PAGES=${BENCH_CHURN_PAGES:-$(q 2000 200)}
CHURN_LOG_MIB=${BENCH_CHURN_LOG_MIB:-$(q 32 2)}
CHURN_NEW_MIB=${BENCH_CHURN_NEW_MIB:-$(q 100 8)}
CHURN_EDITS=${BENCH_CHURN_EDITS:-$(q 200 40)}
CHURN_DELETES=${BENCH_CHURN_DELETES:-$(q 300 60)}
DO_RSS=${BENCH_RSS:-1}
RSS_SMALL_MIB=${BENCH_RSS_SMALL_MIB:-$(q 1024 128)}
RSS_BIG_MIB=${BENCH_RSS_BIG_MIB:-$(q 8192 1024)}
RSS_BUDGET_MB=${BENCH_RSS_BUDGET_MB:-100}
DO_MOUNT=${BENCH_MOUNT:-1}
DO_RESTIC=${BENCH_RESTIC:-1}
DO_BORG=${BENCH_BORG:-1}
BLOCK_SIZES=${BENCH_BLOCK_SIZES:-}
ONLY=${BENCH_ONLY:-}
[[ -z $ONLY || $ONLY == hypervisor || $ONLY == bigdisk ]] || { echo "bench: BENCH_ONLY knows only 'hypervisor' and 'bigdisk', not '$ONLY'" >&2; exit 2; }
# A run of the H figures alone needs neither baseline tool.
if [[ -n $ONLY ]]; then DO_RESTIC=0 DO_BORG=0; fi
RANDREAD_COUNT=${BENCH_RANDREAD_COUNT:-3000}
ROUNDS=${BENCH_ROUNDS:-$(q 3 1)}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 2; }
KLUIS=${BENCH_KLUIS:-$ROOT/target/release/kluis}
ITEM=web01

# ---------------------------------------------------------------- state + cleanup

# Everything the script sets up is recorded here, so the EXIT trap can undo
# it in reverse order whatever point the run died at.
MOUNTS=()   # mountpoints (FUSE and loop-mounted ext4)
LOOPS=()    # loop devices we attached
PIDS=()     # background mount daemons
OWN_DIR=0
W=

# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        local mp=${MOUNTS[i]}
        if mountpoint -q "$mp" 2>/dev/null; then
            fusermount3 -u "$mp" 2>/dev/null || fusermount -u "$mp" 2>/dev/null ||
                umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
                echo "bench: WARNING: could not unmount $mp" >&2
        fi
    done
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for dev in "${LOOPS[@]}"; do
        losetup -d "$dev" 2>/dev/null || true
    done
    if [[ -n $W && -d $W ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            echo "bench: kept work directory $W"
        elif findmnt -rn -o TARGET | grep -q "^$W/"; then
            # Never rm -rf through a mount that would not go away.
            echo "bench: WARNING: something is still mounted under $W; not removing it" >&2
        elif [[ $OWN_DIR == 1 ]]; then
            rm -rf "$W"
        else
            rm -rf "${W:?}"/{img,vaults,repos,restore,mnt,cache,logs,rss} "$W"/*.xml "$W"/*.tsv
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- small helpers

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }
warn() { printf 'bench: WARNING: %s\n' "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

# awk does the float arithmetic; bash has none.
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.3f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes_of() { du -sb "$1" | cut -f1; }            # apparent size of a file or tree
alloc_of() { du -s -B1 "$1" | cut -f1; }         # bytes actually allocated on disk

CAN_DROP=1
drop_caches() {
    # Cold means: no page cache for the images, the repositories or the vault.
    # In a VM the host may still cache the virtual disk, and that cache comes
    # and goes; base_before/base_after below deal with it.
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        if [[ $CAN_DROP == 1 ]]; then
            warn "cannot drop caches; 'cold' figures are warm"
            CAN_DROP=0
        fi
    fi
}

# run NAME CMD...: run a step with its output in logs/NAME.log; on failure
# show the end of the log. Returns the command's status.
run() {
    local name=$1 rc=0
    shift
    "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        printf 'bench: step %s failed (exit %d): %s\n' "$name" "$rc" "$*" >&2
        tail -n 15 "$LOGS/$name.log" | sed 's/^/    | /' >&2
    fi
    return "$rc"
}

# trun VAR NAME CMD...: like run, timed, under GNU time -v (for peak RSS), and
# with a trailing sync inside the timed window, so data a tool left dirty in
# the page cache is paid for by that tool. Sets VAR to seconds.
trun() {
    # Locals are __-prefixed: printf -v would otherwise assign a local that
    # shadows the caller's variable of the same name.
    local __var=$1 __name=$2 __rc=0 __t0 __t1
    shift 2
    __t0=$EPOCHREALTIME
    /usr/bin/time -v -o "$LOGS/$__name.time" "$@" >"$LOGS/$__name.log" 2>&1 || __rc=$?
    sync
    __t1=$EPOCHREALTIME
    printf -v "$__var" '%s' "$(calc "$__t1 - $__t0")"
    if ((__rc != 0)); then
        printf 'bench: step %s failed (exit %d): %s\n' "$__name" "$__rc" "$*" >&2
        tail -n 15 "$LOGS/$__name.log" | sed 's/^/    | /' >&2
    fi
    return "$__rc"
}
# ctrun: trun from a cold page cache.
ctrun() { drop_caches; trun "$@"; }

# Peak RSS in bytes of a step run under trun.
rss_of() { awk -F': ' '/Maximum resident set size/ { print $2 * 1024 }' "$LOGS/$1.time"; }

# ---------------------------------------------------------------- figures

# Each figure is one TSV row; the summary table and BENCH_JSON are made from it.
ERRORS=0
figure() { # figure NAME RATIO OP TARGET DETAIL   (OP: <= >= info)
    local name=$1 r=$2 op=$3 target=$4 detail=$5 status
    case $op in
        info) status=info ;;
        '<=') status=$(awk -v r="$r" -v t="$target" 'BEGIN { print (r != "nan" && r + 0 <= t + 0) ? "PASS" : "MISS" }') ;;
        '>=') status=$(awk -v r="$r" -v t="$target" 'BEGIN { print (r != "nan" && r + 0 >= t + 0) ? "PASS" : "MISS" }') ;;
    esac
    local tgt="$op $target"
    [[ $op == info ]] && tgt=-
    printf '%-44s %8s  (%s)  target %s  %s\n' "$name:" "$r" "$detail" "$tgt" "$status"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$r" "$tgt" "$status" "$detail" >>"$RESULTS"
}
figure_skip() { # figure_skip NAME TARGET REASON
    printf '%-44s %8s  target %s  SKIP (%s)\n' "$1:" - "$2" "$3"
    printf '%s\t-\t%s\tSKIP\t%s\n' "$1" "$2" "$3" >>"$RESULTS"
}
figure_error() { # figure_error NAME TARGET REASON
    ERRORS=$((ERRORS + 1))
    printf '%-44s %8s  target %s  ERROR (%s)\n' "$1:" - "$2" "$3"
    printf '%s\t-\t%s\tERROR\t%s\n' "$1" "$2" "$3" >>"$RESULTS"
}
# "kluis X s / baseline Y s" detail strings
kvb() { printf 'kluis %s s / %s %s s' "$1" "$2" "$3"; }

# Rounds. A time figure measured once follows whatever the VM was doing in
# that minute; measured in ROUNDS rounds, each kluis run paired with its own
# baseline runs, its figure is the median of the rounds' ratios, and the
# detail lists every round.
#   round_add KEY RATIO DETAIL         record one round
#   round_figure KEY NAME OP TARGET    the figure: median over KEY's rounds
declare -A ROUND_RATIOS ROUND_DETAILS
round_add() {
    ROUND_RATIOS[$1]+="$2 "
    ROUND_DETAILS[$1]+="${ROUND_DETAILS[$1]:+ | }$2: $3"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
round_figure() {
    local key=$1 name=$2 op=$3 target=$4 n
    # shellcheck disable=SC2086  # the ratios are words
    set -- ${ROUND_RATIOS[$key]}
    n=$#
    if ((n == 1)); then
        figure "$name" "$1" "$op" "$target" "${ROUND_DETAILS[$key]#*: }"
    else
        figure "$name" "$(median "$@")" "$op" "$target" "median of $n rounds: ${ROUND_DETAILS[$key]}"
    fi
}

# Time baselines are measured cold right before AND right after the kluis step
# they are compared with, and averaged. In a VM the host caches the virtual
# disk behind our back: a "cold" read of 4 GiB measured here took 1.5 s in one
# minute and 5.9 s a few minutes later, so a single baseline taken earlier
# can be off by a factor of 3 in either direction.
#   base_before NAME CMD...        first half; sets BASE_1
#   base_after VAR NAME CMD...     second half; VAR = mean, BASE_NOTE = both
base_before() { ctrun BASE_1 "$1-before" "${@:2}"; }
base_after() {
    local __v=$1
    ctrun BASE_2 "$2-after" "${@:3}" || return
    printf -v "$__v" '%s' "$(calc "($BASE_1 + $BASE_2) / 2")"
    BASE_NOTE="cold before $BASE_1 s, after $BASE_2 s"
}

# The summary table (and BENCH_JSON); exits: non-zero if a step broke.
summary() {
section "summary ($(calc "$EPOCHREALTIME - $START_TIME") s wall; every figure is a ratio to a baseline from this run)"
say "load average (1/5/15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus; at the start: $LOAD_START"
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, rows = rows[0], rows[1:]
w = [max(len(r[i]) for r in [head] + rows) for i in range(4)]
fmt = "  ".join("%%-%ds" % x for x in w) + "  %s"
print(fmt % tuple(head))
print(fmt % tuple("-" * x for x in w + [6]))
for r in rows:
    print(fmt % tuple(r))
counts = {}
for r in rows:
    counts[r[3]] = counts.get(r[3], 0) + 1
print("\n" + ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items())))
PY
if [[ -n ${BENCH_JSON:-} ]]; then
    "${HELPER[@]}" tsv2json "$RESULTS" >"$BENCH_JSON"
    say "summary written to $BENCH_JSON"
fi
if ((ERRORS > 0)); then
    say "bench: $ERRORS step(s) broke (see above); exiting non-zero"
    exit 1
fi
exit 0
}

# ---------------------------------------------------------------- setup

[[ $(id -u) == 0 ]] || die "must run as root: the workload is built and churned through loop mounts, and cold figures drop the page cache"
for tool in sfdisk mkfs.ext4 losetup mount python3 /usr/bin/time findmnt tar; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

if [[ -n ${BENCH_DIR:-} ]]; then
    W=$BENCH_DIR
    mkdir -p "$W"
else
    W=$(mktemp -d /var/tmp/kluis-bench.XXXXXX)
    OWN_DIR=1
fi
W=$(cd "$W" && pwd)
IMG=$W/img VAULTS=$W/vaults REPOS=$W/repos RESTORE=$W/restore MNT=$W/mnt LOGS=$W/logs
mkdir -p "$IMG" "$VAULTS" "$REPOS" "$RESTORE" "$MNT" "$LOGS" "$W/cache"
RESULTS=$W/results.tsv
printf 'figure\tratio\ttarget\tstatus\tdetail\n' >"$RESULTS"

# Baseline tools keep their caches/config inside the work dir, so runs don't
# leak state into each other or into $HOME.
export RESTIC_PASSWORD=kluis-bench RESTIC_CACHE_DIR=$W/cache/restic
export BORG_BASE_DIR=$W/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
    BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
RESTIC_REPO=$REPOS/restic BORG_REPO=$REPOS/borg

section "kluis benchmark ($([[ $QUICK == 1 ]] && echo quick || echo full) mode) in $W"
say "machine: $(nproc) cpus, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
# Other work on the machine (a build, a test suite) skews every timing ratio:
# the baseline and kluis run at different moments. Say so up front.
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
say "load average before the run: $LOAD_START"
if awk -v l="$LOAD_START" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    warn "the machine is busy (load $LOAD_START on $(nproc) cpus): timing ratios will be noisy; run on a quiet machine"
fi
say "workload: OS disk $OS_MIB MiB (ext4 ${FILL_PCT}% full of real files), data disk $DATA_MIB MiB (database ${DB_PCT}%)"
say "churn: $CHURN_PAGES db pages, +$CHURN_LOG_MIB MiB logs, +$CHURN_NEW_MIB MiB new file, $CHURN_EDITS edits, $CHURN_DELETES deletes"

# restic / borg: install from Debian when missing and we may; else their
# ratios are skipped with the reason.
ensure_tool() { # ensure_tool CMD PACKAGE -> sets reason on failure
    command -v "$1" >/dev/null && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing $2 (apt-get)"
        run "apt-$2" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" ||
            { run "apt-update-$2" apt-get update && run "apt-$2-retry" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$2"; } || true
    fi
    command -v "$1" >/dev/null
}
RESTIC_WHY='' BORG_WHY=''
if [[ $DO_RESTIC != 1 ]]; then RESTIC_WHY="BENCH_RESTIC=0"
elif ! ensure_tool restic restic; then RESTIC_WHY="restic not installed and apt-get install failed"; fi
if [[ $DO_BORG != 1 ]]; then BORG_WHY="BENCH_BORG=0"
elif ! ensure_tool borg borgbackup; then BORG_WHY="borg not installed and apt-get install failed"; fi
[[ -z $RESTIC_WHY ]] && say "restic: $(restic version | head -1)"
[[ -z $BORG_WHY ]] && say "borg: $(borg --version)"

# kluis: build, then probe which parts of the CLI contract exist.
KLUIS_WHY=
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    say "building kluis (cargo build --release)"
    if ! (cd "$ROOT" && run cargo-build cargo build --release); then
        KLUIS_WHY="cargo build --release failed (see above)"
        ERRORS=$((ERRORS + 1))
    fi
fi
if [[ -z $KLUIS_WHY ]]; then
    if [[ ! -x $KLUIS ]]; then
        KLUIS_WHY="no binary at $KLUIS"
        ERRORS=$((ERRORS + 1))
    elif ! "$KLUIS" --help 2>&1 | grep -q backup; then
        KLUIS_WHY="$KLUIS --help lists no backup command (not implemented yet?)"
        ERRORS=$((ERRORS + 1))
    fi
fi
kluis_has() { "$KLUIS" "$@" --help >/dev/null 2>&1; }
if [[ -z $KLUIS_WHY ]]; then
    say "kluis: $KLUIS ($("$KLUIS" --version 2>/dev/null || echo 'no --version'))"
fi

# ---------------------------------------------------------------- workload

# part_geom IMG N -> "offset_bytes size_bytes" of partition N (1-based).
part_geom() {
    sfdisk --json "$1" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = t["partitions"][int(sys.argv[1]) - 1]
ss = t.get("sectorsize", 512)
print(p["start"] * ss, p["size"] * ss)' "$2"
}

# attach_part IMG N: attach partition N of a disk image on its own loop
# device (offset+sizelimit; no partition scanning, which needs udev). Sets
# DEV (not printed: LOOPS must be updated in this shell, not a subshell, for
# the EXIT trap to detach it).
attach_part() {
    local img=$1 n=$2 off size
    read -r off size < <(part_geom "$img" "$n")
    DEV=$(losetup --find --show --offset "$off" --sizelimit "$size" "$img")
    LOOPS+=("$DEV")
}
mount_dev() {
    mkdir -p "$2"
    mount "$1" "$2"
    MOUNTS+=("$2")
}
umount_dev() { # umount_dev DEV MOUNTPOINT
    sync
    umount "$2"
    losetup -d "$1"
    # Forget them so the trap doesn't try again (arrays stay small).
    local -a keep=()
    for m in "${MOUNTS[@]}"; do [[ $m != "$2" ]] && keep+=("$m"); done
    MOUNTS=("${keep[@]}")
    keep=()
    for d in "${LOOPS[@]}"; do [[ $d != "$1" ]] && keep+=("$d"); done
    LOOPS=("${keep[@]}")
}

# The OS disk: sparse raw file, GPT with an EFI system partition and an ext4
# root filled with real files from this machine (binaries, libraries, docs,
# headers: the mix of compressible and incompressible data an OS disk has).
build_os_disk() {
    local img=$1 esp_mib dev mnt
    esp_mib=$(( OS_MIB / 32 < 8 ? 8 : (OS_MIB / 32 > 260 ? 260 : OS_MIB / 32) ))
    truncate -s "${OS_MIB}M" "$img"
    # Fixed label-id: the same bytes every run.
    printf 'label: gpt\nlabel-id: 6B6C7569-7300-4000-8000-000000000001\n,%sMiB,U\n,,L\n' "$esp_mib" |
        sfdisk -q "$img"

    # The ESP is written with mtools, not mounted: kernels without vfat
    # (minimal VMs) are common, and nothing in it changes with churn.
    if command -v mkfs.vfat >/dev/null; then
        attach_part "$img" 1; dev=$DEV
        mkfs.vfat -n ESP "$dev" >"$LOGS/mkfs-vfat.log" 2>&1
        if command -v mcopy >/dev/null; then
            {
                mmd -i "$dev" ::/EFI ::/EFI/BOOT
                mcopy -i "$dev" /bin/bash ::/EFI/BOOT/BOOTX64.EFI # a boot-loader-sized binary
            } >>"$LOGS/mkfs-vfat.log" 2>&1
        fi
        sync
        losetup -d "$dev"
        LOOPS=("${LOOPS[@]:0:${#LOOPS[@]}-1}")
    fi

    attach_part "$img" 2; dev=$DEV
    # No lazy init: otherwise the kernel zeroes inode tables in the background
    # after the first mount, and "churn" would include that.
    mkfs.ext4 -q -F -L rootfs -E lazy_itable_init=0,lazy_journal_init=0 "$dev"
    mnt=$MNT/osroot
    mount_dev "$dev" "$mnt"
    local size budget rc
    size=$(blockdev --getsize64 "$dev")
    budget=$(( size * FILL_PCT / 100 ))
    # Real files, in the order an installer lays them down, until the fill
    # target. tar keeps modes, owners and symlinks.
    set +o pipefail
    "${HELPER[@]}" pick-files "$budget" /etc /usr/bin /usr/sbin /usr/include /usr/share /usr/lib /usr/libexec 2>"$LOGS/pick-files.log" |
        tar -C / --null --no-recursion -T - -cf - 2>"$LOGS/tar-create.log" |
        tar -C "$mnt" -xf -
    rc=("${PIPESTATUS[@]}")
    set -o pipefail
    # GNU tar exits 1 for "file changed as we read it": harmless here.
    ((rc[0] == 0 && rc[1] <= 1 && rc[2] == 0)) || die "populating the OS disk failed (exit codes ${rc[*]}); see $LOGS/tar-create.log"
    mkdir -p "$mnt/var/log" "$mnt/var/cache"
    "${HELPER[@]}" append-text "$mnt/var/log/syslog" "$(q 8 1)" --seed 30
    say "  OS disk: $(df -h --output=used,size "$mnt" | tail -1 | awk '{ print $1 " used of " $2 }') in the ext4 root"
    umount_dev "$dev" "$mnt"
}

# The data disk: GPT + ext4 holding a database-like file of 4 KiB pages
# (semi-compressible) and its write-ahead log.
build_data_disk() {
    local img=$1 dev mnt db_mib
    truncate -s "${DATA_MIB}M" "$img"
    printf 'label: gpt\nlabel-id: 6B6C7569-7300-4000-8000-000000000002\n,,L\n' | sfdisk -q "$img"
    attach_part "$img" 1; dev=$DEV
    mkfs.ext4 -q -F -L data -E lazy_itable_init=0,lazy_journal_init=0 "$dev"
    mnt=$MNT/data
    mount_dev "$dev" "$mnt"
    db_mib=$(( DATA_MIB * DB_PCT / 100 ))
    mkdir -p "$mnt/db"
    "${HELPER[@]}" fill "$mnt/db/pages.db" "$db_mib" --seed 1
    "${HELPER[@]}" append-text "$mnt/db/wal.log" 1 --seed 31
    say "  data disk: ${db_mib} MiB database file"
    umount_dev "$dev" "$mnt"
}

# A day of churn, applied IN PLACE: the images are modified through the file
# systems on them, so block layout stays as on a real VM disk.
# churn_os IMG: the OS disk's part of the day of churn, applied to IMG.
churn_os() {
    local dev mnt
    attach_part "$1" 2; dev=$DEV
    mnt=$MNT/osroot
    mount_dev "$dev" "$mnt"
    "${HELPER[@]}" edit-delete "$mnt" "$CHURN_EDITS" "$CHURN_DELETES" --seed 40 2>>"$LOGS/churn.log"
    "${HELPER[@]}" append-text "$mnt/var/log/syslog" "$CHURN_LOG_MIB" --seed 41
    "${HELPER[@]}" fill "$mnt/var/cache/package-update.bin" "$CHURN_NEW_MIB" --seed 42
    umount_dev "$dev" "$mnt"
}
churn_disks() {
    local dev mnt
    churn_os "$OS_IMG"

    attach_part "$DATA_IMG" 1; dev=$DEV
    mnt=$MNT/data
    mount_dev "$dev" "$mnt"
    "${HELPER[@]}" db-churn "$mnt/db/pages.db" "$CHURN_PAGES" --seed 43
    "${HELPER[@]}" append-text "$mnt/db/wal.log" "$(q 4 0.5)" --seed 44
    umount_dev "$dev" "$mnt"
    sync
}

# ---------------------------------------------------------------- hypervisor sources (H figures)

# wait_for PATH: until PATH exists (a server's socket), at most 10 s.
wait_for() {
    local i
    for ((i = 0; i < 400; i++)); do [[ -e $1 ]] && return 0; sleep 0.025; done
    warn "no $1 after 10 s"
    return 1
}
# nbd_start SOCKET QEMU-NBD-ARGS...: serve export "os" on SOCKET; sets NBD_PID.
nbd_start() {
    local sock=$1
    shift
    rm -f "$sock"
    qemu-nbd -t -x os -k "$sock" "$@" >>"$LOGS/qemu-nbd.log" 2>&1 &
    NBD_PID=$!
    PIDS+=("$NBD_PID")
    wait_for "$sock"
}
# Stopped with SIGTERM so QEMU closes the image cleanly (a killed qemu-nbd
# leaves persistent bitmaps marked in use).
nbd_stop() { kill "$NBD_PID" 2>/dev/null || true; wait "$NBD_PID" 2>/dev/null || true; }
# json_read LOG: bytes read by the backup whose --json report is in LOG.
json_read() {
    python3 -c '
import json, sys
t = open(sys.argv[1]).read()
print(sum(d["bytes_read"] for d in json.loads(t[t.index("{"):t.rindex("}") + 1])["disks"]))' "$1"
}
# qmp_dirty SOCKET BITMAP: dirty bytes QEMU counts in BITMAP.
qmp_dirty() {
    python3 -c '
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
def cmd(c):
    f.write(json.dumps({"execute": c}) + "\n")
    f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            return m
json.loads(f.readline())
cmd("qmp_capabilities")
nodes = cmd("query-named-block-nodes")["return"]
print(max(b["count"] for n in nodes for b in n.get("dirty-bitmaps", []) if b["name"] == sys.argv[2]))' "$1" "$2"
}

# The OS disk as a qcow2 (and over NBD) against the raw image, in fresh
# vaults; then a dirty bitmap on the qcow2, a full backup through NBD, the
# OS disk's churn applied through a qemu-storage-daemon FUSE export of the
# qcow2 (loop-mounted, so the bitmap sees every write as under a VM), and
# the tracked incremental against a compare-by-hash one of the same export.
hypervisor_figures() {
    section "hypervisor sources: qcow2, NBD, dirty bitmap"
    local why=$KLUIS_WHY tool r r_ok t_raw t_q t_n t_track t_hash dirty nread hv=$W/hv
    local H1="H1 tracked incremental / hash incremental" H1B="H1 tracked bytes read / dirty bytes"
    local H2="H2 full backup speed: qcow2 / raw" H3="H3 full backup speed: NBD / raw"
    for tool in qemu-img qemu-nbd qemu-storage-daemon; do
        if [[ -z $why ]] && ! command -v "$tool" >/dev/null; then why="$tool is not installed (qemu-utils)"; fi
    done
    if [[ -n $why ]]; then
        figure_skip "$H1" "<= 0.15" "$why"; figure_skip "$H1B" "<= 1.3" "$why"
        figure_skip "$H2" ">= 0.9" "$why"; figure_skip "$H3" ">= 0.8" "$why"
        return 0
    fi
    mkdir -p "$hv"
    local raw=$OS_IMG q=$hv/os.qcow2 sock=$hv/nbd.sock
    local url="os=nbd+unix:///os?socket=$hv/nbd.sock"
    run hv-convert qemu-img convert -f raw -O qcow2 "$raw" "$q" || die "qemu-img convert of the OS disk failed"
    for ((r = 1; r <= ROUNDS; r++)); do
        rm -rf "$hv/v" && run "hv-init-raw-$r" "$KLUIS" --vault "$hv/v" init &&
            ctrun t_raw "hv-raw-$r" "$KLUIS" --vault "$hv/v" backup hv --disk "os=$raw" &&
            rm -rf "$hv/v" && run "hv-init-qcow2-$r" "$KLUIS" --vault "$hv/v" init &&
            ctrun t_q "hv-qcow2-$r" "$KLUIS" --vault "$hv/v" backup hv --disk "os=$q" &&
            rm -rf "$hv/v" && run "hv-init-nbd-$r" "$KLUIS" --vault "$hv/v" init &&
            nbd_start "$sock" -r -f raw "$raw" &&
            { ctrun t_n "hv-nbd-$r" "$KLUIS" --vault "$hv/v" backup hv --disk "$url"; r_ok=$?; nbd_stop; ((r_ok == 0)); } ||
            { figure_error "H2/H3 round $r" ">= 0.9 / 0.8" "a full backup failed, see $LOGS/hv-*-$r.log"; continue; }
        round_add hv-qcow2 "$(ratio "$t_raw" "$t_q")" "raw $t_raw s / qcow2 $t_q s"
        round_add hv-nbd "$(ratio "$t_raw" "$t_n")" "raw $t_raw s / nbd $t_n s"
    done
    rm -rf "$hv/v"
    if [[ -n ${ROUND_RATIOS[hv-qcow2]:-} ]]; then
        round_figure hv-qcow2 "$H2" '>=' 0.9
        round_figure hv-nbd "$H3" '>=' 0.8
    fi

    run hv-bitmap qemu-img bitmap --add --enable "$q" b0 || die "qemu-img bitmap --add failed"
    if ! { run hv-init-track "$KLUIS" --vault "$hv/track" init && run hv-init-hash "$KLUIS" --vault "$hv/hash" init &&
        nbd_start "$sock" -f qcow2 -B b0 "$q" &&
        run hv-track-full "$KLUIS" --vault "$hv/track" backup hv --disk "$url" --dirty-bitmap b0 &&
        run hv-hash-full "$KLUIS" --vault "$hv/hash" backup hv --disk "$url"; }; then
        nbd_stop
        figure_error "$H1" "<= 0.15" "the full backups over NBD failed, see $LOGS/hv-*-full.log"
        return 0
    fi
    nbd_stop
    : >"$hv/export"
    qemu-storage-daemon --blockdev "driver=file,filename=$q,node-name=f" --blockdev driver=qcow2,file=f,node-name=q \
        --export "type=fuse,id=e,node-name=q,mountpoint=$hv/export,writable=on" \
        --chardev "socket,id=m,path=$hv/qmp.sock,server=on,wait=off" --monitor chardev=m >>"$LOGS/qsd.log" 2>&1 &
    NBD_PID=$!
    PIDS+=("$NBD_PID")
    wait_for "$hv/qmp.sock" || die "qemu-storage-daemon did not start, see $LOGS/qsd.log"
    churn_os "$hv/export"
    dirty=$(qmp_dirty "$hv/qmp.sock" b0) || die "could not read the bitmap's dirty count over QMP"
    nbd_stop
    nbd_start "$sock" -f qcow2 -B b0 "$q"
    if ctrun t_track hv-track "$KLUIS" --json --vault "$hv/track" backup hv --disk "$url" --dirty-bitmap b0 &&
        ctrun t_hash hv-hash "$KLUIS" --json --vault "$hv/hash" backup hv --disk "$url"; then
        nbd_stop
        nread=$(json_read "$LOGS/hv-track.log")
        figure "$H1" "$(ratio "$t_track" "$t_hash")" '<=' 0.15 "tracked $t_track s (read $(mib "$nread")) / by hash $t_hash s (read $(mib "$(json_read "$LOGS/hv-hash.log")"))"
        figure "$H1B" "$(ratio "$nread" "$dirty")" '<=' 1.3 "read $(mib "$nread") / dirty $(mib "$dirty")"
        run hv-restore "$KLUIS" --vault "$hv/track" restore hv@latest --disk os --to "$hv/restored.raw" &&
            run hv-convert-back qemu-img convert -O raw "$q" "$hv/qemu.raw" &&
            cmp -s "$hv/restored.raw" "$hv/qemu.raw" ||
            figure_error "H1 restored tracked point = qemu-img convert of the source" "identical" "they differ, or a step failed"
    else
        nbd_stop
        figure_error "$H1" "<= 0.15" "a backup after the churn failed, see $LOGS/hv-track.log and hv-hash.log"
    fi
    rm -rf "$hv"
}


# The main figures (1-7, R, the sweep), not indented: skipped as a whole
# with BENCH_ONLY=bigdisk.
if [[ $ONLY != bigdisk ]]; then
section "building the workload"
OS_IMG=$IMG/os.img DATA_IMG=$IMG/data.img
build_os_disk "$OS_IMG"
build_data_disk "$DATA_IMG"
cat >"$W/web01.xml" <<'EOF'
<domain type='kvm'><name>web01</name><memory unit='GiB'>4</memory><vcpu>2</vcpu>
  <devices><disk type='file' device='disk'><source file='os.img'/><target dev='vda'/></disk>
  <disk type='file' device='disk'><source file='data.img'/><target dev='vdb'/></disk></devices></domain>
EOF
IMAGES=("$OS_IMG" "$DATA_IMG")
if [[ $ONLY == hypervisor ]]; then
    hypervisor_figures
    summary
fi
say "  images: $(mib "$(( $(bytes_of "$OS_IMG") + $(bytes_of "$DATA_IMG") ))") apparent, $(mib "$(( $(alloc_of "$OS_IMG") + $(alloc_of "$DATA_IMG") ))") allocated"

# ---------------------------------------------------------------- full backups

section "full backup"
# The baseline for backup time: reading the same images once, cold, with cat.
# A backup cannot beat reading its input (except by skipping holes), so
# ratio 1.0 means "as fast as the disk".
CAT=(sh -c 'cat "$@" >/dev/null' cat)
base_before cat-full "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"

# points_count: number of recovery points in `points --json` output, whatever
# its exact shape (a list, or an object holding one).
points_count() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
if isinstance(d, dict):
    lists = [v for v in d.values() if isinstance(v, list)]
    d = lists[0] if lists else []
print(len(d))'
}
check_points() { # check_points EXPECTED LABEL
    local n
    if ! "$KLUIS" --vault "$VAULT" points "$ITEM" --json >"$LOGS/points-$2.json" 2>"$LOGS/points-$2.err"; then
        warn "kluis points $ITEM --json failed after $2: $(head -1 "$LOGS/points-$2.err")"
        return 0
    fi
    if ! n=$(points_count <"$LOGS/points-$2.json" 2>/dev/null); then
        warn "kluis points --json after $2 is not valid JSON: $(head -c 200 "$LOGS/points-$2.json")"
    elif [[ $n != "$1" ]]; then
        warn "kluis points --json lists $n recovery points after $2, expected $1"
    fi
}

DISK_ARGS=(--disk "os=$OS_IMG" --disk "data=$DATA_IMG")
K_FULL_OK=0
if [[ -n $KLUIS_WHY ]]; then
    figure_skip "1 full backup / cold cat" "<= 1.3" "$KLUIS_WHY"
else
    VAULT=$VAULTS/main
    if run kluis-init "$KLUIS" --vault "$VAULT" init &&
        ctrun T_K_FULL kluis-full "$KLUIS" --vault "$VAULT" backup "$ITEM" "${DISK_ARGS[@]}" --config "$W/web01.xml"; then
        K_FULL_OK=1
        V_FULL=$(bytes_of "$VAULT")
        RSS_K_FULL=$(rss_of kluis-full)
        base_after T_CAT_FULL cat-full "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"
        round_add full "$(ratio "$T_K_FULL" "$T_CAT_FULL")" "$(kvb "$T_K_FULL" cat "$T_CAT_FULL"); $BASE_NOTE"
        check_points 1 full
        # Further rounds back up the same images into throwaway vaults.
        for ((r = 2; r <= ROUNDS; r++)); do
            VAULT=$VAULTS/full-$r
            base_before "cat-full-$r" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"
            if run "kluis-init-$r" "$KLUIS" --vault "$VAULT" init &&
                ctrun t "kluis-full-$r" "$KLUIS" --vault "$VAULT" backup "$ITEM" "${DISK_ARGS[@]}" --config "$W/web01.xml"; then
                base_after tc "cat-full-$r" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"
                round_add full "$(ratio "$t" "$tc")" "$(kvb "$t" cat "$tc"); $BASE_NOTE"
            else
                figure_error "1 full backup round $r" "<= 1.3" "kluis init/backup failed, see $LOGS/kluis-*-$r.log"
            fi
            rm -rf "$VAULT"
        done
        VAULT=$VAULTS/main
        round_figure full "1 full backup / cold cat" '<=' 1.3
    else
        figure_error "1 full backup / cold cat" "<= 1.3" "kluis init/backup failed, see $LOGS/kluis-*.log"
    fi
fi

R_FULL_OK=0
if [[ -z $RESTIC_WHY ]]; then
    if run restic-init restic -r "$RESTIC_REPO" init &&
        ctrun T_R_FULL restic-full restic -r "$RESTIC_REPO" backup "${IMAGES[@]}"; then
        R_FULL_OK=1
        R_FULL=$(bytes_of "$RESTIC_REPO")
        say "restic full backup: $T_R_FULL s, repo $(mib "$R_FULL")"
        if ((K_FULL_OK)); then
            figure "  full backup / restic full backup" "$(ratio "$T_K_FULL" "$T_R_FULL")" info - "$(kvb "$T_K_FULL" restic "$T_R_FULL")"
            figure "  full-backup peak RSS / restic's" "$(ratio "$RSS_K_FULL" "$(rss_of restic-full)")" info - \
                "kluis $(mib "$RSS_K_FULL") / restic $(mib "$(rss_of restic-full)")"
        fi
    else
        RESTIC_WHY="restic init/backup failed"
        ERRORS=$((ERRORS + 1))
    fi
fi

B_FULL_OK=0
if [[ -z $BORG_WHY ]]; then
    if run borg-init borg init -e none "$BORG_REPO" &&
        ctrun T_B_FULL borg-full borg create --compression zstd,3 "$BORG_REPO::full" "${IMAGES[@]}"; then
        B_FULL_OK=1
        BORG_ARCHIVE=full
        B_FULL=$(bytes_of "$BORG_REPO")
        say "borg full backup: $T_B_FULL s, repo $(mib "$B_FULL")"
    else
        BORG_WHY="borg init/create failed"
        ERRORS=$((ERRORS + 1))
    fi
fi

F4="4 vault size after full / borg repo size"
if ((!K_FULL_OK)); then
    figure_skip "$F4" "<= 1.0" "${KLUIS_WHY:-kluis full backup failed}"
elif ((!B_FULL_OK)); then
    figure_skip "$F4" "<= 1.0" "$BORG_WHY"
else
    figure "$F4" "$(ratio "$V_FULL" "$B_FULL")" '<=' 1.0 "kluis $(mib "$V_FULL") / borg $(mib "$B_FULL")"
    figure "  full backup / borg full backup" "$(ratio "$T_K_FULL" "$T_B_FULL")" info - "$(kvb "$T_K_FULL" borg "$T_B_FULL")"
fi
if ((K_FULL_OK && R_FULL_OK)); then
    figure "  vault size after full / restic repo size" "$(ratio "$V_FULL" "$R_FULL")" info - "kluis $(mib "$V_FULL") / restic $(mib "$R_FULL")"
fi

# Replication (info): `kluis replicate` against a plain copy of the files it
# must bring, both cold and both ending in sync (trun); the copy is neither
# consistent with a running backup nor crash-safe, so it is the floor.
REPLICA=$VAULTS/replica
REPLICATE_OK=0
replicate_figure() { # replicate_figure NAME LABEL FILE...: baseline = cp of FILE... into a fresh directory
    local name=$1 label=$2 t tb
    shift 2
    # shellcheck disable=SC2016  # the inner sh expands $1 and $@
    local cp_step=(sh -c 'd=$1; shift; rm -rf "$d"; mkdir -p "$d"; cp -r "$@" "$d"/' cp "$W/cp-copy")
    base_before "cp-$label" "${cp_step[@]}" "$@" || die "cp of the vault's files failed"
    if ctrun t "kluis-$label" "$KLUIS" --json --vault "$VAULTS/main" replicate --to "$REPLICA"; then
        REPLICATE_OK=1
        base_after tb "cp-$label" "${cp_step[@]}" "$@" || die "cp of the vault's files failed"
        rm -rf "$W/cp-copy"
        local copied
        copied=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_copied"])' "$LOGS/kluis-$label.log" 2>/dev/null || echo 0)
        figure "$name" "$(ratio "$t" "$tb")" info - "$(kvb "$t" cp "$tb"); $(mib "$copied") copied; $BASE_NOTE"
    else
        REPLICATE_OK=0
        figure_error "$name" - "kluis replicate failed, see $LOGS/kluis-$label.log"
    fi
}
if [[ ${BENCH_REPLICATE:-1} == 1 ]] && ((K_FULL_OK)); then
    section "replication"
    replicate_figure "R first replication / cold cp -r of the vault" replicate-full "$VAULTS/main"/*
fi

# Block-size sweep, full half: one vault per block size over the same images.
declare -A SW_T_FULL SW_T_CAT_FULL SW_V_FULL SW_V_INC
SWEEP_WHY=
if [[ -n $BLOCK_SIZES ]]; then
    if [[ -n $KLUIS_WHY ]]; then
        SWEEP_WHY=$KLUIS_WHY
    elif ! "$KLUIS" init --help 2>&1 | grep -q -- --block-size; then
        SWEEP_WHY="kluis init has no --block-size option"
    fi
    if [[ -n $SWEEP_WHY ]]; then
        say "block-size sweep skipped: $SWEEP_WHY"
    else
        section "block-size sweep: full backups"
        for bs in $BLOCK_SIZES; do
            VAULT=$VAULTS/bs-$bs
            base_before "sweep-cat-full-$bs" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"
            if run "sweep-init-$bs" "$KLUIS" --vault "$VAULT" init --block-size "$bs" &&
                ctrun t "sweep-full-$bs" "$KLUIS" --vault "$VAULT" backup "$ITEM" "${DISK_ARGS[@]}"; then
                base_after tc "sweep-cat-full-$bs" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the images failed"
                SW_T_FULL[$bs]=$t
                SW_T_CAT_FULL[$bs]=$tc
                SW_V_FULL[$bs]=$(bytes_of "$VAULT")
                say "  block size $bs: full backup $t s (cold cat $tc s), vault $(mib "${SW_V_FULL[$bs]}")"
            else
                figure_error "sweep bs=$bs" - "kluis init --block-size $bs or backup failed"
            fi
        done
    fi
fi

# ---------------------------------------------------------------- churn + incrementals

section "a day of churn, then incremental backups"
churn_disks
base_before cat-inc "${CAT[@]}" "${IMAGES[@]}" || die "cat of the churned images failed"

K_INC_OK=0
F2="2 incremental backup / cold cat"
if ((!K_FULL_OK)); then
    figure_skip "$F2" "<= 1.15" "${KLUIS_WHY:-kluis full backup failed}"
else
    VAULT=$VAULTS/main
    if ctrun T_K_INC kluis-inc "$KLUIS" --vault "$VAULT" backup "$ITEM" "${DISK_ARGS[@]}" --config "$W/web01.xml"; then
        K_INC_OK=1
        V_INC=$(bytes_of "$VAULT")
        K_GROWTH=$((V_INC - V_FULL))
        base_after T_CAT_INC cat-inc "${CAT[@]}" "${IMAGES[@]}" || die "cat of the churned images failed"
        figure "$F2" "$(ratio "$T_K_INC" "$T_CAT_INC")" '<=' 1.15 "$(kvb "$T_K_INC" cat "$T_CAT_INC"); $BASE_NOTE"
        check_points 2 incremental
    else
        figure_error "$F2" "<= 1.15" "kluis incremental backup failed, see $LOGS/kluis-inc.log"
    fi
fi

R_INC_OK=0
if ((R_FULL_OK)); then
    if ctrun T_R_INC restic-inc restic -r "$RESTIC_REPO" backup "${IMAGES[@]}"; then
        R_INC_OK=1
        R_GROWTH=$(($(bytes_of "$RESTIC_REPO") - R_FULL))
        say "restic incremental backup: $T_R_INC s, repo grew $(mib "$R_GROWTH")"
    else
        RESTIC_WHY="restic incremental backup failed"
        ERRORS=$((ERRORS + 1))
    fi
fi
B_INC_OK=0
if ((B_FULL_OK)); then
    if ctrun T_B_INC borg-inc borg create --compression zstd,3 "$BORG_REPO::churned" "${IMAGES[@]}"; then
        B_INC_OK=1
        BORG_ARCHIVE=churned
        B_GROWTH=$(($(bytes_of "$BORG_REPO") - B_FULL))
        say "borg incremental backup: $T_B_INC s, repo grew $(mib "$B_GROWTH")"
    else
        BORG_WHY="borg incremental create failed"
        ERRORS=$((ERRORS + 1))
    fi
fi

F3="3 vault growth for churn / restic growth"
if ((!K_INC_OK)); then
    figure_skip "$F3" "<= 0.35" "${KLUIS_WHY:-kluis incremental backup failed}"
elif ((!R_INC_OK)); then
    figure_skip "$F3" "<= 0.35" "$RESTIC_WHY"
else
    figure "$F3" "$(ratio "$K_GROWTH" "$R_GROWTH")" '<=' 0.35 "kluis $(mib "$K_GROWTH") / restic $(mib "$R_GROWTH")"
    figure "  incremental backup / restic incremental" "$(ratio "$T_K_INC" "$T_R_INC")" info - "$(kvb "$T_K_INC" restic "$T_R_INC")"
fi
if ((K_INC_OK && B_INC_OK)); then
    figure "  vault growth for churn / borg growth" "$(ratio "$K_GROWTH" "$B_GROWTH")" info - "kluis $(mib "$K_GROWTH") / borg $(mib "$B_GROWTH")"
fi

if ((REPLICATE_OK && K_INC_OK)); then
    # What the replica lacks now: the packs the incremental backup wrote, and the index.
    NEW_FILES=("$VAULTS/main/index.sqlite")
    while IFS= read -r -d '' f; do
        [[ -e $REPLICA/${f#"$VAULTS/main/"} ]] || NEW_FILES+=("$f")
    done < <(find "$VAULTS/main/packs" -name '*.pack' -print0)
    replicate_figure "R replication after churn / cold cp of new files" replicate-inc "${NEW_FILES[@]}"
fi
rm -rf "$REPLICA"

# Block-size sweep, incremental half.
if [[ -n $BLOCK_SIZES && -z $SWEEP_WHY ]]; then
    section "block-size sweep: incremental backups"
    for bs in $BLOCK_SIZES; do
        [[ -n ${SW_T_FULL[$bs]:-} ]] || continue
        VAULT=$VAULTS/bs-$bs
        base_before "sweep-cat-inc-$bs" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the churned images failed"
        if ctrun t "sweep-inc-$bs" "$KLUIS" --vault "$VAULT" backup "$ITEM" "${DISK_ARGS[@]}"; then
            SW_V_INC[$bs]=$(bytes_of "$VAULT")
            base_after tc "sweep-cat-inc-$bs" "${CAT[@]}" "${IMAGES[@]}" || die "cat of the churned images failed"
        else
            figure_error "sweep bs=$bs incremental" - "kluis backup failed"
            continue
        fi
        g=$((SW_V_INC[$bs] - SW_V_FULL[$bs]))
        figure "sweep bs=$bs full backup / cold cat" "$(ratio "${SW_T_FULL[$bs]}" "${SW_T_CAT_FULL[$bs]}")" info - "$(kvb "${SW_T_FULL[$bs]}" cat "${SW_T_CAT_FULL[$bs]}")"
        figure "sweep bs=$bs incremental / cold cat" "$(ratio "$t" "$tc")" info - "$(kvb "$t" cat "$tc")"
        if ((R_INC_OK)); then
            figure "sweep bs=$bs churn growth / restic's" "$(ratio "$g" "$R_GROWTH")" info - "kluis $(mib "$g") / restic $(mib "$R_GROWTH")"
        fi
        if ((B_FULL_OK)); then
            figure "sweep bs=$bs vault size / borg repo" "$(ratio "${SW_V_FULL[$bs]}" "$B_FULL")" info - "kluis $(mib "${SW_V_FULL[$bs]}") / borg $(mib "$B_FULL")"
        fi
        # Each sweep vault holds a full copy of the workload: free the space.
        rm -rf "$VAULT"
    done
fi

# ---------------------------------------------------------------- restore

section "restore"
F5="5 restore all disks / restic restore"
if ((!K_INC_OK)); then
    figure_skip "$F5" "<= 0.5" "${KLUIS_WHY:-no kluis recovery point to restore}"
else
    VAULT=$VAULTS/main
    KR=$RESTORE/kluis
    RR=$RESTORE/restic
    # "Restore the VM": both disks with one command, cold, as restic
    # restores both files of its snapshot with one. Each round restores
    # with kluis, then with restic, into empty directories.
    for ((r = 1; r <= ROUNDS; r++)); do
        rm -rf "$KR" "$RR"
        mkdir -p "$KR"
        if ! ctrun t "kluis-restore-$r" "$KLUIS" --vault "$VAULT" restore "$ITEM@latest" \
            --disk os --to "$KR/os.img" --disk data --to "$KR/data.img" --format raw; then
            figure_error "$F5" "<= 0.5" "kluis restore failed, see $LOGS/kluis-restore-$r.log"
            break
        fi
        if ((r == 1)); then
            # Correctness first: a fast restore of the wrong bytes is a bug.
            same=1
            for d in os data; do
                if ! cmp "$IMG/$d.img" "$KR/$d.img" >"$LOGS/cmp-restore-$d.log" 2>&1; then
                    same=0
                    figure_error "5 restored $d disk byte-identical" "identical" "$(head -1 "$LOGS/cmp-restore-$d.log")"
                fi
            done
            ((same)) && say "kluis restore: both disks byte-identical to the churned images"
            # Sparse: allocated bytes of the restored images vs the source images.
            src_alloc=$(( $(alloc_of "$OS_IMG") + $(alloc_of "$DATA_IMG") ))
            dst_alloc=$(( $(alloc_of "$KR/os.img") + $(alloc_of "$KR/data.img") ))
            figure "5 restore sparseness (allocated / source's)" "$(ratio "$dst_alloc" "$src_alloc")" '<=' 1.05 \
                "restored $(mib "$dst_alloc") / source $(mib "$src_alloc") allocated"
        fi
        rm -rf "$KR"
        if ((!R_INC_OK)); then
            figure_skip "$F5" "<= 0.5" "${RESTIC_WHY:-no restic snapshot}"
            break
        fi
        if ! ctrun tr "restic-restore-$r" restic -r "$RESTIC_REPO" restore latest --target "$RR"; then
            figure_skip "$F5" "<= 0.5" "restic restore failed"
            ERRORS=$((ERRORS + 1))
            break
        fi
        round_add restore "$(ratio "$t" "$tr")" "$(kvb "$t" restic "$tr")"
        if ((r == 1)); then
            r_alloc=$(( $(alloc_of "$RR$OS_IMG") + $(alloc_of "$RR$DATA_IMG") ))
            figure "  restore allocated / restic restore's" "$(ratio "$dst_alloc" "$r_alloc")" info - \
                "kluis $(mib "$dst_alloc") / restic $(mib "$r_alloc")"
            cmp -s "$OS_IMG" "$RR$OS_IMG" || warn "restic's restore differs from the image (baseline problem)"
        fi
    done
    rm -rf "$KR" "$RR"
    if [[ -n ${ROUND_RATIOS[restore]:-} ]]; then round_figure restore "$F5" '<=' 0.5; fi
fi

fi # BENCH_ONLY (the mount helpers below serve the big-disk figures too)

# ---------------------------------------------------------------- mount

# start_fuse NAME MOUNTPOINT WAITFILE CMD...: start a foreground FUSE daemon in
# the background; wait until WAITFILE shows up in it. Sets FUSE_PID.
start_fuse() {
    local name=$1 mp=$2 file=$3 i
    shift 3
    mkdir -p "$mp"
    "$@" >"$LOGS/$name.log" 2>&1 &
    FUSE_PID=$!
    PIDS+=("$FUSE_PID")
    MOUNTS+=("$mp")
    for ((i = 0; i < 1200; i++)); do # up to 120 s (restic loads its index first)
        [[ -e $file ]] && return 0
        if ! kill -0 "$FUSE_PID" 2>/dev/null; then
            printf 'bench: %s exited before %s appeared\n' "$name" "$file" >&2
            tail -n 15 "$LOGS/$name.log" | sed 's/^/    | /' >&2
            return 1
        fi
        sleep 0.1
    done
    printf 'bench: %s: %s did not appear within 120 s\n' "$name" "$file" >&2
    return 1
}
# stop_fuse MOUNTPOINT [CMD...]: unmount (with CMD first if given, e.g.
# `kluis umount`), then wait for the daemon to exit.
stop_fuse() {
    local mp=$1 i
    shift
    if (($#)); then "$@" >>"$LOGS/umount.log" 2>&1 || warn "'$*' failed: $(tail -1 "$LOGS/umount.log")"; fi
    if mountpoint -q "$mp"; then
        fusermount3 -u "$mp" 2>/dev/null || fusermount -u "$mp" 2>/dev/null || umount -l "$mp" || true
    fi
    for ((i = 0; i < 200; i++)); do
        kill -0 "$FUSE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$FUSE_PID" 2>/dev/null; then
        warn "mount daemon $FUSE_PID did not exit after unmount; killing it"
        kill "$FUSE_PID" 2>/dev/null || true
    fi
    wait "$FUSE_PID" 2>/dev/null || true
    # Reaped: forget it, so the EXIT trap never signals a reused pid.
    local -a keep=()
    for p in "${PIDS[@]}"; do [[ $p != "$FUSE_PID" ]] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}
randread() { # randread FILE SEED -> JSON line
    "${HELPER[@]}" randread "$1" "$RANDREAD_COUNT" --warmup 300 --seed "$2"
}
# other_mount WHYVAR TOOL MOUNTPOINT FILE CMD...: this round's read of FILE
# through another tool's mount, paired with the round's kluis read ($tk).
# A failure sets WHYVAR, and later rounds skip the tool.
other_mount() {
    local whyvar=$1 tool=$2 mp=$3 file=$4
    shift 4
    [[ -z ${!whyvar:-} ]] || return 0
    drop_caches
    if start_fuse "$tool-mount-$r" "$mp" "$file" "$@" &&
        trun t "$tool-mount-seq-$r" dd if="$file" of=/dev/null bs=1M; then
        round_add "$tool-mount" "$(ratio "$t" "$tk")" "$tool mount $t s / kluis mount $tk s"
    else
        printf -v "$whyvar" '%s' "$tool mount failed, see $LOGS/$tool-mount-$r.log"
        ERRORS=$((ERRORS + 1))
    fi
    stop_fuse "$mp"
}
jget() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

if [[ $ONLY != bigdisk ]]; then
section "mount"
F7="7 mount seq read speed / cold dd of raw"
F7R="7 mount seq read speedup vs restic mount"
F7B="7 mount seq read speedup vs borg mount"
MOUNT_WHY=
if [[ $DO_MOUNT != 1 ]]; then MOUNT_WHY="BENCH_MOUNT=0"
elif [[ ! -e /dev/fuse ]] || ! command -v fusermount3 >/dev/null; then MOUNT_WHY="no /dev/fuse or fusermount3"
elif [[ -n $KLUIS_WHY ]]; then MOUNT_WHY=$KLUIS_WHY
elif ! kluis_has mount; then MOUNT_WHY="kluis has no mount command yet"
elif ((!K_INC_OK)); then MOUNT_WHY="no kluis recovery point to mount"
fi
if [[ -n $MOUNT_WHY ]]; then
    for f in "$F7" "$F7R" "$F7B"; do figure_skip "$f" ">= 1.0 / 3.0" "$MOUNT_WHY"; done
else
    VAULT=$VAULTS/main
    KM=$MNT/kluis
    KFILE=$KM/$ITEM/latest/disks/os.raw
    DD_RAW=(dd if="$OS_IMG" of=/dev/null bs=1M)
    RM=$MNT/restic
    RFILE=$RM/snapshots/latest$OS_IMG
    BM=$MNT/borg
    BFILE=$BM$OS_IMG
    ((R_INC_OK)) || RESTIC_MOUNT_WHY=${RESTIC_WHY:-no restic snapshot}
    ((B_FULL_OK)) || BORG_MOUNT_WHY=$BORG_WHY
    # Each round: the kluis mount (a new daemon, so nothing is cached),
    # between cold dd's of the raw image; then restic's and borg's mounts of
    # the same disk.
    for ((r = 1; r <= ROUNDS; r++)); do
        base_before "dd-raw-$r" "${DD_RAW[@]}" || die "dd of the OS image failed"
        drop_caches
        if ! start_fuse "kluis-mount-$r" "$KM" "$KFILE" "$KLUIS" --vault "$VAULT" mount "$KM"; then
            figure_error "$F7" ">= 1.0" "kluis mount did not come up, see $LOGS/kluis-mount-$r.log"
            break
        fi
        if ! trun tk "kluis-mount-seq-$r" dd if="$KFILE" of=/dev/null bs=1M; then
            figure_error "$F7" ">= 1.0" "reading the mounted disk failed"
            stop_fuse "$KM" "$KLUIS" umount "$KM"
            break
        fi
        base_after td "dd-raw-$r" "${DD_RAW[@]}" || die "dd of the OS image failed"
        round_add dd "$(ratio "$td" "$tk")" "dd raw $td s / kluis mount $tk s; $BASE_NOTE"
        if ((r == 1)); then
            if ! cmp "$OS_IMG" "$KFILE" >"$LOGS/cmp-mount.log" 2>&1; then
                figure_error "7 mounted os.raw byte-identical" identical "$(head -1 "$LOGS/cmp-mount.log")"
            fi
            # Latency of 4 KiB random reads on the warm mount (daemon up, its
            # own caches filled by the sequential read) with the KERNEL page
            # cache dropped, so every read goes through FUSE to kluis (after a
            # sequential read the kernel would otherwise answer from its cache
            # and we would time memcpy). Baseline: the same reads of the raw
            # image after dropping the page cache.
            drop_caches
            if KJ=$(randread "$KFILE" 11 2>"$LOGS/randread-kluis.err"); then
                drop_caches
                RJ=$(randread "$OS_IMG" 11)
                for p in p50 p99; do
                    k=$(jget "${p}_us" <<<"$KJ") rr=$(jget "${p}_us" <<<"$RJ")
                    figure "7 4K random read $p, warm mount / raw image" "$(ratio "$k" "$rr")" info - "kluis mount $k us / raw image $rr us"
                done
            else
                figure_error "7 warm 4K random read" - "randread on the mount failed: $(tail -1 "$LOGS/randread-kluis.err")"
            fi
        fi
        stop_fuse "$KM" "$KLUIS" umount "$KM"

        other_mount RESTIC_MOUNT_WHY restic "$RM" "$RFILE" restic -r "$RESTIC_REPO" mount "$RM"
        other_mount BORG_MOUNT_WHY borg "$BM" "$BFILE" borg mount -f "$BORG_REPO::$BORG_ARCHIVE" "$BM"
    done
    if [[ -n ${ROUND_RATIOS[dd]:-} ]]; then
        round_figure dd "$F7" '>=' 1.0
    fi
    for f in "restic-mount:$F7R:${RESTIC_MOUNT_WHY:-}" "borg-mount:$F7B:${BORG_MOUNT_WHY:-}"; do
        IFS=: read -r key name why <<<"$f"
        if [[ -n ${ROUND_RATIOS[$key]:-} ]]; then
            round_figure "$key" "$name" '>=' 3.0
        else
            figure_skip "$name" ">= 3.0" "${why:-no kluis mount figure}"
        fi
    done
fi

# ---------------------------------------------------------------- peak RSS

hypervisor_figures

section "peak RSS"
F6S="6 backup peak RSS, $RSS_SMALL_MIB MiB disk / budget"
F6B="6 backup peak RSS, $RSS_BIG_MIB MiB disk / budget"
F6F="6 backup peak RSS flatness (big / small)"
RSS_WHY=
if [[ $DO_RSS != 1 ]]; then RSS_WHY="BENCH_RSS=0"; elif [[ -n $KLUIS_WHY ]]; then RSS_WHY=$KLUIS_WHY; fi
if [[ -n $RSS_WHY ]]; then
    for f in "$F6S" "$F6B" "$F6F"; do figure_skip "$f" "<= 1.0 / 1.25" "$RSS_WHY"; done
else
    # Images no longer needed: free their space for the large RSS disk.
    rm -rf "$VAULTS/main" "$REPOS" "$IMG"
    mkdir -p "$W/rss"
    declare -A RSS
    budget=$((RSS_BUDGET_MB * 1000000))
    for size in "$RSS_SMALL_MIB" "$RSS_BIG_MIB"; do
        img=$W/rss/disk-$size.img
        say "generating a $size MiB mostly-allocated disk (every 4 KiB page distinct)"
        "${HELPER[@]}" pattern "$img" "$size" --seed "$size"
        VAULT=$VAULTS/rss-$size
        base_before "rss-cat-$size" "${CAT[@]}" "$img" || die "cat of $img failed"
        if run "rss-init-$size" "$KLUIS" --vault "$VAULT" init &&
            ctrun t "rss-backup-$size" "$KLUIS" --vault "$VAULT" backup "rss$size" --disk "disk=$img"; then
            RSS[$size]=$(rss_of "rss-backup-$size")
            base_after tc "rss-cat-$size" "${CAT[@]}" "$img" || die "cat of $img failed"
            figure "  full backup of $size MiB random disk / cat" "$(ratio "$t" "$tc")" info - "$(kvb "$t" cat "$tc")"
            f=$F6S
            [[ $size == "$RSS_BIG_MIB" ]] && f=$F6B
            figure "$f" "$(ratio "${RSS[$size]}" "$budget")" '<=' 1.0 "kluis $(mib "${RSS[$size]}") / budget $RSS_BUDGET_MB MB"
        else
            figure_error "6 backup peak RSS, $size MiB disk" "<= 1.0" "kluis backup failed, see $LOGS/rss-backup-$size.log"
        fi
        rm -rf "$VAULT" "$img"
    done
    if [[ -n ${RSS[$RSS_SMALL_MIB]:-} && -n ${RSS[$RSS_BIG_MIB]:-} ]]; then
        # Growth per GiB of disk, and what it would mean for a 1 TiB disk: a
        # small ratio can still hide a per-block cost (32 bytes per 64 KiB
        # block is 0.5 MiB per GiB, 512 MiB per TiB).
        slope=$(awk -v b="${RSS[$RSS_BIG_MIB]}" -v s="${RSS[$RSS_SMALL_MIB]}" -v bm="$RSS_BIG_MIB" -v sm="$RSS_SMALL_MIB" \
            'BEGIN { printf "%.0f", (b - s) / ((bm - sm) / 1024) }')
        figure "$F6F" "$(ratio "${RSS[$RSS_BIG_MIB]}" "${RSS[$RSS_SMALL_MIB]}")" '<=' 1.25 \
            "$(mib "${RSS[$RSS_BIG_MIB]}") / $(mib "${RSS[$RSS_SMALL_MIB]}"); +$(mib "$slope") per GiB of disk"
        proj=$(awk -v s="${RSS[$RSS_SMALL_MIB]}" -v k="$slope" -v sm="$RSS_SMALL_MIB" 'BEGIN { printf "%.0f", s + k * (1024 - sm / 1024) }')
        # Extrapolate only from disks big enough for buffers to have reached
        # their steady size; from 128 MiB (quick mode) the projection is noise.
        if ((RSS_SMALL_MIB >= 1024)); then
            figure "  projected RSS for a 1 TiB disk / budget" "$(ratio "$proj" "$budget")" info - \
                "$(mib "$proj") (linear from $RSS_SMALL_MIB and $RSS_BIG_MIB MiB) / budget $RSS_BUDGET_MB MB"
        fi
    else
        figure_skip "$F6F" "<= 1.25" "an RSS run failed"
    fi
fi

fi # BENCH_ONLY

# ---------------------------------------------------------------- big sparse disk

# B: what opening a disk costs against its size (issue #18). Two disks of
# the same kind: GPT, an ext4 partition of 256 MiB (a few files) at 1 MiB,
# then a 1 MiB run of distinct, compressible blocks every 16 MiB to the end
# (1/16 of the disk: 64 GiB of a 1 TiB disk). Their bytes live in a
# loop-mounted btrfs with compress-force=zstd, so 64 GiB cost about 2 GiB.
section "big sparse disk"
BIG_GIB=${BENCH_BIG_GIB:-$(q 1024 64)}
SMALL_GIB=${BENCH_BIG_SMALL_GIB:-4}
FB="B first byte of the mounted disk"
FG="B first byte of a guest file"
FR="B mount RSS after 1 GiB scattered reads"
BIG_WHY=
if [[ ${BENCH_BIGDISK:-1} != 1 ]]; then BIG_WHY="BENCH_BIGDISK=0"
elif [[ -n $KLUIS_WHY ]]; then BIG_WHY=$KLUIS_WHY
elif [[ ! -e /dev/fuse ]] || ! command -v fusermount3 >/dev/null; then BIG_WHY="no /dev/fuse or fusermount3"
elif ! grep -qw btrfs /proc/filesystems && ! modprobe btrfs 2>/dev/null; then BIG_WHY="the kernel has no btrfs"
elif ! ensure_tool mkfs.btrfs btrfs-progs; then BIG_WHY="mkfs.btrfs not installed and apt-get install failed"
fi
if [[ -n $BIG_WHY ]]; then
    for f in "$FB" "$FG" "$FR"; do figure_skip "$f" "<= 1.5" "$BIG_WHY"; done
else
    BIGW=$W/bigdisk
    mkdir -p "$BIGW/src" "$BIGW/guest/data"
    BSRC=$BIGW/src.btrfs
    truncate -s $(( BIG_GIB / 16 + 16 ))G "$BSRC"
    run big-mkfs mkfs.btrfs -q -f "$BSRC" || die "mkfs.btrfs failed"
    mkdir -p "$BIGW/src"
    # Our own loop device (not mount -o loop), so the EXIT trap detaches it.
    BDEV=$(losetup --find --show "$BSRC")
    LOOPS+=("$BDEV")
    MOUNTS+=("$BIGW/src")
    mount -o compress-force=zstd:1 "$BDEV" "$BIGW/src" || die "cannot mount the btrfs image"
    # The guest filesystem: one small text file and 32 files of 1 MiB.
    echo "kluis big-disk bench" >"$BIGW/guest/hello.txt"
    for i in $(seq -w 1 32); do "${HELPER[@]}" fill "$BIGW/guest/data/file-$i.bin" 1 --seed "$i"; done
    GUEST_FILE=data/file-17.bin
    truncate -s 256M "$BIGW/part.img"
    run big-mkfs-ext4 mkfs.ext4 -q -F -d "$BIGW/guest" "$BIGW/part.img" || die "mkfs.ext4 -d failed"
    DATA_FROM=$((512 << 20)) EVERY=$((16 << 20)) RUNLEN=$((1 << 20))
    BIG_VAULT=$VAULTS/bigdisk
    run big-init "$KLUIS" --vault "$BIG_VAULT" init || die "kluis init failed"
    declare -A BIG_FB BIG_FG BIG_RSS
    for gib in "$SMALL_GIB" "$BIG_GIB"; do
        img=$BIGW/src/disk-$gib.img
        truncate -s "${gib}G" "$img"
        printf 'label: gpt\nstart=2048, size=524288, type=linux\n' | run "big-sfdisk-$gib" sfdisk -q "$img" || die "sfdisk failed"
        dd if="$BIGW/part.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
        say "writing the data runs of the $gib GiB disk ($(( (gib * 1024 - 512) / 16 )) MiB)"
        "${HELPER[@]}" sparse-runs "$img" "$DATA_FROM" "$EVERY" "$RUNLEN"
        trun t "big-backup-$gib" "$KLUIS" --vault "$BIG_VAULT" backup "big$gib" --disk "os=$img" ||
            die "kluis backup of the $gib GiB disk failed"
        say "  backup of the $gib GiB disk: $t s, $(mib "$(du -sb "$BIG_VAULT" | cut -f1)") vault so far"
    done
    umount_dev "$BDEV" "$BIGW/src"
    rm -f "$BSRC"
    BM=$MNT/bigdisk
    # big_mount GIB NAME: a fresh mount daemon, caches dropped.
    big_mount() {
        drop_caches
        start_fuse "big-mount-$2-$1" "$BM" "$BM/big$1/latest" "$KLUIS" --vault "$BIG_VAULT" mount "$BM"
    }
    for gib in "$SMALL_GIB" "$BIG_GIB"; do
        disk=$BM/big$gib/latest/disks/os.raw
        big_mount "$gib" disk || die "kluis mount failed"
        BIG_FB[$gib]=$("${HELPER[@]}" first-byte "$disk") || die "reading $disk failed"
        stop_fuse "$BM" "$KLUIS" umount "$BM"
        big_mount "$gib" guest || die "kluis mount failed"
        BIG_FG[$gib]=$("${HELPER[@]}" first-byte "$BM/big$gib/latest/files/os/p1/$GUEST_FILE") || die "reading a guest file failed"
        stop_fuse "$BM" "$KLUIS" umount "$BM"
        big_mount "$gib" rss || die "kluis mount failed"
        n=$("${HELPER[@]}" scatter "$disk" 1024 "$RUNLEN" "$DATA_FROM" "$EVERY") || die "scattered reads of $disk failed"
        BIG_RSS[$gib]=$(awk '/VmRSS/ { print $2 * 1024 }' "/proc/$FUSE_PID/status")
        say "  $gib GiB disk: first byte $(printf %s "${BIG_FB[$gib]}") s, guest file $(printf %s "${BIG_FG[$gib]}") s, RSS $(mib "${BIG_RSS[$gib]}") after $(mib "$n") scattered"
        stop_fuse "$BM" "$KLUIS" umount "$BM"
    done
    b=$BIG_GIB s=$SMALL_GIB
    figure "$FB, $b / $s GiB" "$(ratio "${BIG_FB[$b]}" "${BIG_FB[$s]}")" '<=' 1.5 "$b GiB ${BIG_FB[$b]} s / $s GiB ${BIG_FB[$s]} s"
    figure "$FB, $b GiB / 0.3 s" "$(ratio "${BIG_FB[$b]}" 0.3)" '<=' 1.0 "${BIG_FB[$b]} s"
    figure "$FG, $b / $s GiB" "$(ratio "${BIG_FG[$b]}" "${BIG_FG[$s]}")" '<=' 1.5 "$b GiB ${BIG_FG[$b]} s / $s GiB ${BIG_FG[$s]} s"
    figure "$FG, $b GiB / 0.3 s" "$(ratio "${BIG_FG[$b]}" 0.3)" '<=' 1.0 "${BIG_FG[$b]} s"
    figure "$FR, $b / $s GiB" "$(ratio "${BIG_RSS[$b]}" "${BIG_RSS[$s]}")" '<=' 1.5 "$b GiB $(mib "${BIG_RSS[$b]}") / $s GiB $(mib "${BIG_RSS[$s]}")"
    figure "$FR, $b GiB / 256 MB" "$(ratio "${BIG_RSS[$b]}" 256000000)" '<=' 1.0 "$(mib "${BIG_RSS[$b]}")"
fi

# ---------------------------------------------------------------- summary

summary
}
