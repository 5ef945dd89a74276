//! Helpers for tests/node_commands.rs: looking at a running node process
//! from outside.

use std::path::Path;

use super::node::TestNode;

/// The pid of the `drift node` serving `node` (found by its config path
/// on the command line).
pub fn node_pid(node: &TestNode) -> u32 {
    let needle = node.config.as_os_str().as_encoded_bytes().to_vec();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_slice()) {
            return pid;
        }
    }
    panic!("no process serves {}", node.config.display());
}

/// Bytes the process has read with read(2)-like calls so far (`rchar` of
/// /proc/PID/io): files read by the process show up here, whether or not
/// they were in the page cache.
pub fn rchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}
