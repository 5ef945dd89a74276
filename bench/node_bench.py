#!/usr/bin/env python3
"""Upload and download of one large file with curl against three FTP servers,
in one run, on this machine:

  (a) drift node      -- libunftp over the drift-fs FUSE mount (journaled)
  (b) drift node      -- the same server code over the plain backing directory
                         ([storage] fuse = false: no FUSE, no journal)
  (c) vsftpd (Debian) -- anonymous upload into a directory on the same disk

Each server gets REPS uploads (curl -T from a page-cached source file) and
REPS downloads (curl -o /dev/null), interleaved a, b, c, a, b, c, ... Prints per-run figures, medians in MiB/s
and the ratios the issue asks for: (a)/(b) >= 0.8 and (a)/(c) >= 1, judged on
the data transfer (curl's total time minus its time_pretransfer); the whole
command, login included, is printed too. Logins differ on purpose: drift
verifies an argon2 password hash (about 15 ms here), the bench's vsftpd
takes anonymous logins.

Usage: bench/node_bench.py [--size-mib 1024] [--reps 3] [--no-build]
                           [--fsync-uploads true|false] [--dir /tmp/...]
Needs: root (FUSE mount), curl, vsftpd. Traffic stays on 127.0.0.1.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


def stop(proc, limit=30.0):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def curl(args):
    """Runs one curl transfer; returns (seconds before the transfer began,
    total seconds). The first part is connecting, logging in (drift checks
    an argon2 password hash, the bench's vsftpd takes anonymous logins),
    opening the file and setting up the data connection."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "--max-time", "600", "-w", "%{time_pretransfer} %{time_total}"] + args,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"curl {args} failed: {out.stderr}")
    pre, total = (float(x) for x in out.stdout.split())
    return pre, total


def drift_node(drift, work, name, fuse, fsync, passive):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "backing", "bench"))
    os.makedirs(os.path.join(d, "mnt"))
    port = free_port()
    with open(os.path.join(d, "service.toml"), "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\npassive_ports = [{passive}, {passive + 99}]\n')
    p = subprocess.run(
        [drift, "user", "add", "bench", "--users", os.path.join(d, "users.toml"),
         "--home", "/bench", "--perm", "list,read,write,delete,mkdir,rename"],
        input="bench-pw-12\n", text=True, capture_output=True,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    storage = (
        'backing = "backing"\nmountpoint = "mnt"\njournal = "journal.db"\n'
        if fuse else 'backing = "backing"\nfuse = false\n'
    )
    with open(os.path.join(d, "node.toml"), "w") as f:
        f.write(f"[storage]\n{storage}fsync_uploads = {fsync}\n"
                '[state]\nusers = "users.toml"\nservice = "service.toml"\n')
    log = open(os.path.join(d, "node.log"), "w")
    proc = subprocess.Popen([drift, "node", "--config", os.path.join(d, "node.toml")],
                            stderr=log, stdout=log, env=dict(os.environ, DRIFT_LOG="warn"))
    wait_port(port, proc)
    return proc, f"ftp://127.0.0.1:{port}/", ["--user", "bench:bench-pw-12"], os.path.join(d, "backing", "bench")


def vsftpd(work, passive):
    d = os.path.join(work, "vsftpd")
    root = os.path.join(d, "root")
    os.makedirs(os.path.join(root, "up"))
    shutil.chown(os.path.join(root, "up"), "ftp", "ftp")
    os.chmod(root, 0o755)
    port = free_port()
    conf = os.path.join(d, "vsftpd.conf")
    with open(conf, "w") as f:
        f.write(f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
anon_mkdir_write_enable=YES
anon_umask=022
anon_root={root}
no_anon_password=YES
pasv_enable=YES
pasv_min_port={passive}
pasv_max_port={passive + 99}
secure_chroot_dir=/var/run/vsftpd/empty
xferlog_enable=NO
seccomp_sandbox=NO
""")
    proc = subprocess.Popen(["vsftpd", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"ftp://127.0.0.1:{port}/up/", ["--user", "anonymous:bench"], os.path.join(root, "up")


def one_round(label, server, src, size, i, runs):
    """One upload and one download; appends (upload, download) rates in
    MiB/s to runs["transfer"] (data phase: total minus the time before the
    transfer began, so the upload's 226 wait for the journal is included)
    and runs["whole"] (the whole curl command)."""
    proc, url, auth, landing = server
    name = f"big{i}.bin"
    up = curl(auth + ["-T", src, url + name])
    got = os.path.getsize(os.path.join(landing, name))
    if got != size:
        raise SystemExit(f"{label}: uploaded {got} bytes, expected {size}")
    down = curl(auth + ["-o", "/dev/null", url + name])
    rate = lambda secs: size / secs / 2**20
    runs["transfer"].append((rate(up[1] - up[0]), rate(down[1] - down[0])))
    runs["whole"].append((rate(up[1]), rate(down[1])))
    (tu, td), (wu, wd) = runs["transfer"][-1], runs["whole"][-1]
    print(f"  {label:<22} run {i + 1}: upload {tu:8.1f} MiB/s ({wu:8.1f} whole)   "
          f"download {td:8.1f} MiB/s ({wd:8.1f} whole)   login+setup {up[0] * 1000:.0f}/{down[0] * 1000:.0f} ms", flush=True)
    os.remove(os.path.join(landing, name))
    settle()


def settle():
    """Lets the deletion just made finish before the next timing. On this
    disk (ext4 with `discard`) freeing 1 GiB takes a while, and for a file
    written through the FUSE mount the kernel frees it only when it evicts
    the inode that holds the passthrough backing file: unsettled, one
    server's deletion lands in the next server's upload."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass
    time.sleep(1)
    os.sync()


def drift_binary(no_build):
    """The release binary, built first unless --no-build."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "drift"], cwd=ROOT, check=True)
    return os.path.join(target, "release", "drift")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--fsync-uploads", default="false", choices=["true", "false"])
    ap.add_argument("--dir", default=None, help="scratch directory (default: a new one under /tmp)")
    args = ap.parse_args()

    drift = drift_binary(args.no_build)

    work = args.dir or tempfile.mkdtemp(prefix="drift-node-bench-")
    os.makedirs(work, exist_ok=True)
    size = args.size_mib * 2**20
    src = os.path.join(work, "source.bin")
    with open(src, "wb") as f:
        chunk = os.urandom(2**20)
        for i in range(args.size_mib):
            f.write(chunk[i % 256:] + chunk[:i % 256])
    print(f"file: {args.size_mib} MiB, {args.reps} runs per server, fsync_uploads = {args.fsync_uploads}, "
          f"{os.cpu_count()} CPUs, kernel {os.uname().release}, load average {os.getloadavg()}", flush=True)

    labels = {"a": "(a) drift node, FUSE", "b": "(b) drift node, plain", "c": "(c) vsftpd"}
    servers = {}
    runs = {k: {"transfer": [], "whole": []} for k in labels}
    try:
        servers["a"] = drift_node(drift, work, "a", True, args.fsync_uploads, 31000)
        servers["b"] = drift_node(drift, work, "b", False, args.fsync_uploads, 31200)
        servers["c"] = vsftpd(work, 31400)
        # Interleaved, so that load from other processes on the machine
        # spreads over all three servers instead of hitting one.
        for i in range(args.reps):
            for k in labels:
                one_round(labels[k], servers[k], src, size, i, runs[k])
    finally:
        for server in servers.values():
            stop(server[0])
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    def medians(kind):
        return {k: tuple(statistics.median(r[j] for r in v[kind]) for j in (0, 1)) for k, v in runs.items()}

    def table(title, res, targets):
        print(f"\n{title}")
        print("  medians (MiB/s)             upload   download")
        for k, label in [("a", "(a) drift node, FUSE"), ("b", "(b) drift node, plain dir"), ("c", "(c) vsftpd")]:
            print(f"  {label:<25} {res[k][0]:8.1f}   {res[k][1]:8.1f}")
        ab = (res["a"][0] / res["b"][0], res["a"][1] / res["b"][1])
        ac = (res["a"][0] / res["c"][0], res["a"][1] / res["c"][1])
        print(f"  (a)/(b)                   {ab[0]:8.2f}   {ab[1]:8.2f}" + ("   target >= 0.80" if targets else ""))
        print(f"  (a)/(c)                   {ac[0]:8.2f}   {ac[1]:8.2f}" + ("   target >= 1.00" if targets else ""))
        return min(ab) >= 0.8 and min(ac) >= 1.0

    ok = table("data transfer (what the targets are judged on)", medians("transfer"), True)
    table("whole curl command, for reference (includes login: drift checks an argon2 hash, vsftpd is anonymous)",
          medians("whole"), False)
    print(f"load average at end: {os.getloadavg()}")
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
