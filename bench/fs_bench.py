#!/usr/bin/env python3
"""drift-fs against its own backing directory, in one run.

Measures, on the same disk, the backing directory directly and the same
directory through `drift mount`:
  - sequential write of a 1 GiB file (dd, 1 MiB blocks), until close returns
    and until the file is durable (conv=fsync);
  - sequential read of that file, from the page cache and cold (caches dropped
    and deferred work settled before each cold read; --cold-reads per run,
    taking turns between the targets),
    with the disk's read requests counted for each cold read (/proc/diskstats),
    so that a slower cold read can be told apart from different disk I/O;
  - create-write-close of 10,000 small files (4 KiB, and 64 KiB) from one
    process, each run into a fresh directory (kept until the end).
For the mount it also reports how long after close the journal entry for the
1 GiB file appears (hashing happens at release, after close has returned).
A second mount with --no-passthrough shows what the kernel's FUSE
passthrough buys (reads and writes served by the daemon instead).
Prints medians of N runs and the ratio mount/backing as speed (>1 = faster).
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

def sh(*args, **kw):
    return subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False

def settle():
    """Lets deferred work of earlier steps finish before the next timing:
    evicting the inodes, the delayed release of deleted files' blocks
    (discards on this disk), the journal commit."""
    drop_caches()
    time.sleep(1)
    os.sync()

def disk_of(path):
    """major:minor of the block device holding path (its whole disk when
    the holder is a partition), as /proc/diskstats names it."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    try:
        real = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
        if os.path.exists(os.path.join(real, "partition")):
            with open(os.path.join(os.path.dirname(real), "dev")) as f:
                major, minor = map(int, f.read().strip().split(":"))
    except OSError:
        pass
    return major, minor

def disk_reads(dev):
    """(read requests completed, KiB read) so far on dev, or None."""
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if (int(p[0]), int(p[1])) == dev:
                    return int(p[3]), int(p[5]) // 2
    except OSError:
        pass
    return None

def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t

def write_big(path, size_mib, fsync):
    extra = ["conv=fsync"] if fsync else []
    sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mib}", *extra)

def read_big(path):
    sh("dd", f"if={path}", "of=/dev/null", "bs=1M")

def small_files(d, n, size):
    os.makedirs(d, exist_ok=True)
    data = os.urandom(size)
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - t

def wait_journal(drift, journal, path, after, limit=60):
    t = time.time()
    while time.time() - t < limit:
        out = subprocess.run([drift, "journal", "list", "--journal", journal, "--since", str(after), "--json"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            e = json.loads(line)
            if e["op"] == "write" and e["path"] == path:
                return e["seq"]
        time.sleep(0.005)
    raise SystemExit(f"journal entry for {path} never appeared")

def last_seq(drift, journal):
    out = subprocess.run([drift, "journal", "stats", "--journal", journal, "--json"], capture_output=True, text=True).stdout
    return json.loads(out).get("last_seq") or 0

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drift", default="target/release/drift")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--verbose", action="store_true", help="print every measurement as it is taken")
    ap.add_argument("--cold-reads", type=int, default=3,
                    help="cold reads of the 1 GiB file per run and target (default 3): single cold reads "
                         "vary by 2x or more on a shared machine, so the median needs several")
    ap.add_argument("--small-sizes", type=lambda v: [int(x) * 1024 for x in v.split(",")], default=[4096, 65536],
                    help="small-file sizes in KiB, comma-separated (default 4,64)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir under /var/tmp)")
    a = ap.parse_args()
    drift = os.path.abspath(a.drift)
    root = tempfile.mkdtemp(prefix="drift-bench-", dir=a.dir or "/var/tmp")
    backing, mnt, journal = f"{root}/backing", f"{root}/mnt", f"{root}/journal.db"
    mnt2, journal2 = f"{root}/mnt-nopt", f"{root}/journal-nopt.db"
    os.makedirs(backing); os.makedirs(mnt); os.makedirs(mnt2)
    procs = [subprocess.Popen([drift, "mount", backing, mnt, "--journal", journal], stderr=subprocess.DEVNULL),
             subprocess.Popen([drift, "mount", backing, mnt2, "--journal", journal2, "--no-passthrough"], stderr=subprocess.DEVNULL)]
    try:
        for m in (mnt, mnt2):
            for _ in range(500):
                if os.path.ismount(m): break
                time.sleep(0.01)
            else:
                raise SystemExit(f"mount {m} did not come up")
        can_drop = drop_caches()
        dev = disk_of(root)
        results = {}
        io = {}
        def add(name, target, seconds):
            if a.verbose:
                print(f"  run {run}: {name} on {target}: {seconds:.3f}s", flush=True)
            results.setdefault(name, {}).setdefault(target, []).append(seconds)
        targets = [("backing", backing), ("mount", mnt), ("no-passthrough", mnt2)]
        for run in range(a.runs):
            # Rotate the order so no target always follows the same one
            # (dirty-page writeback and deferred deletions carry over).
            order = targets[run % 3:] + targets[:run % 3]
            # Names differ per target: all three targets share one backing
            # directory, and overwriting the previous target's files would
            # measure truncation instead of creation.
            big = {target: f"{base}/{target}-big-{run}" for target, base in order}
            for target, base in order:
                f = big[target]
                settle()
                if target == "mount":
                    before = last_seq(drift, journal)
                add("write 1 GiB (close)", target, timed(lambda: write_big(f, a.size_mib, False)))
                if target == "mount":
                    # The release (and the hash) happen after close returns.
                    t0 = time.perf_counter()
                    wait_journal(drift, journal, f"/{target}-big-{run}", before)
                    add("journal entry after close", "mount", time.perf_counter() - t0)
                add("read 1 GiB (cached)", target, timed(lambda: read_big(f)))
            # Cold reads take turns between the targets, so that the load
            # of the shared machine (which moves single cold reads by 2x)
            # falls on all of them alike rather than on one target's turn.
            if can_drop:
                for _ in range(a.cold_reads):
                    for target, _ in order:
                        settle()
                        before_io = disk_reads(dev)
                        add("read 1 GiB (cold)", target, timed(lambda: read_big(big[target])))
                        after_io = disk_reads(dev)
                        if before_io and after_io:
                            io.setdefault(target, []).append((after_io[0] - before_io[0], after_io[1] - before_io[1]))
            for target, base in order:
                f = big[target]
                # Through the mount, the kernel frees a deleted file's blocks
                # only when it evicts the inode holding the passthrough
                # backing file: settle (untimed) so that no target pays for
                # an earlier deletion inside a later measurement.
                os.unlink(f)
                settle()
                add("write 1 GiB (fsync)", target, timed(lambda: write_big(f, a.size_mib, True)))
                os.unlink(f)
                # Small-file trees are kept until the end: deleting tens of
                # thousands of files makes ext4's inode allocator slow for
                # a while (recently_deleted), whichever target comes next.
                for size in a.small_sizes:
                    d = f"{base}/{target}-small-{size}-{run}"
                    settle()
                    add(f"create {a.files} x {size // 1024} KiB files", target, small_files(d, a.files, size))
        print(f"drift-fs vs backing directory, {a.runs} runs, medians (machine: {os.cpu_count()} cores)")
        print("speed ratio = backing time / mount time (1.00x = as fast as the plain directory)")
        print(f"{'benchmark':30} {'backing':>9} {'mount':>9} {'ratio':>7} {'no-passthrough':>15} {'ratio':>7}")
        for name, by in results.items():
            b = statistics.median(by["backing"]) if "backing" in by else None
            m = statistics.median(by["mount"])
            n = statistics.median(by["no-passthrough"]) if "no-passthrough" in by else None
            if b is None:
                print(f"{name:30} {'':>9} {m:8.3f}s")
            else:
                print(f"{name:30} {b:8.3f}s {m:8.3f}s {b / m:6.2f}x {n:14.3f}s {b / n:6.2f}x")
        if not can_drop:
            print("(cold reads skipped: cannot drop caches here)")
        else:
            cold = results.get("read 1 GiB (cold)", {})
            print(f"\ncold reads, {a.runs} x {a.cold_reads} per target: time min/median/max, and the disk's read"
                  f" requests (medians) during each, device {dev[0]}:{dev[1]}")
            for target, _ in targets:
                t = sorted(cold.get(target, []))
                if not t:
                    continue
                line = f"  {target:15} {t[0]:.3f}s / {statistics.median(t):.3f}s / {t[-1]:.3f}s"
                if io.get(target):
                    reqs = statistics.median(r for r, _ in io[target])
                    kib = statistics.median(k for _, k in io[target])
                    line += f"   {reqs:.0f} requests, {kib / 1024:.0f} MiB read, {kib / max(reqs, 1):.0f} KiB per request"
                b = sorted(cold.get("backing", []))
                if target != "backing" and b:
                    # The fastest read of each is the one least disturbed
                    # by the rest of the machine.
                    line += f"   ratio {statistics.median(b) / statistics.median(t):.2f}x (medians), {b[0] / t[0]:.2f}x (fastest)"
                print(line)
    finally:
        for proc, m in zip(procs, (mnt, mnt2)):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                subprocess.run(["umount", "-l", m])
        shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
