//! Rough cost of `ack = "guide"` against `ack = "local"` for small
//! uploads through one FTP session (ignored by default: a measurement,
//! not a check). `cargo test --test agent_perf -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterSetup};
use common::ops_node::python;

const UPLOADS: &str = r#"
import ftplib, io, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = ftplib.FTP()
f.connect(host, port, timeout=30)
f.login("alice", "alice-pw-1")
for i in range(n):
    f.storbinary(f"STOR u{i}.bin", io.BytesIO(bytes([i % 256]) * 4096))
f.quit()
"#;

#[test]
#[ignore]
fn small_uploads_with_each_ack_mode() {
    for ack in ["local", "guide"] {
        let cluster = Cluster::start(ClusterSetup { nodes: 2, ack, ..Default::default() });
        cluster.wait_primary(Duration::from_secs(15));
        let (h, p) = cluster.node("n1").ftp().rsplit_once(':').map(|(h, p)| (h.to_owned(), p.to_owned())).unwrap();
        let t = Instant::now();
        python(UPLOADS, &[&h, &p, "200"]);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        println!("ack = {ack}: 200 uploads of 4 KiB in {ms:.0} ms ({:.2} ms each)", ms / 200.0);
        let big = cluster.dir.path().join("big.bin");
        std::fs::write(&big, common::node::data(256 << 20, 3)).unwrap();
        let t = Instant::now();
        let st = std::process::Command::new("curl")
            .args(["-sS", "-T"])
            .arg(&big)
            .arg(format!("ftp://alice:alice-pw-1@{h}:{p}/big.bin"))
            .status()
            .unwrap();
        assert!(st.success());
        let s = t.elapsed().as_secs_f64();
        println!("ack = {ack}: 256 MiB in {s:.2} s ({:.0} MB/s)", 268.435456 / s);
    }
}
