//! One direction of the emulated link: a reader thread puts each packet
//! through a rate-limited, bounded queue and stamps it with the time it
//! leaves the far end; a writer thread sleeps until that time and injects
//! it. Due times only grow, so packets keep their order.

use crate::units::Limit;
use anyhow::{anyhow, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// The link's shape, the same for both directions.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// One-way propagation delay, added after serialization.
    pub delay: Duration,
    /// Bits per second; 0: no rate limit (and so no queue).
    pub rate_bps: u64,
    /// Bound of the queue in front of the rate limit (the packets not yet
    /// fully serialized, the one being sent included).
    pub limit: Limit,
}

/// Counters of one direction.
#[derive(Default)]
pub struct Stats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Dropped because the queue was at its limit.
    pub queue_drops: AtomicU64,
    /// Dropped because the delay line held `line_packets` already.
    pub line_drops: AtomicU64,
    pub write_errors: AtomicU64,
    pub peak_queue_packets: AtomicU64,
    pub peak_queue_bytes: AtomicU64,
    /// Packets read and not yet written.
    pub in_line: AtomicUsize,
}

impl Stats {
    pub fn summary(&self) -> String {
        format!(
            "in {} pkts / {} B, out {} pkts / {} B, dropped {} (queue full) + {} (delay line full), \
             write errors {}, peak queue {} pkts / {} B",
            self.rx_packets.load(Relaxed),
            self.rx_bytes.load(Relaxed),
            self.tx_packets.load(Relaxed),
            self.tx_bytes.load(Relaxed),
            self.queue_drops.load(Relaxed),
            self.line_drops.load(Relaxed),
            self.write_errors.load(Relaxed),
            self.peak_queue_packets.load(Relaxed),
            self.peak_queue_bytes.load(Relaxed),
        )
    }
}

/// The rate limit and its bounded queue, as times: a packet arriving at
/// `now` starts serializing when the link is free and the queue ahead of
/// it has drained.
pub struct Shaper {
    rate_bps: u64,
    limit: Limit,
    /// When the link finishes the last admitted packet.
    link_free: Option<Instant>,
    /// Admitted packets not yet fully serialized: (done at, length).
    queue: VecDeque<(Instant, usize)>,
    queued_bytes: usize,
}

impl Shaper {
    pub fn new(shape: &Shape) -> Self {
        Shaper {
            rate_bps: shape.rate_bps,
            limit: shape.limit,
            link_free: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    fn serialization(&self, len: usize) -> Duration {
        Duration::from_nanos((len as u128 * 8 * 1_000_000_000 / self.rate_bps as u128) as u64)
    }

    /// When a packet of `len` bytes arriving at `now` is fully sent, or
    /// None if the queue is full and it is dropped.
    pub fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        if self.rate_bps == 0 {
            return Some(now);
        }
        while let Some(&(done, l)) = self.queue.front() {
            if done > now {
                break;
            }
            self.queue.pop_front();
            self.queued_bytes -= l;
        }
        let full = match self.limit {
            Limit::Packets(p) => self.queue.len() >= p,
            Limit::Bytes(b) => self.queued_bytes + len > b,
            // main resolves it to bytes; unbounded if it did not.
            Limit::Bdp => false,
        };
        if full {
            return None;
        }
        let start = self.link_free.map_or(now, |free| free.max(now));
        let done = start + self.serialization(len);
        self.link_free = Some(done);
        self.queue.push_back((done, len));
        self.queued_bytes += len;
        Some(done)
    }

    pub fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queued_bytes)
    }
}

/// A packet on the delay line, due at the far end at `due`.
pub struct Packet {
    pub due: Instant,
    pub data: Vec<u8>,
}

/// Reads packets from `src` forever, shapes them and hands them to the
/// writer. Returns only on an error.
pub fn read_loop(
    src: &File,
    shape: Shape,
    line_packets: usize,
    stats: &Stats,
    line: Sender<Packet>,
) -> Result<()> {
    let mut shaper = Shaper::new(&shape);
    // A TUN read returns one packet, at most the MTU (at most 64 KiB).
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match (&mut &*src).read(&mut buf) {
            Ok(0) => return Err(anyhow!("the device was closed")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading a packet"),
        };
        let now = Instant::now();
        stats.rx_packets.fetch_add(1, Relaxed);
        stats.rx_bytes.fetch_add(n as u64, Relaxed);
        let Some(sent) = shaper.admit(now, n) else {
            stats.queue_drops.fetch_add(1, Relaxed);
            continue;
        };
        let (qp, qb) = shaper.queued();
        stats.peak_queue_packets.fetch_max(qp as u64, Relaxed);
        stats.peak_queue_bytes.fetch_max(qb as u64, Relaxed);
        if stats.in_line.load(Relaxed) >= line_packets {
            stats.line_drops.fetch_add(1, Relaxed);
            continue;
        }
        stats.in_line.fetch_add(1, Relaxed);
        let packet = Packet { due: sent + shape.delay, data: buf[..n].to_vec() };
        if line.send(packet).is_err() {
            return Err(anyhow!("the writer thread ended"));
        }
    }
}

/// Writes each packet from the delay line to `dst` at its due time,
/// sleeping until then. Returns only on an error.
pub fn write_loop(dst: &File, stats: &Stats, line: Receiver<Packet>) -> Result<()> {
    let mut reported = false;
    while let Ok(packet) = line.recv() {
        let now = Instant::now();
        if packet.due > now {
            std::thread::sleep(packet.due - now);
        }
        stats.in_line.fetch_sub(1, Relaxed);
        loop {
            match (&mut &*dst).write(&packet.data) {
                Ok(_) => {
                    stats.tx_packets.fetch_add(1, Relaxed);
                    stats.tx_bytes.fetch_add(packet.data.len() as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The device is gone (its namespace was deleted).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD | libc::EBADF)) => {
                    return Err(e).context("writing a packet");
                }
                // A packet the kernel refuses (down device, bad header,
                // no memory) is lost, as on a wire.
                Err(e) => {
                    stats.write_errors.fetch_add(1, Relaxed);
                    if !reported {
                        eprintln!("linkem: writing a packet: {e} (counted, further ones not shown)");
                        reported = true;
                    }
                }
            }
            break;
        }
    }
    Err(anyhow!("the reader thread ended"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rate_bps: u64, limit: Limit) -> Shape {
        Shape { delay: Duration::from_millis(20), rate_bps, limit }
    }

    #[test]
    fn paces_back_to_back_packets() {
        // 1 Gbit/s: 9000 bytes take 72 us.
        let mut s = Shaper::new(&shape(1_000_000_000, Limit::Packets(10)));
        let t0 = Instant::now();
        let d1 = s.admit(t0, 9000).unwrap();
        let d2 = s.admit(t0, 9000).unwrap();
        assert_eq!(d1 - t0, Duration::from_micros(72));
        assert_eq!(d2 - t0, Duration::from_micros(144));
        // An idle link starts at once.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(s.admit(later, 1000).unwrap() - later, Duration::from_micros(8));
        assert_eq!(s.queued(), (1, 1000));
    }

    #[test]
    fn drops_when_the_queue_is_full() {
        let mut s = Shaper::new(&shape(1_000_000_000, Limit::Packets(2)));
        let t0 = Instant::now();
        assert!(s.admit(t0, 9000).is_some());
        assert!(s.admit(t0, 9000).is_some());
        assert!(s.admit(t0, 9000).is_none());
        // Once the first is sent there is room again.
        assert!(s.admit(t0 + Duration::from_micros(72), 9000).is_some());

        let mut s = Shaper::new(&shape(1_000_000_000, Limit::Bytes(10_000)));
        assert!(s.admit(t0, 6000).is_some());
        assert!(s.admit(t0, 6000).is_none());
        assert!(s.admit(t0, 4000).is_some());
    }

    #[test]
    fn no_rate_means_no_queue() {
        let mut s = Shaper::new(&shape(0, Limit::Packets(1)));
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(s.admit(t0, 9000), Some(t0));
        }
    }
}
