#!/usr/bin/env python3
"""Workload helpers for scripts/bench.sh (python3 standard library only).

Every generator is seeded, so two runs of the benchmark build byte-identical
images and apply the same churn; that keeps figures comparable across runs
and across block sizes.

Subcommands
  pick-files BUDGET SRC...     NUL-separated list of files (paths relative to /)
                               whose rounded size adds up to BUDGET bytes, for
                               `tar --null -T -`; picks SRC dirs in order.
  fill FILE MIB [--seed S]     write MIB MiB of semi-compressible pages
                               (a database file, a downloaded archive, ...).
  db-churn FILE PAGES          rewrite PAGES random 4 KiB pages of FILE in place.
  append-text FILE MIB         append MIB MiB of log-like text to FILE.
  edit-delete ROOT EDITS DELS  edit EDITS random files under ROOT (half in
                               place, half rewrite+rename like an editor) and
                               delete DELS others.
  pattern FILE MIB             a mostly-allocated disk for the RSS test: every
                               4 KiB page distinct (so nothing dedups), with a
                               1 MiB hole every 16 MiB (so it is sparse-ish).
  randread FILE COUNT          4 KiB os.pread at random aligned offsets;
                               prints JSON {p50_us, p99_us, mean_us, n}.
  tsv2json TSV                 the summary TSV as a JSON list of objects.
  sparse-runs FILE FROM EVERY RUN
                               in FILE (already sized), a RUN-byte run of data
                               every EVERY bytes from byte FROM to the end:
                               every 4 KiB page distinct (its offset in a
                               header) and the rest one text, so a disk of
                               many GiB costs little to store compressed.
  first-byte FILE              seconds to open FILE and read its first byte.
  scatter FILE COUNT LEN FROM EVERY [--seed S]
                               COUNT reads of LEN bytes at the start of
                               random runs (as sparse-runs lays them out);
                               prints the bytes read.
"""

import json
import os
import random
import stat
import struct
import sys
import time

PAGE = 4096
MIB = 1 << 20

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu invoice order customer shipped pending paid refund "
    "amsterdam utrecht rotterdam eindhoven groningen leiden delft haarlem "
    "kernel systemd nginx postgres session cache upstream request response "
    "error warning info debug user admin backup restore vault disk block"
).split()


class PageGen:
    """Semi-compressible 4 KiB pages: a 16-byte header (page number and a
    version stamp, which makes every page distinct), ~3 KiB of row-like text
    (zstd squeezes it ~3-4x) and ~1 KiB of random bytes (incompressible).
    Slices come from pre-built pools, so generating GiBs costs little CPU."""

    TEXT = 3000
    RAND = PAGE - 16 - TEXT

    def __init__(self, seed):
        self.rng = random.Random(seed)
        rows = []
        size = 0
        n = 0
        while size < 4 * MIB:
            row = "%08d|%s %s|%s|%d.%02d|2026-11-%02dT%02d:%02d:%02dZ|%s\n" % (
                n,
                self.rng.choice(WORDS),
                self.rng.choice(WORDS),
                self.rng.choice(WORDS),
                self.rng.randrange(100000),
                self.rng.randrange(100),
                self.rng.randrange(1, 29),
                self.rng.randrange(24),
                self.rng.randrange(60),
                self.rng.randrange(60),
                " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randrange(2, 8))),
            )
            rows.append(row)
            size += len(row)
            n += 1
        self.text = "".join(rows).encode()
        self.rand = self.rng.randbytes(4 * MIB)

    def page(self, pageno, version):
        t = self.rng.randrange(len(self.text) - self.TEXT)
        r = self.rng.randrange(len(self.rand) - self.RAND)
        return b"".join(
            (
                struct.pack("<QQ", pageno, version),
                self.text[t : t + self.TEXT],
                self.rand[r : r + self.RAND],
            )
        )

    def block(self, first_page, npages, version):
        return b"".join(self.page(first_page + i, version) for i in range(npages))


def cmd_pick_files(budget, *srcs):
    budget = int(budget)
    total = 0
    out = sys.stdout.buffer
    for src in srcs:
        if not os.path.isdir(src):
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            # Stay on one file system (skips /proc-like or bind mounts).
            dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    size = (st.st_size + PAGE - 1) // PAGE * PAGE
                    if not os.access(path, os.R_OK):
                        continue
                elif stat.S_ISLNK(st.st_mode):
                    size = 0
                else:
                    continue  # sockets, fifos, devices: not in a disk image
                out.write(path.lstrip("/").encode(errors="surrogateescape") + b"\0")
                total += size
                if total >= budget:
                    print("picked %d bytes" % total, file=sys.stderr)
                    return
    print("picked %d bytes (sources exhausted before budget %d)" % (total, budget), file=sys.stderr)


def cmd_fill(path, mib, *rest):
    seed = int(rest[1]) if len(rest) >= 2 and rest[0] == "--seed" else 1
    gen = PageGen(seed)
    pages_per_mib = MIB // PAGE
    with open(path, "wb") as f:
        for m in range(int(mib)):
            f.write(gen.block(m * pages_per_mib, pages_per_mib, 1))
        f.flush()
        os.fsync(f.fileno())


def cmd_db_churn(path, pages, *rest):
    seed = int(rest[1]) if len(rest) >= 2 and rest[0] == "--seed" else 2
    gen = PageGen(seed)
    # O_RDWR without O_TRUNC: the file system rewrites the same blocks, which
    # is what a database does to its pages (ext4 is not copy-on-write).
    fd = os.open(path, os.O_RDWR)
    try:
        npages = os.fstat(fd).st_size // PAGE
        rng = random.Random(seed)
        for pageno in sorted(rng.sample(range(npages), min(int(pages), npages))):
            os.pwrite(fd, gen.page(pageno, 2), pageno * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_append_text(path, mib, *rest):
    seed = int(rest[1]) if len(rest) >= 2 and rest[0] == "--seed" else 3
    rng = random.Random(seed)
    target = int(float(mib) * MIB)
    lines = []
    size = 0
    while size < target:
        line = "Nov 21 %02d:%02d:%02d web01 %s[%d]: %s %s %s id=%d\n" % (
            rng.randrange(24),
            rng.randrange(60),
            rng.randrange(60),
            rng.choice(WORDS),
            rng.randrange(1, 65536),
            rng.choice(WORDS),
            rng.choice(WORDS),
            rng.choice(WORDS),
            rng.randrange(10**9),
        )
        lines.append(line)
        size += len(line)
    with open(path, "a") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def cmd_edit_delete(root, edits, deletes, *rest):
    seed = int(rest[1]) if len(rest) >= 2 and rest[0] == "--seed" else 4
    rng = random.Random(seed)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if dirpath == root and "lost+found" in dirnames:
            dirnames.remove("lost+found")
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                files.append((p, st.st_size))
    chosen = rng.sample(files, min(len(files), int(edits) + int(deletes)))
    to_edit, to_delete = chosen[: int(edits)], chosen[int(edits) :]
    edited = 0
    for i, (p, size) in enumerate(to_edit):
        patch = ("# edited by bench churn %d\n" % i).encode() * rng.randrange(1, 8)
        if i % 2 == 0:
            # In place (like sed -i on a mmap'd file, or a config tool): same blocks.
            with open(p, "r+b") as f:
                f.seek(rng.randrange(size))
                f.write(patch)
        else:
            # Editor-style save: write a new file and rename it over the old
            # one, so the data lands in freshly allocated blocks.
            with open(p, "rb") as f:
                data = f.read()
            at = rng.randrange(len(data) + 1)
            tmp = p + ".bench-tmp"
            with open(tmp, "wb") as f:
                f.write(data[:at] + patch + data[at:])
            os.chmod(tmp, os.stat(p).st_mode & 0o7777)
            os.rename(tmp, p)
        edited += 1
    for p, _ in to_delete:
        os.unlink(p)
    print("edited %d files, deleted %d files" % (edited, len(to_delete)), file=sys.stderr)


def cmd_pattern(path, mib, *rest):
    seed = int(rest[1]) if len(rest) >= 2 and rest[0] == "--seed" else 5
    gen = PageGen(seed)
    mib = int(mib)
    pages_per_mib = MIB // PAGE
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        for m in range(mib):
            if m % 16 == 15:
                continue  # leave a 1 MiB hole: the disk is sparse-ish
            f.seek(m * MIB)
            f.write(gen.block(m * pages_per_mib, pages_per_mib, 1))
        f.flush()
        os.fsync(f.fileno())


def cmd_randread(path, count, *rest):
    opts = dict(zip(rest[0::2], rest[1::2]))
    seed = int(opts.get("--seed", 7))
    warmup = int(opts.get("--warmup", 0))
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        npages = os.fstat(fd).st_size // PAGE
        for _ in range(warmup):
            os.pread(fd, PAGE, rng.randrange(npages) * PAGE)
        lat = []
        for _ in range(int(count)):
            off = rng.randrange(npages) * PAGE
            t0 = time.perf_counter_ns()
            data = os.pread(fd, PAGE, off)
            t1 = time.perf_counter_ns()
            if len(data) != PAGE:
                raise SystemExit("short read at offset %d: %d bytes" % (off, len(data)))
            lat.append((t1 - t0) / 1000.0)
    finally:
        os.close(fd)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))]

    print(json.dumps({"n": len(lat), "p50_us": round(pct(50), 2), "p99_us": round(pct(99), 2),
                      "mean_us": round(sum(lat) / len(lat), 2)}))


def cmd_tsv2json(path):
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            row["figure"] = row["figure"].strip()  # indentation is for the table only
            rows.append(row)
    print(json.dumps(rows, indent=2))


def cmd_sparse_runs(path, start, every, run):
    start, every, run = int(start), int(every), int(run)
    text = PageGen(3).text[: PAGE - 16]
    buf = bytearray((struct.pack("<QQ", 0, 0) + text) * (run // PAGE))
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        off = start
        while off + run <= size:
            for i in range(run // PAGE):
                struct.pack_into("<QQ", buf, i * PAGE, off + i * PAGE, 0x6b6c756973)
            os.pwrite(fd, buf, off)
            off += every
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_first_byte(path):
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        if len(f.read(1)) != 1:
            raise SystemExit("%s: empty" % path)
    print("%.4f" % (time.perf_counter() - t0))


def cmd_scatter(path, count, length, start, every, *rest):
    opts = dict(zip(rest[0::2], rest[1::2]))
    rng = random.Random(int(opts.get("--seed", 9)))
    count, length, start, every = int(count), int(length), int(start), int(every)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        runs = (os.fstat(fd).st_size - start - length) // every + 1
        for _ in range(count):
            total += len(os.pread(fd, length, start + rng.randrange(runs) * every))
    finally:
        os.close(fd)
    print(total)


COMMANDS = {
    "sparse-runs": cmd_sparse_runs,
    "first-byte": cmd_first_byte,
    "scatter": cmd_scatter,
    "pick-files": cmd_pick_files,
    "fill": cmd_fill,
    "db-churn": cmd_db_churn,
    "append-text": cmd_append_text,
    "edit-delete": cmd_edit_delete,
    "pattern": cmd_pattern,
    "randread": cmd_randread,
    "tsv2json": cmd_tsv2json,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
