#!/usr/bin/env bash
# drift xfer against a local copy, rsync (daemon mode) and curl → vsftpd,
# on loopback, in one run; then drift xfer across two network namespaces
# joined by a veth pair, over a shaped link (default 1 Gbit/s and 20 ms
# each way), with 1 to 10 streams. Where the kernel has netem the veth ends
# are shaped with tc netem and carry the transfers. Where it has not
# (CONFIG_NET_SCH_NETEM unset: tc cannot add delay) bench/linkem, a
# user-space link emulator, forwards the transfers between a TUN device in
# each namespace with the same rate and delay, behind a drop-tail queue of
# one bandwidth-delay product; the veth pair then stays the plain,
# unshaped path between the namespaces (its ping is the base RTT).
#
#   sudo bench/xfer.sh                 # everything
#   RUNS=5 sudo bench/xfer.sh          # more repetitions (median is printed)
#   SKIP_NETEM=1 bench/xfer.sh         # loopback only
#   ONLY_SHAPED=1 sudo bench/xfer.sh   # the shaped link only
#   NETEM="rate 1gbit delay 20ms" ...  # the shaping of each direction
#                                      # (linkem takes only rate and delay)
#   SHAPED_STREAMS="1 2 4 8 10" ...    # the stream counts of the shaped run
#   NETEM_SIZE_MB=256 ...              # the file sent over the shaped link
#   LINKEM_MTU=9000 LINKEM_LIMIT=bdp   # linkem's TUN MTU and queue bound
#   SHAPED_TCP_RMEM="4096 131072 4194304" SHAPED_TCP_WMEM=...
#                                      # TCP buffer sysctls set inside both
#                                      # namespaces (default: inherited)
#   BENCH_DIR=/dev/shm ...             # where data and destinations live
#                                      # (default /var/tmp: the disk)
#   SETTLE=3 ...                       # seconds of quiet before each timing
#   TREE_SETTLE=65 ...                 # the same for the tree runs only (default
#                                      # SETTLE); see "Inode reuse" below
#
# Fairness: every timed run (every tool) starts from an empty destination
# after the previous run's files were deleted, `sync` ran and SETTLE
# seconds passed, so no run pays for another's writeback or deletion (on a
# filesystem mounted with `discard` a delete issues discards). Tools are
# interleaved run by run (cp, drift, rsync, ftp, cp, drift, ...) so a burst
# of load from others on the machine hits all of them alike. The local
# limit is `cp --reflink=never` (a plain read/write copy; a bare `cp` may
# clone the file on this filesystem and copy nothing).
#
# Needs root (namespaces, vsftpd), rsync, vsftpd, curl, iproute2 (ping,
# if installed, shows the shaped link's RTT).
# All traffic stays on 127.0.0.1 or inside the namespaces it creates; the
# namespaces, daemons and temp data are removed on exit.
set -euo pipefail

RUNS=${RUNS:-3}
NETEM=${NETEM:-rate 1gbit delay 20ms}
NETEM_SIZE_MB=${NETEM_SIZE_MB:-256}
SHAPED_STREAMS=${SHAPED_STREAMS:-1 2 4 8 10}
SHAPED_TIMEOUT=${SHAPED_TIMEOUT:-300}
LINKEM_MTU=${LINKEM_MTU:-9000}
LINKEM_LIMIT=${LINKEM_LIMIT:-bdp}
TREE_FILES=${TREE_FILES:-10000}
STREAMS=${STREAMS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-xfer}

echo "== building release"
(cd "$here" && cargo build --release --quiet -p drift -p drift-linkem)
drift="$CARGO_TARGET_DIR/release/drift"
linkem="$CARGO_TARGET_DIR/release/linkem"

SETTLE=${SETTLE:-3}
# Inode reuse: ext4 without a journal (this machine's root) avoids reusing
# inodes freed in the last 60 s and scans past them on every create, so a
# tree written a few seconds after the previous run's tree was deleted pays
# for that deletion (each tool for its own, but not alike). TREE_SETTLE=65
# lets the tree runs start clean; the default keeps SETTLE.
TREE_SETTLE=${TREE_SETTLE:-$SETTLE}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/drift-xfer-bench.XXXXXX")
pids=()
ns1=dxb1-$$
ns2=dxb2-$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns1" 2>/dev/null || true
  ip netns del "$ns2" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# wait_port PORT: bounded wait for a listener on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}

# --- shaped link: two namespaces --------------------------------------------
# $ns1 and $ns2 are joined by a veth pair, 10.203.0.1 - 10.203.0.2. With netem
# its ends are shaped and carry the transfers. Without netem the transfers go
# to 10.203.1.2 over TUN devices (10.203.1.1 - 10.203.1.2) forwarded by
# linkem, and the veth pair stays unshaped.
shaped() {
  echo
  echo "== shaped link: $ns1 <-> $ns2, ${NETEM_SIZE_MB} MiB file"
  ip netns add "$ns1"; ip netns add "$ns2"
  ip link add dxb-a-$$ netns "$ns1" type veth peer name dxb-b-$$ netns "$ns2"
  ip -n "$ns1" addr add 10.203.0.1/30 dev dxb-a-$$
  ip -n "$ns2" addr add 10.203.0.2/30 dev dxb-b-$$
  ip -n "$ns1" link set dxb-a-$$ up; ip -n "$ns1" link set lo up
  ip -n "$ns2" link set dxb-b-$$ up; ip -n "$ns2" link set lo up
  local ns target=10.203.0.2 linkem_pid=
  for ns in "$ns1" "$ns2"; do
    [[ -z "${SHAPED_TCP_RMEM:-}" ]] || ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_rmem="$SHAPED_TCP_RMEM"
    [[ -z "${SHAPED_TCP_WMEM:-}" ]] || ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_wmem="$SHAPED_TCP_WMEM"
  done
  # netem's own queue must hold a bandwidth-delay product (1 Gbit/s * 20 ms
  # = 2.5 MB, ~1700 packets); the default limit of 1000 would drop.
  if ip netns exec "$ns1" tc qdisc add dev dxb-a-$$ root netem $NETEM limit 100000 2>/dev/null; then
    ip netns exec "$ns2" tc qdisc add dev dxb-b-$$ root netem $NETEM limit 100000
    echo "shaping: netem $NETEM on both veth ends"
  else
    # No netem in this kernel: emulate the link in user space.
    local rate=0 delay=0 w
    local -a words=($NETEM)
    for ((w = 0; w < ${#words[@]}; w += 2)); do
      case ${words[w]} in
        rate) rate=${words[w + 1]} ;;
        delay) delay=${words[w + 1]} ;;
        *) echo "netem is not available and linkem takes only rate and delay, not '${words[w]}'" >&2; return 1 ;;
      esac
    done
    ip -n "$ns1" tuntap add dev dxl-a-$$ mode tun
    ip -n "$ns2" tuntap add dev dxl-b-$$ mode tun
    ip -n "$ns1" link set dxl-a-$$ mtu "$LINKEM_MTU" up
    ip -n "$ns2" link set dxl-b-$$ mtu "$LINKEM_MTU" up
    ip -n "$ns1" addr add 10.203.1.1 peer 10.203.1.2 dev dxl-a-$$
    ip -n "$ns2" addr add 10.203.1.2 peer 10.203.1.1 dev dxl-b-$$
    "$linkem" -a "$ns1:dxl-a-$$" -b "$ns2:dxl-b-$$" --delay "$delay" --rate "$rate" \
      --limit "$LINKEM_LIMIT" >"$work/linkem.out" 2>"$work/linkem.err" &
    linkem_pid=$!
    pids+=($linkem_pid)
    for _ in $(seq 100); do
      [[ -s "$work/linkem.out" ]] && break
      kill -0 "$linkem_pid" 2>/dev/null || break
      sleep 0.05
    done
    [[ -s "$work/linkem.out" ]] || { cat "$work/linkem.err" >&2; echo "linkem did not start" >&2; return 1; }
    echo "shaping: netem is not available in this kernel; user-space link emulator:"
    echo "  $(cat "$work/linkem.out")"
    echo "  transfers over the TUN pair 10.203.1.1 -> 10.203.1.2; the veth pair is unshaped"
    target=10.203.1.2
  fi
  echo "TCP in the namespaces: $(ip netns exec "$ns1" sysctl -n net.ipv4.tcp_congestion_control)," \
    "tcp_rmem $(ip netns exec "$ns1" sysctl -n net.ipv4.tcp_rmem | tr '\t' ' ')," \
    "tcp_wmem $(ip netns exec "$ns1" sysctl -n net.ipv4.tcp_wmem | tr '\t' ' ')"
  if command -v ping >/dev/null; then
    [[ $target == 10.203.0.2 ]] ||
      echo "ping veth 10.203.0.2:   $(ip netns exec "$ns1" ping -q -c 5 -i 0.2 -W 2 10.203.0.2 | tail -1)"
    echo "ping shaped $target: $(ip netns exec "$ns1" ping -q -c 5 -i 0.2 -W 2 "$target" | tail -1)"
  fi

  [[ -f "$work/key" ]] || "$drift" xfer keygen "$work/key" >/dev/null
  mkdir -p "$work/src"
  if [[ -f "$work/src/big.bin" ]]; then
    head -c $((NETEM_SIZE_MB << 20)) "$work/src/big.bin" > "$work/src/net.bin"
  else
    head -c $((NETEM_SIZE_MB << 20)) /dev/urandom > "$work/src/net.bin"
  fi
  local net_bytes; net_bytes=$(stat -c %s "$work/src/net.bin")
  mkdir -p "$work/dst/net"
  ip netns exec "$ns2" "$drift" xfer recv --listen $target:7070 --key "$work/key" \
    --dir "$work/dst/net" --log warn >"$work/recv-net.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    ip netns exec "$ns1" bash -c "exec 3<>/dev/tcp/$target/7070" 2>/dev/null && break
    sleep 0.05
  done
  # Stream counts interleaved run by run (1, 2, 4, ..., 1, 2, 4, ...).
  local -A t=()
  local n a b
  for _ in $(seq "$RUNS"); do
    for n in $SHAPED_STREAMS; do
      rm -rf "$work/dst/net"/*; sync; sleep "$SETTLE"
      a=$(now)
      timeout "$SHAPED_TIMEOUT" ip netns exec "$ns1" "$drift" --log warn xfer send --to $target:7070 \
        --key "$work/key" --streams "$n" "$work/src/net.bin" >/dev/null ||
        { echo "send with $n streams failed or took over ${SHAPED_TIMEOUT}s" >&2; return 1; }
      b=$(now)
      t[$n]+=" $(echo "$b - $a" | bc -l)"
    done
  done
  cmp -s "$work/src/net.bin" "$work/dst/net/net.bin" || { echo "the shaped transfer delivered a different file!" >&2; return 1; }
  local -A med=()
  for n in $SHAPED_STREAMS; do
    med[$n]=$(printf '%s\n' ${t[$n]} | median)
  done
  local first=${SHAPED_STREAMS%% *}
  for n in $SHAPED_STREAMS; do
    printf 'streams %-2s median %7.3f s  %7.1f Mbit/s  %5.2fx of %s stream(s)   runs:%s\n' "$n" "${med[$n]}" \
      "$(echo "$net_bytes * 8 / ${med[$n]} / 1000000" | bc -l)" \
      "$(echo "${med[$first]} / ${med[$n]}" | bc -l)" "$first" "${t[$n]}"
  done
  if [[ -n $linkem_pid ]]; then
    kill "$linkem_pid"; wait "$linkem_pid" || true
    sed 's/^/  /' "$work/linkem.err"
  fi
}

if [[ -n "${ONLY_SHAPED:-}" ]]; then
  [[ -z "${SKIP_NETEM:-}" ]] || { echo "ONLY_SHAPED and SKIP_NETEM leave nothing to run" >&2; exit 1; }
  shaped
  exit 0
fi

echo "== generating data in $work"
mkdir -p "$work/src/tree" "$work/dst"
head -c $((1 << 30)) /dev/urandom > "$work/src/big.bin"
# 10,000 files, sizes log-uniform between 4 KiB and 1 MiB, in 100 directories.
python3 - "$work/src/tree" "$TREE_FILES" <<'EOF'
import math, os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
blob = os.urandom(1 << 20)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    size = int(math.exp(rng.uniform(math.log(4096), math.log(1 << 20))))
    off = rng.randrange(0, (1 << 20) - size + 1)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(blob[off:off + size])
        f.write(i.to_bytes(8, "little"))  # no two files alike
EOF
tree_bytes=$(du -sb "$work/src/tree" | cut -f1)
big_bytes=$(stat -c %s "$work/src/big.bin")
echo "big.bin: $big_bytes bytes; tree: $TREE_FILES files, $tree_bytes bytes"
src_tree_digest=$("$drift" digest "$work/src/tree")
sync

# --- servers ---------------------------------------------------------------
"$drift" xfer keygen "$work/key" >/dev/null
xport=$(free_port)
mkdir -p "$work/dst/drift"
"$drift" xfer recv --listen 127.0.0.1:$xport --key "$work/key" --dir "$work/dst/drift" \
  --log warn >"$work/recv.log" 2>&1 &
pids+=($!)

rport=$(free_port)
mkdir -p "$work/dst/rsync"
cat >"$work/rsyncd.conf" <<EOF
pid file = $work/rsyncd.pid
use chroot = no
[dst]
  path = $work/dst/rsync
  read only = no
  uid = root
  gid = root
EOF
rsync --daemon --no-detach --address=127.0.0.1 --port=$rport --config="$work/rsyncd.conf" &
pids+=($!)

fport=$(free_port)
mkdir -p "$work/ftproot/up"
chown ftp:ftp "$work/ftproot/up"
chmod 555 "$work/ftproot"
cat >"$work/vsftpd.conf" <<EOF
listen=YES
listen_address=127.0.0.1
listen_port=$fport
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=$work/ftproot
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=YES
anon_other_write_enable=YES
anon_umask=022
local_enable=NO
seccomp_sandbox=NO
pasv_enable=YES
pasv_address=127.0.0.1
xferlog_enable=NO
max_per_ip=0
EOF
vsftpd "$work/vsftpd.conf" &
pids+=($!)
wait_port "$xport"; wait_port "$rport"; wait_port "$fport"

# --- one timed run per tool ------------------------------------------------
# Each run starts from an empty destination; the page cache is left warm
# for the source (all tools read the same cached data) and writes are not
# fsynced (none of the tools fsyncs by default).
clear_dst() { # clear_dst TOOL [SECONDS]
  rm -rf "$work/dst/$1"/* "$work/ftproot/up"/* 2>/dev/null || true
  sync; sleep "${2:-$SETTLE}"
}

run_cp()     { cp -r --reflink=never "$1" "$work/dst/cp/"; }
run_drift()  { "$drift" --log warn xfer send --to 127.0.0.1:$xport --key "$work/key" --streams "$STREAMS" "$1" >/dev/null; }
run_rsync()  { rsync -a --whole-file "$1" rsync://127.0.0.1:$rport/dst/; }
run_ftp() {
  # One curl process for all files, reusing its control connection.
  local base; base=$(dirname "$1")
  (cd "$base" && find "$(basename "$1")" -type f | sort | while read -r f; do
     printf 'upload-file = "%s"\nurl = "ftp://127.0.0.1:%s/up/%s"\n' "$f" "$fport" "$f"
   done) >"$work/curl.cfg"
  (cd "$base" && curl -sS --ftp-create-dirs --ftp-pasv -K "$work/curl.cfg")
}

declare -A result times
tools=(cp drift rsync ftp)
bench() { # bench NAME SRC BYTES SETTLE: RUNS rounds, each tool once per round
  local name=$1 src=$2 bytes=$3 settle=$4 tool
  for _ in $(seq "$RUNS"); do
    for tool in "${tools[@]}"; do
      mkdir -p "$work/dst/cp"
      clear_dst "$tool" "$settle"
      local a b; a=$(now); "run_$tool" "$src"; b=$(now)
      times[$name.$tool]+=" $(echo "$b - $a" | bc -l)"
    done
  done
  for tool in "${tools[@]}"; do
    local med; med=$(printf '%s\n' ${times[$name.$tool]} | median)
    result[$name.$tool]=$med
    printf '%-6s %-6s median %7.3f s  %8.1f MB/s   runs:%s\n' "$name" "$tool" "$med" \
      "$(echo "$bytes / $med / 1000000" | bc -l)" "${times[$name.$tool]}"
  done
}

echo "== loopback into $work ($(stat -f -c %T "$work")), $RUNS runs each, drift with $STREAMS streams, sync + ${SETTLE}s (tree: ${TREE_SETTLE}s) before each run"
echo "   (cp = cp --reflink=never, the local limit)"
bench big "$work/src/big.bin" "$big_bytes" "$SETTLE"
bench tree "$work/src/tree" "$tree_bytes" "$TREE_SETTLE"

# The last drift tree run must have delivered the same tree.
clear_dst drift; run_drift "$work/src/tree"
got=$("$drift" digest "$work/dst/drift/tree")
[[ "$got" == "$src_tree_digest" ]] || { echo "drift tree digest differs!" >&2; exit 1; }
echo "drift tree digest matches the source: $got"

echo
echo "== ratios (time of X / time of drift xfer; >1 means drift is faster)"
for name in big tree; do
  for tool in cp rsync ftp; do
    printf '%-5s %-6s %6.2f\n' "$name" "$tool" "$(echo "${result[$name.$tool]} / ${result[$name.drift]}" | bc -l)"
  done
done

if [[ -z "${SKIP_NETEM:-}" ]]; then shaped; fi
