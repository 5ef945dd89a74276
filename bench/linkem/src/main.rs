//! linkem: a user-space link emulator between two TUN devices, for kernels
//! without netem. See `linkem --help`.

mod link;
mod tun;
mod units;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use link::{Packet, Shape, Stats};
use std::io::Write;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tun::DevSpec;
use units::Limit;

const ABOUT: &str = "Emulates a network link (delay, rate, bounded queue) between two TUN devices, in user space";

const LONG_ABOUT: &str = "\
Emulates a network link (one-way delay, rate limit, bounded drop-tail queue) \
between two TUN devices, in user space, for kernels built without netem \
(CONFIG_NET_SCH_NETEM), which cannot add delay with tc. bench/xfer.sh uses \
it to put a long fat pipe between two network namespaces.

Every IP packet read from one device is written to the other, in both \
directions: it first waits in a queue in front of the rate limit (dropped \
when the queue is at --limit, like netem's limit), is serialized at --rate, \
then travels --delay before it is written out. Packets keep their order in \
each direction; the threads sleep until a packet is due and never spin. \
The round-trip time added is 2 × delay plus serialization.

The devices must exist and are configured by the caller; linkem only \
attaches to them (IFF_TUN | IFF_NO_PI). A large MTU (e.g. 9000 or 16000) \
keeps the packet rate, and so linkem's CPU, low at gigabit rates. Example:

  ip netns add n1; ip netns add n2
  ip -n n1 tuntap add dev lk mode tun; ip -n n2 tuntap add dev lk mode tun
  ip -n n1 link set lk mtu 9000 up; ip -n n2 link set lk mtu 9000 up
  ip -n n1 addr add 10.9.0.1 peer 10.9.0.2 dev lk
  ip -n n2 addr add 10.9.0.2 peer 10.9.0.1 dev lk
  linkem -a n1:lk -b n2:lk --delay 20ms --rate 1gbit --limit 4mb &
  ip netns exec n1 ping 10.9.0.2      # about 40 ms

Runs until SIGTERM, SIGINT or SIGHUP, then prints its counters to stderr.";

#[derive(Parser, Debug)]
#[command(name = "linkem", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// One end: [NETNS:]DEV, an existing TUN device DEV in network namespace
    /// NETNS (a name under /run/netns, or a path such as /proc/PID/ns/net);
    /// without NETNS, in linkem's own namespace.
    #[arg(short = 'a', long = "a", value_name = "[NETNS:]DEV")]
    a: DevSpec,
    /// The other end, like -a.
    #[arg(short = 'b', long = "b", value_name = "[NETNS:]DEV")]
    b: DevSpec,
    /// One-way delay added in each direction (ns, us, ms, s).
    #[arg(long, default_value = "20ms", value_parser = units::parse_duration)]
    delay: Duration,
    /// Rate of each direction: bit, kbit, mbit, gbit (bits/s) or bps, kbps,
    /// mbps, gbps (bytes/s), counting IP packet bytes; 0: unlimited.
    #[arg(long, default_value = "1gbit", value_parser = units::parse_rate)]
    rate: u64,
    /// Bound of the queue in front of the rate limit, per direction: a
    /// packet count (1000, 1000p), bytes (4mb, 512kb, 9000b; k, m = 1024),
    /// or `bdp`: one bandwidth-delay product, rate × 2 × delay, in bytes (a
    /// classic router buffer size; at least 256 KiB). A packet that finds it
    /// full is dropped.
    #[arg(long, default_value = "1000", value_parser = units::parse_limit)]
    limit: Limit,
    /// At most this many packets on each direction's delay line (after the
    /// queue); more are dropped. Only a memory bound: a link's delay line
    /// holds rate × delay.
    #[arg(long, default_value_t = 1 << 18, value_name = "PACKETS")]
    line_packets: usize,
    /// Also print the counters every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats: Option<u64>,
}

enum Event {
    Signal(i32),
    Failed(&'static str, anyhow::Error),
}

/// Blocks the termination signals in this thread (and so in every thread
/// spawned after) and returns them, to be taken with sigwait.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("pthread_sigmask");
        }
        Ok(set)
    }
}

fn spawn<F>(name: &str, f: F) -> Result<()>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .with_context(|| format!("spawning thread {name}"))?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let signals = block_signals()?;
    // Sleep to the microsecond rather than the default 50 us timer slack
    // (inherited by the threads spawned below).
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };

    let a = tun::attach(&args.a)?;
    let b = tun::attach(&args.b)?;
    let limit = match args.limit {
        Limit::Bdp if args.rate == 0 => return Err(anyhow!("--limit bdp needs a --rate")),
        Limit::Bdp => {
            let bdp = args.rate as f64 / 8.0 * 2.0 * args.delay.as_secs_f64();
            // Never below 256 KiB or four packets of the larger MTU, so a
            // short delay still leaves a usable queue.
            Limit::Bytes((bdp as usize).max(256 << 10).max(4 * a.mtu.max(b.mtu) as usize))
        }
        l => l,
    };
    let shape = Shape { delay: args.delay, rate_bps: args.rate, limit };
    println!(
        "linkem: {} (mtu {}) <-> {} (mtu {}); each direction: rate {}, queue limit {}, delay {:?} \
         (RTT +{:?})",
        args.a,
        a.mtu,
        args.b,
        b.mtu,
        units::format_rate(shape.rate_bps),
        shape.limit,
        shape.delay,
        shape.delay * 2,
    );
    std::io::stdout().flush().ok();

    let (events, event_rx) = mpsc::channel::<Event>();
    let a_file = Arc::new(a.file);
    let b_file = Arc::new(b.file);
    let ab = Arc::new(Stats::default());
    let ba = Arc::new(Stats::default());
    for (dir, src, dst, stats) in [
        ("a->b", &a_file, &b_file, &ab),
        ("b->a", &b_file, &a_file, &ba),
    ] {
        let (line_tx, line_rx) = mpsc::channel::<Packet>();
        let (src, st, ev) = (Arc::clone(src), Arc::clone(stats), events.clone());
        let line_packets = args.line_packets;
        spawn(&format!("read {dir}"), move || {
            let e = link::read_loop(&src, shape, line_packets, &st, line_tx)
                .err()
                .unwrap_or_else(|| anyhow!("ended"));
            let _ = ev.send(Event::Failed(dir, e));
        })?;
        let (dst, st, ev) = (Arc::clone(dst), Arc::clone(stats), events.clone());
        spawn(&format!("write {dir}"), move || {
            let e = link::write_loop(&dst, &st, line_rx).err().unwrap_or_else(|| anyhow!("ended"));
            let _ = ev.send(Event::Failed(dir, e));
        })?;
    }
    let ev = events.clone();
    spawn("signals", move || loop {
        let mut sig = 0;
        // SAFETY: waits for one of the blocked signals.
        if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
            let _ = ev.send(Event::Signal(sig));
        }
    })?;
    drop(events);

    let report = |when: &str| {
        eprintln!("linkem {when}: a->b {}", ab.summary());
        eprintln!("linkem {when}: b->a {}", ba.summary());
    };
    let tick = args.stats.map_or(Duration::from_secs(u64::MAX / 4), Duration::from_secs);
    loop {
        match event_rx.recv_timeout(tick) {
            Ok(Event::Signal(sig)) => {
                report(&format!("stopped by signal {sig}"));
                return Ok(());
            }
            Ok(Event::Failed(dir, e)) => {
                report("failed");
                return Err(e.context(format!("direction {dir}")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                report("running");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(anyhow!("all threads ended")),
        }
    }
}
