//! The load a node reports with every heartbeat: sessions, transfers,
//! CPU of the process, free disk of the backing filesystem.

use std::path::Path;
use std::time::Instant;

/// CPU time of this process in clock ticks (utime + stime), from /proc.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    let frsize = s.f_frsize as u64;
    (s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize)
}

/// CPU use between two calls, percent of one core.
#[derive(Debug)]
pub struct Cpu {
    last: Option<(Instant, u64)>,
    ticks_per_sec: f64,
}

impl Default for Cpu {
    fn default() -> Self {
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Cpu { last: None, ticks_per_sec: if t > 0 { t as f64 } else { 100.0 } }
    }
}

impl Cpu {
    pub fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let Some(ticks) = cpu_ticks() else { return 0.0 };
        let pct = match self.last {
            Some((t, prev)) if now > t => {
                let secs = now.duration_since(t).as_secs_f64();
                (ticks.saturating_sub(prev) as f64 / self.ticks_per_sec) / secs * 100.0
            }
            _ => 0.0,
        };
        // Short intervals are noisy at 100 ticks a second: keep the old
        // sample until a quarter second has passed.
        if self.last.is_none_or(|(t, _)| now.duration_since(t).as_millis() >= 250) {
            self.last = Some((now, ticks));
        }
        (pct * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_disk() {
        assert!(cpu_ticks().is_some());
        let (free, total) = disk(Path::new("/"));
        assert!(total > 0 && free <= total);
        let mut c = Cpu::default();
        assert_eq!(c.sample(), 0.0);
    }
}
