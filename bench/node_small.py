#!/usr/bin/env python3
"""Small files against vsftpd, in one run on this machine: what most FTP
traffic is. Servers (the same three as bench/node_bench.py, started by its
functions):

  (a) drift node      -- over the drift-fs FUSE mount (journaled)
  (b) drift node      -- over the plain backing directory (no FUSE, no journal)
  (c) vsftpd (Debian) -- anonymous, into a directory on the same disk

1. Per-operation latency on one logged-in control connection (Python
   ftplib, passive mode): a 1-byte STOR and RETR (PASV + command + data +
   226), MKD, DELE, and LIST of a directory of 20 entries. OPS_REPS of
   each, the servers interleaved in batches; median, p90 and p99 in ms.
2. Workload: `lftp mirror -R` (upload) and `lftp mirror` (download) of a
   tree of FILES files of 4-64 KiB in DIRS directories (random sizes, fixed
   seed), REPS times per server, interleaved; the whole lftp command is
   timed (login included). Every download is compared with the source.

Ratios are vsftpd time / drift time (higher is better for drift; the target
is >= 1.0 for (a) in both directions).

Usage: bench/node_small.py [--files 2000] [--dirs 20] [--reps 3]
                           [--ops-reps 200] [--no-build] [--dir /tmp/...]
Needs: root (FUSE mount), lftp, vsftpd. Traffic stays on 127.0.0.1.
"""
import argparse
import ftplib
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import node_bench  # noqa: E402  (server start/stop helpers)

ROOT = node_bench.ROOT
LABELS = {"a": "(a) drift node, FUSE", "b": "(b) drift node, plain", "c": "(c) vsftpd"}


def make_tree(root, files, dirs, seed=8):
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        d = os.path.join(root, f"d{i % dirs:02d}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(4 * 1024, 64 * 1024)
        with open(os.path.join(d, f"f{i:04d}.bin"), "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    return total


def tree_digest(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hash(f.read())
    return out


def credentials(server_key):
    return ("anonymous", "bench") if server_key == "c" else ("bench", "bench-pw-12")


def lftp(url, user, password, script):
    # Hostname and port from the URL; the path is given in the script.
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.split(":")
    cmd = ["lftp", "-p", port, "-u", f"{user},{password}", "-e",
           "set net:max-retries 1; set net:timeout 30; set ftp:passive-mode on; " + script + "; bye", host]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"lftp {script!r} failed ({out.returncode}): {out.stderr}{out.stdout}")
    return took, cmd


def url_path(url):
    return "/" + url.split("//", 1)[1].split("/", 1)[1]


def workload_round(k, server, src, work, i, runs):
    proc, url, _, landing = server
    user, password = credentials(k)
    remote = url_path(url) + f"tree{i}"
    up, cmd_up = lftp(url, user, password, f"mirror -R {src} {remote}")
    down_dir = os.path.join(work, f"down-{k}-{i}")
    down, cmd_down = lftp(url, user, password, f"mirror {remote} {down_dir}")
    if tree_digest(down_dir) != runs["src_digest"]:
        raise SystemExit(f"{LABELS[k]}: downloaded tree differs from the source")
    shutil.rmtree(down_dir)
    shutil.rmtree(os.path.join(landing, f"tree{i}"), ignore_errors=True)
    runs[k].append((up, down))
    runs.setdefault("cmds", {})[k] = (cmd_up, cmd_down)
    print(f"  {LABELS[k]:<22} run {i + 1}: mirror -R {up:7.2f} s   mirror {down:7.2f} s", flush=True)


class Ops:
    """One logged-in ftplib session that times single operations."""

    def __init__(self, k, server):
        _, url, _, _ = server
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        self.ftp = ftplib.FTP()
        self.ftp.connect(host, int(port), timeout=30)
        self.ftp.login(*credentials(k))
        self.ftp.cwd(url_path(url))
        self.ftp.set_pasv(True)
        self.ftp.mkd("ops")
        self.ftp.cwd("ops")
        for j in range(20):
            self.ftp.storbinary(f"STOR l{j:02d}", io.BytesIO(b"x"))
        self.n = 0

    def one(self, op):
        f = self.ftp
        self.n += 1
        name = f"o{self.n}"
        # Untimed preparation, so each timed op does exactly one thing.
        if op in ("RETR", "DELE"):
            f.storbinary(f"STOR {name}", io.BytesIO(b"x"))
        t0 = time.perf_counter()
        if op == "STOR":
            f.storbinary(f"STOR {name}", io.BytesIO(b"x"))
        elif op == "RETR":
            got = bytearray()
            f.retrbinary(f"RETR {name}", got.extend)
            assert got == b"x"
        elif op == "MKD":
            f.mkd(name)
        elif op == "DELE":
            f.delete(name)
        elif op == "LIST":
            lines = []
            f.retrlines("LIST", lines.append)
            assert len(lines) >= 20
        took = time.perf_counter() - t0
        # Untimed cleanup keeps the LIST directory at its size.
        if op in ("STOR", "RETR"):
            f.delete(name)
        elif op == "MKD":
            f.rmd(name)
        return took

    def close(self):
        try:
            self.ftp.quit()
        except Exception:
            self.ftp.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dirs", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ops-reps", type=int, default=200)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a new one under /tmp)")
    args = ap.parse_args()

    drift = node_bench.drift_binary(args.no_build)

    work = args.dir or tempfile.mkdtemp(prefix="drift-node-small-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "src")
    total = make_tree(src, args.files, args.dirs)
    print(f"tree: {args.files} files of 4-64 KiB in {args.dirs} directories, {total / 2**20:.1f} MiB; "
          f"{args.reps} mirror runs and {args.ops_reps} of each op per server; "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}", flush=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)

    servers = {}
    runs = {k: [] for k in LABELS}
    runs["src_digest"] = tree_digest(src)
    lat = {k: {op: [] for op in ("STOR", "RETR", "MKD", "DELE", "LIST")} for k in LABELS}
    try:
        servers["a"] = node_bench.drift_node(drift, work, "a", True, "false", 32000)
        servers["b"] = node_bench.drift_node(drift, work, "b", False, "false", 32200)
        servers["c"] = node_bench.vsftpd(work, 32400)

        print("\nper-operation latency (one ftplib session per server, batches of 20 interleaved)")
        sessions = {k: Ops(k, servers[k]) for k in LABELS}
        batch = 20
        for start in range(0, args.ops_reps, batch):
            for op in lat["a"]:
                for k in LABELS:
                    for _ in range(min(batch, args.ops_reps - start)):
                        lat[k][op].append(sessions[k].one(op))
        for s in sessions.values():
            s.close()
        print("  ms: median / p90 / p99      " + "".join(f"{op:>22}" for op in lat["a"]))
        for k, label in LABELS.items():
            cells = "".join(
                f"{statistics.median(v) * 1000:8.2f}/{pct(v, 90) * 1000:6.2f}/{pct(v, 99) * 1000:6.2f}"
                for v in lat[k].values())
            print(f"  {label:<26}{cells}")
        for k in ("a", "b"):
            ratios = "".join(
                f"{statistics.median(lat['c'][op]) / statistics.median(lat[k][op]):22.2f}" for op in lat[k])
            print(f"  vsftpd/{LABELS[k][:3]} (median ratio)  {ratios}")

        print(f"\nworkload: lftp mirror -R then mirror, interleaved")
        for i in range(args.reps):
            for k in LABELS:
                workload_round(k, servers[k], src, work, i, runs)
    finally:
        for server in servers.values():
            node_bench.stop(server[0])
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    print("\nworkload medians (s)          mirror -R     mirror   (all runs)")
    med = {}
    for k, label in LABELS.items():
        ups, downs = [r[0] for r in runs[k]], [r[1] for r in runs[k]]
        med[k] = (statistics.median(ups), statistics.median(downs))
        print(f"  {label:<26}{med[k][0]:9.2f}  {med[k][1]:9.2f}   "
              f"up {' '.join(f'{x:.2f}' for x in ups)} / down {' '.join(f'{x:.2f}' for x in downs)}")
    ok = True
    for k in ("a", "b"):
        r = (med["c"][0] / med[k][0], med["c"][1] / med[k][1])
        print(f"  vsftpd/{LABELS[k][:3]} (x vsftpd)          {r[0]:9.2f}  {r[1]:9.2f}"
              + ("   target >= 1.00" if k == "a" else ""))
        if k == "a":
            ok = min(r) >= 1.0
    print("\ncommands of the last round:")
    for k, (up_cmd, down_cmd) in runs.get("cmds", {}).items():
        print(f"  {LABELS[k]}:\n    {' '.join(up_cmd)}\n    {' '.join(down_cmd)}")
    print(f"load average at end: {os.getloadavg()}")
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
