//! Throughput through the proxy against the node directly (curl, one
//! 256 MiB file each way, ack = "guide"). Ignored by default: run with
//! `cargo test --test proxy_perf -- --ignored --nocapture`. Prints MiB/s;
//! fails only if a transfer fails or differs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterSetup};

fn curl(args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new("curl").args(["-sS", "--max-time", "600"]).args(args).output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed()
}

#[test]
#[ignore]
fn throughput_through_the_proxy_against_direct() {
    let size = 256usize << 20;
    let c = Cluster::start(ClusterSetup { nodes: 2, node_extra: "proxies = [\"127.0.0.1/32\"]".into(), ..ClusterSetup::default() });
    let (_, primary) = c.wait_primary(Duration::from_secs(30));
    let proxy = c.start_proxy("");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]).collect();
    std::fs::write(&src, &data).unwrap();
    let mib = size as f64 / (1 << 20) as f64;
    let node = c.node(&primary);
    let direct = |p: &str| format!("ftp://alice:alice-pw-1@{}{p}", node.ftp());
    for (name, url) in [("direct", direct("/d.bin")), ("proxy", proxy.url("alice", "alice-pw-1", "/p.bin"))] {
        let up = curl(&["-T", src.to_str().unwrap(), &url]);
        let out = dir.path().join(format!("{name}.out"));
        let down = curl(&["-o", out.to_str().unwrap(), &url]);
        assert!(std::fs::read(&out).unwrap() == data, "{name}: downloaded bytes differ");
        println!(
            "{name:>6}: upload {:7.1} MiB/s, download {:7.1} MiB/s",
            mib / up.as_secs_f64(),
            mib / down.as_secs_f64()
        );
    }
}
