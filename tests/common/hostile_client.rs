//! A raw control-connection client for hostile-input tests: it writes
//! exactly the bytes given (pipelined commands, over-long lines) and can
//! tell a closed connection from a silent one.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Raw {
    r: BufReader<TcpStream>,
}

/// What a read ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Reply(u32, String),
    Closed,
    Silent,
}

impl Raw {
    /// Connects and returns the client with the greeting's code.
    pub fn connect(addr: SocketAddr) -> (Raw, u32) {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        let mut raw = Raw { r: BufReader::new(s) };
        let code = match raw.next(Duration::from_secs(10)) {
            Next::Reply(c, _) => c,
            other => panic!("no greeting: {other:?}"),
        };
        (raw, code)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).expect("send");
    }

    /// Reads one reply (multi-line aware) within `limit`.
    pub fn next(&mut self, limit: Duration) -> Next {
        self.r.get_ref().set_read_timeout(Some(limit)).unwrap();
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Next::Closed,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Next::Silent,
            Err(_) => return Next::Closed,
            Ok(_) => {}
        }
        let code: u32 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut text = line.clone();
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            loop {
                let mut l = String::new();
                if self.r.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                text.push_str(&l);
                if l.starts_with(&end) {
                    break;
                }
            }
        }
        Next::Reply(code, text.trim_end().to_owned())
    }

    /// The next reply's code and text; panics on close or silence.
    pub fn reply(&mut self) -> (u32, String) {
        match self.next(Duration::from_secs(20)) {
            Next::Reply(c, t) => (c, t),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    pub fn cmd(&mut self, line: &str) -> (u32, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Logs in; panics unless it works.
    pub fn login(addr: SocketAddr, user: &str, pass: &str) -> Raw {
        let (mut raw, code) = Raw::connect(addr);
        assert_eq!(code, 220);
        assert_eq!(raw.cmd(&format!("USER {user}")).0, 331);
        let r = raw.cmd(&format!("PASS {pass}"));
        assert_eq!(r.0, 230, "PASS: {r:?}");
        raw
    }

    /// True if the server closes the connection within `limit` (any
    /// bytes before the close are discarded).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.r.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.r.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }

    /// Opens a passive data connection with PASV; returns its port.
    pub fn pasv_port(&mut self) -> u16 {
        let (c, t) = self.cmd("PASV");
        assert_eq!(c, 227, "PASV: {t}");
        let inside = t.split('(').nth(1).and_then(|r| r.split(')').next()).expect("PASV reply");
        let n: Vec<u16> = inside.split(',').map(|x| x.trim().parse().expect("PASV number")).collect();
        n[4] * 256 + n[5]
    }

    pub fn peer(&self) -> SocketAddr {
        self.r.get_ref().peer_addr().unwrap()
    }
}
