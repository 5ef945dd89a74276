#!/usr/bin/env python3
"""The cluster's numbers, in one run: a real guide and real nodes (each with
its FUSE mount) on loopback, driven by curl and ftplib.

  failover  SIGKILL of the primary -> the new primary accepting a login and
            a write, from a client's point of view (distribution over
            --trials; target: median under 1 s with a 100 ms heartbeat)
  migrate   `drift migrate`: how long changes are refused, seen by a client
            writing in a loop, with --tree-mib already replicated (target
            under 0.5 s); the guide's own phase durations beside it
  ack       cost of ack = "guide": a 1 GiB upload and 1,000 small uploads
            against ack = "local" and a standalone node, in one run
            (target: "guide" at least 0.7x standalone on the 1 GiB file)
  lag       replication lag while a client uploads continuously (median
            and p99, entries and ms, sampled from `drift status`)
  wire      bytes a node sends after changing one 1 MiB file in a
            10,000-file tree (node in a network namespace; veth counters;
            target under 1.1x the file)
  catchup   an empty node catching up a --tree-mib, 10,000-file history,
            against `rsync -a` of the same tree

  sudo python3 bench/cluster_bench.py --no-build [--only failover,migrate] [--trials 10]

Needs root (FUSE, namespaces), curl, rsync. Traffic stays on loopback and in
the namespace it creates; everything is removed on exit.
"""

import argparse
import ftplib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import node_bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-pw-12"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def dist(xs, unit="ms"):
    if not xs:
        return "no samples"
    return (f"median {statistics.median(xs):.0f} {unit}, p90 {pct(xs, 90):.0f}, min {min(xs):.0f}, "
            f"max {max(xs):.0f} (n={len(xs)})")


_PASSIVE = [20000 + (os.getpid() % 40) * 300]


def next_passive():
    """A block of 100 passive ports below Linux's ephemeral range
    (32768-60999): each shipped batch is a new connection to the guide, and
    its TIME_WAIT sockets would otherwise take ports out of the node's
    passive range (PASV answered 425 once all ten bind tries hit one)."""
    base = _PASSIVE[0]
    _PASSIVE[0] = base + 100 if base + 200 < 32700 else 20000
    return base


class Cluster:
    """A guide and N nodes under `work`; `ack` for every node."""

    def __init__(self, drift, work, nodes=3, ack="guide", lease_ms=600, node_ns=None):
        self.drift, self.work, self.ack = drift, work, ack
        os.makedirs(work, exist_ok=True)
        self.key = os.path.join(work, "cluster.key")
        subprocess.run([drift, "xfer", "keygen", self.key], check=True, capture_output=True)
        self.guide_port = node_bench.free_port()
        self.guide_addr = f"127.0.0.1:{self.guide_port}"
        listen = f"0.0.0.0:{self.guide_port}" if node_ns else self.guide_addr
        with open(os.path.join(work, "guide.toml"), "w") as f:
            f.write(f'listen = "{listen}"\nkey_file = "cluster.key"\ndata_dir = "guide-data"\nlease_ms = {lease_ms}\n')
        self.procs = {}
        self.node_ns = node_ns or {}
        self.start_guide()
        self.nodes = {}
        for i in range(1, nodes + 1):
            self.add_node(f"n{i}")
            self.start_node(f"n{i}")
            self.wait(lambda s, i=i: sum(n["role"] != "down" for n in s["nodes"]) >= i, 30, f"n{i} to report")

    def start_guide(self):
        log = open(os.path.join(self.work, "guide.log"), "a")
        self.procs["guide"] = subprocess.Popen(
            [self.drift, "guide", "--config", os.path.join(self.work, "guide.toml")],
            stdout=log, stderr=log, env=dict(os.environ, DRIFT_LOG="info"))
        self.wait(lambda s: True, 30, "the guide to answer")

    def add_node(self, nid, empty=False):
        d = os.path.join(self.work, nid)
        os.makedirs(os.path.join(d, "backing", "bench"), exist_ok=True)
        os.makedirs(os.path.join(d, "mnt"), exist_ok=True)
        port = self.nodes.get(nid, {}).get("port") or node_bench.free_port()
        host, guide = "127.0.0.1", self.guide_addr
        if nid in self.node_ns:
            host, guide = self.node_ns[nid]["inside"], f"{self.node_ns[nid]['outside']}:{self.guide_port}"
        passive = self.nodes.get(nid, {}).get("passive") or next_passive()
        with open(os.path.join(d, "service.toml"), "w") as f:
            f.write(f'listen = "{host}:{port}"\npassive_ports = [{passive}, {passive + 99}]\n')
        users = os.path.join(d, "users.toml")
        if not os.path.exists(users):
            subprocess.run([self.drift, "user", "add", "bench", "--users", users, "--home", "/bench",
                            "--perm", "list,read,write,delete,mkdir,rename"],
                           input=PASSWORD + "\n", text=True, capture_output=True, check=True)
        with open(os.path.join(d, "node.toml"), "w") as f:
            f.write('[storage]\nbacking = "backing"\nmountpoint = "mnt"\njournal = "journal.db"\n'
                    'commit_timeout_secs = 60\n[state]\nusers = "users.toml"\nservice = "service.toml"\n'
                    f'[cluster]\nguide = "{guide}"\nkey_file = "{self.key}"\nnode_id = "{nid}"\n'
                    f'advertise = "{host}:{port}"\nheartbeat_ms = 100\nack = "{self.ack}"\n')
        self.nodes[nid] = {"dir": d, "port": port, "passive": passive, "host": host, "backing": os.path.join(d, "backing")}

    def start_node(self, nid):
        d = self.nodes[nid]["dir"]
        log = open(os.path.join(d, "node.log"), "a")
        cmd = [self.drift, "node", "--config", os.path.join(d, "node.toml")]
        if nid in self.node_ns:
            cmd = ["ip", "netns", "exec", self.node_ns[nid]["ns"]] + cmd
        self.procs[nid] = subprocess.Popen(cmd, stdout=log, stderr=log,
                                           env=dict(os.environ, DRIFT_LOG=os.environ.get("BENCH_NODE_LOG", "info,libunftp=warn")))

    def kill(self, name):
        p = self.procs.pop(name, None)
        if p:
            p.kill()
            p.wait()
        if name in self.nodes:
            mnt = os.path.join(self.nodes[name]["dir"], "mnt")
            subprocess.run(["umount", "-l", mnt], capture_output=True)

    def status(self):
        out = subprocess.run([self.drift, "status", "--json", "--guide", self.guide_addr, "--key", self.key],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def wait(self, cond, limit, what):
        deadline = time.time() + limit
        while time.time() < deadline:
            s = self.status()
            if s is not None and cond(s):
                return s
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}; see the logs in {self.work}")

    def primary(self, limit=30):
        s = self.wait(lambda s: s["state"] == "serving" and s["primary"], limit, "a serving primary")
        return s["primary"]

    def ftp(self, nid):
        n = self.nodes[nid]
        return n["host"], n["port"]

    def migrate(self, to):
        return subprocess.run([self.drift, "migrate", "--to", to, "--reason", "bench",
                               "--guide", self.guide_addr, "--key", self.key], capture_output=True, text=True)

    def close(self):
        for name in [n for n in self.procs if n != "guide"] + ["guide"]:
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for n in self.nodes.values():
            subprocess.run(["umount", "-l", os.path.join(n["dir"], "mnt")], capture_output=True)


LAST_ERROR = {}


def try_write(host, port, name, data=b"x", timeout=2.0):
    """One login and a STOR; True on a 226 (the last refusal is kept in
    LAST_ERROR["write"])."""
    try:
        f = ftplib.FTP()
        f.connect(host, port, timeout=timeout)
        f.login("bench", PASSWORD)
        f.storbinary(f"STOR {name}", io.BytesIO(data))
        f.quit()
        return True
    except ftplib.all_errors as e:  # includes OSError
        LAST_ERROR["write"] = f"{host}:{port}: {e!r}"
        return False


def bench_failover(drift, work, trials):
    samples = []
    for t in range(trials):
        c = Cluster(drift, os.path.join(work, f"failover{t}"))
        try:
            old = c.primary()
            host, port = c.ftp(old)
            assert try_write(host, port, "warm"), "no write before the kill"
            others = [n for n in c.nodes if n != old]
            t0 = time.monotonic()
            c.kill(old)
            done = None
            while time.monotonic() - t0 < 30 and done is None:
                for n in others:
                    h, p = c.ftp(n)
                    if try_write(h, p, f"after{t}", timeout=0.5):
                        done = time.monotonic() - t0
                        break
                time.sleep(0.01)
            if done is None:
                raise SystemExit(f"trial {t}: no node took a write within 30 s")
            samples.append(done * 1000)
            print(f"  failover trial {t + 1}: {done * 1000:.0f} ms", flush=True)
        finally:
            c.close()
    print(f"failover (SIGKILL -> first login+STOR on the new primary): {dist(samples)}")
    return samples


def make_tree(root, files, total_bytes, seed=3):
    import random
    rnd = random.Random(seed)
    per = max(1, total_bytes // files)
    for i in range(files):
        d = os.path.join(root, f"d{i % 100:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(rnd.randbytes(per))


def upload_tree(host, port, src, remote="tree"):
    """lftp-free upload of a tree with curl --ftp-create-dirs, one file at a time would be slow: use
    ftplib with one session."""
    f = ftplib.FTP()
    f.connect(host, port, timeout=120)
    f.login("bench", PASSWORD)
    try:
        f.mkd(remote)
    except ftplib.error_perm:
        pass
    for d in sorted(os.listdir(src)):
        f.mkd(f"{remote}/{d}")
        for name in sorted(os.listdir(os.path.join(src, d))):
            with open(os.path.join(src, d, name), "rb") as fh:
                f.storbinary(f"STOR {remote}/{d}/{name}", fh)
    f.quit()


def bench_migrate(drift, work, trials, tree_mib):
    c = Cluster(drift, os.path.join(work, "migrate"))
    gaps, guide_ms = [], []
    try:
        p = c.primary()
        src = os.path.join(work, "migrate-src")
        make_tree(src, 1000, tree_mib << 20)
        upload_tree(*c.ftp(p), src)
        c.wait(lambda s: all(n["lag_entries"] == 0 for n in s["nodes"]), 600, "the tree to replicate")
        for t in range(trials):
            old = c.primary()
            target = [n for n in c.nodes if n != old][t % 2]
            import threading
            stamps = []
            stop = threading.Event()

            failures = []

            def writer():
                i = 0
                while not stop.is_set():
                    s = c.status()
                    who = s and s.get("primary")
                    if who and try_write(*c.ftp(who), f"m{t}-{i}", timeout=1.0):
                        stamps.append(time.monotonic())
                    else:
                        failures.append(LAST_ERROR.get("write") if who else "no primary in status")
                    i += 1
            th = threading.Thread(target=writer)
            th.start()
            time.sleep(1.0)
            r = c.migrate(target)
            time.sleep(1.0)
            stop.set()
            th.join()
            if r.returncode != 0:
                raise SystemExit(f"migrate failed: {r.stdout}{r.stderr}")
            if len(stamps) < 2:
                raise SystemExit(f"migrate trial {t + 1}: {len(stamps)} acknowledged writes; last failure: "
                                 f"{failures[-1] if failures else None}")
            gap = max(b - a for a, b in zip(stamps, stamps[1:])) * 1000
            gaps.append(gap)
            s = c.status()
            guide_ms.append(s["migrations"][-1]["duration_ms"])
            print(f"  migrate trial {t + 1}: {old} -> {target}: longest gap between acknowledged writes "
                  f"{gap:.0f} ms, guide's duration {guide_ms[-1]} ms {s['migrations'][-1].get('phases')}", flush=True)
    finally:
        c.close()
    print(f"migrate switch with {tree_mib} MiB replicated: client gap {dist(gaps)}; guide {dist(guide_ms)}")


def bench_ack(drift, work, size_mib):
    src = os.path.join(work, "big.bin")
    with open(src, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    small = os.path.join(work, "small")
    os.makedirs(small, exist_ok=True)
    for i in range(1000):
        with open(os.path.join(small, f"s{i:04d}"), "wb") as f:
            f.write(os.urandom(4096 + i))
    results = {}
    setups = [("standalone", None), ("ack=local", "local"), ("ack=guide", "guide")]
    for label, ack in setups:
        if ack is None:
            proc, url, creds, landing = node_bench.drift_node(drift, os.path.join(work, "standalone"), "n", True, "false", 41000)
            host, port = "127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))
            closer = lambda: node_bench.stop(proc)  # noqa: E731
        else:
            c = Cluster(drift, os.path.join(work, f"ack-{ack}"), nodes=2, ack=ack)
            p = c.primary()
            host, port = c.ftp(p)
            closer = c.close
        try:
            node_bench.settle()
            t0 = time.monotonic()
            node_bench.curl(["-T", src, f"ftp://{host}:{port}/big.bin", "--user", f"bench:{PASSWORD}"])
            big = time.monotonic() - t0
            f = ftplib.FTP()
            f.connect(host, port, timeout=60)
            f.login("bench", PASSWORD)
            t0 = time.monotonic()
            for name in sorted(os.listdir(small)):
                with open(os.path.join(small, name), "rb") as fh:
                    f.storbinary(f"STOR {name}", fh)
            smalls = time.monotonic() - t0
            f.quit()
            results[label] = (size_mib / big, 1000 / smalls)
            print(f"  {label:<11} 1 GiB upload {size_mib / big:7.1f} MiB/s   1,000 small uploads {1000 / smalls:7.1f} files/s", flush=True)
        finally:
            closer()
    base = results["standalone"]
    for label, (b, s) in results.items():
        print(f"ack cost: {label:<11} {b / base[0]:.2f}x standalone on the big file, {s / base[1]:.2f}x on small files")


def bench_lag(drift, work, seconds):
    c = Cluster(drift, os.path.join(work, "lag"), nodes=2)
    try:
        p = c.primary()
        host, port = c.ftp(p)
        import threading
        stop = threading.Event()

        def uploader():
            f = ftplib.FTP()
            f.connect(host, port, timeout=60)
            f.login("bench", PASSWORD)
            i = 0
            while not stop.is_set():
                f.storbinary(f"STOR lag{i}", io.BytesIO(os.urandom(65536)))
                i += 1
            f.quit()
        th = threading.Thread(target=uploader)
        th.start()
        ent, ms = [], []
        t0 = time.time()
        while time.time() - t0 < seconds:
            s = c.status()
            if s:
                for n in s["nodes"]:
                    if n["role"] == "backup":
                        ent.append(n["lag_entries"])
                        ms.append(n.get("lag_ms") or 0)
            time.sleep(0.1)
        stop.set()
        th.join()
        print(f"replication lag under continuous 64 KiB uploads: entries median {statistics.median(ent):.0f} "
              f"p99 {pct(ent, 99):.0f}; ms median {statistics.median(ms):.0f} p99 {pct(ms, 99):.0f} (n={len(ent)})")
    finally:
        c.close()


def bench_wire(drift, work):
    ns = f"driftbench{os.getpid()}"
    host_if, ns_if = f"dbh{os.getpid() % 10000}", f"dbn{os.getpid() % 10000}"
    sh = lambda *a: subprocess.run(list(a), check=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", "10.78.1.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", "10.78.1.2/24", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        c = Cluster(drift, os.path.join(work, "wire"), nodes=1,
                    node_ns={"n1": {"ns": ns, "inside": "10.78.1.2", "outside": "10.78.1.1"}})
        try:
            p = c.primary()
            src = os.path.join(work, "wire-src")
            make_tree(src, 10000, 10000 * 2048)
            upload_tree(*c.ftp(p), src)
            c.wait(lambda s: s["history_seq"] > 10000, 600, "the tree to reach the guide")
            time.sleep(2)

            def tx():
                with open(f"/sys/class/net/{host_if}/statistics/rx_bytes") as f:
                    return int(f.read())
            before = tx()
            f = ftplib.FTP()
            f.connect(*c.ftp(p), timeout=60)
            f.login("bench", PASSWORD)
            f.storbinary("STOR tree/d000/f00000.bin", io.BytesIO(os.urandom(1 << 20)))
            f.quit()
            seq = c.status()["history_seq"]
            c.wait(lambda s: s["history_seq"] >= seq, 60, "the change to reach the guide")
            time.sleep(1)
            after = tx()
            heartbeat = 0
            t0 = tx()
            time.sleep(3)
            heartbeat = (tx() - t0) / 3
            used = after - before
            print(f"bytes on the wire for one changed 1 MiB file in a 10,000-file tree: {used} "
                  f"({used / (1 << 20):.3f}x the file; heartbeats alone {heartbeat:.0f} B/s)")
        finally:
            c.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def bench_catchup(drift, work, tree_mib):
    c = Cluster(drift, os.path.join(work, "catchup"), nodes=1)
    try:
        p = c.primary()
        src = os.path.join(work, "catchup-src")
        make_tree(src, 10000, tree_mib << 20)
        upload_tree(*c.ftp(p), src)
        head = c.wait(lambda s: s["history_seq"] > 10000, 900, "the tree to reach the guide")["history_seq"]
        c.add_node("n9")
        node_bench.settle()
        t0 = time.monotonic()
        c.start_node("n9")
        c.wait(lambda s: any(n["id"] == "n9" and n["applied_seq"] >= head and n["role"] == "backup" for n in s["nodes"]),
               1800, "n9 to catch up")
        drift_s = time.monotonic() - t0
        dst = os.path.join(work, "rsync-dst")
        node_bench.settle()
        t0 = time.monotonic()
        subprocess.run(["rsync", "-a", src + "/", dst + "/"], check=True)
        rsync_s = time.monotonic() - t0
        print(f"catch-up of an empty node ({tree_mib} MiB, 10,000 files): drift {drift_s:.1f} s, "
              f"rsync -a {rsync_s:.1f} s ({rsync_s / drift_s:.2f}x rsync's speed; drift includes node start and mount)")
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="failover,migrate,ack,lag,wire,catchup")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--tree-mib", type=int, default=1024)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--lag-secs", type=int, default=20)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    drift = node_bench.drift_binary(args.no_build)
    work = args.dir or tempfile.mkdtemp(prefix="drift-cluster-bench-", dir="/var/tmp")
    only = set(args.only.split(","))
    print(f"drift {drift}, scratch {work}")
    try:
        if "failover" in only:
            bench_failover(drift, work, args.trials)
        if "migrate" in only:
            bench_migrate(drift, work, args.trials, args.tree_mib)
        if "ack" in only:
            bench_ack(drift, work, args.size_mib)
        if "lag" in only:
            bench_lag(drift, work, args.lag_secs)
        if "wire" in only:
            bench_wire(drift, work)
        if "catchup" in only:
            bench_catchup(drift, work, args.tree_mib)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
