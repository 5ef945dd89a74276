//! Zero-copy transfers between a plain FTP data connection and a file.
//!
//! Downloads go out with `sendfile(2)`: the kernel hands the file's pages
//! to TCP without a copy through the node (the way vsftpd sends). Uploads
//! come in with `splice(2)`: socket → pipe moves references to the
//! received pages, pipe → file copies them once into the page cache,
//! instead of a socket read plus a file write. Both work on the drift-fs
//! mount (with kernel passthrough the calls reach the backing file; without
//! it FUSE serves them through its page cache).
//!
//! Both loops run on a transfer thread (taken from a pool of idle ones, see
//! [`Transfers`]) with the socket left non-blocking
//! (tokio still owns its registration): when the socket cannot move data
//! the thread waits in `poll(2)` in short slices, so it notices a node that
//! is stopping, and gives up after the idle limit without progress, like
//! the buffered path. TLS data connections never get here: their bytes
//! must pass through the TLS layer in user space.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes asked of one `sendfile` call. On loopback (BENCHMARKS.md, "drift
/// node") 128 KiB, 512 KiB and 2 MiB calls were within noise of each
/// other; 16 MiB and 64 KiB calls were slower in one comparison.
const SEND_CHUNK: usize = 128 << 10;
/// Pipe capacity asked for uploads (the default `pipe-max-size` allows it;
/// a smaller pipe only means more calls).
const PIPE_SIZE: usize = 1 << 20;
/// Longest single wait in `poll(2)` before looking at the stop flag again.
const POLL_SLICE: Duration = Duration::from_millis(200);

/// The node's zero-copy transfer threads, which the runtime cannot
/// cancel: told when the node stops, and counted, so the node can wait for
/// them (and their open files) before it unmounts.
#[derive(Debug, Default)]
pub struct Transfers {
    stopping: AtomicBool,
    live: std::sync::atomic::AtomicUsize,
    threads: std::sync::Arc<ThreadPool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads kept for [`IDLE_KEEP`] after their job and reused. A small
/// file's transfer takes a few hundred microseconds; starting a thread for
/// it cost 40 µs at the median and 280 µs at p90 on the 2-CPU bench
/// machine under load, waking an idle one 11 and 30 µs.
#[derive(Debug, Default)]
struct ThreadPool {
    idle: Mutex<IdleThreads>,
}

#[derive(Debug, Default)]
struct IdleThreads {
    next_id: u64,
    waiting: Vec<(u64, std::sync::mpsc::Sender<Job>)>,
}

/// How long an idle thread waits for its next job.
const IDLE_KEEP: Duration = Duration::from_secs(20);
/// Idle threads kept at most per pool; more exit after their job.
const MAX_IDLE: usize = 16;

impl ThreadPool {
    fn idle(&self) -> std::sync::MutexGuard<'_, IdleThreads> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on an idle thread, else on a new one named `name`.
    fn run(self: &std::sync::Arc<Self>, name: &str, mut job: Job) -> io::Result<()> {
        loop {
            let Some((_, tx)) = self.idle().waiting.pop() else { break };
            // A thread that removed itself is never handed a job, so a
            // send fails only if it died; try the next one.
            match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(j)) => job = j,
            }
        }
        let pool = std::sync::Arc::downgrade(self);
        std::thread::Builder::new().name(name.into()).spawn(move || {
            job();
            while let Some(next) = ThreadPool::wait_for_job(&pool) {
                next();
            }
        })?;
        Ok(())
    }

    /// Parks the calling thread as idle until it is given a job (`Some`)
    /// or should exit (`None`).
    fn wait_for_job(pool: &std::sync::Weak<ThreadPool>) -> Option<Job> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let id = {
            let pool = pool.upgrade()?;
            let mut idle = pool.idle();
            if idle.waiting.len() >= MAX_IDLE {
                return None;
            }
            idle.next_id += 1;
            let id = idle.next_id;
            idle.waiting.push((id, tx));
            id
        };
        match rx.recv_timeout(IDLE_KEEP) {
            Ok(job) => Some(job),
            Err(_) => {
                let pool = pool.upgrade()?;
                let mut idle = pool.idle();
                if let Some(i) = idle.waiting.iter().position(|(w, _)| *w == id) {
                    idle.waiting.swap_remove(i);
                    return None;
                }
                // Taken by `run` just now: its job is on the way.
                drop(idle);
                rx.recv().ok()
            }
        }
    }
}

impl Transfers {
    /// Tells every transfer loop to give up at its next step.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Transfers running now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn stopping(&self) -> &AtomicBool {
        &self.stopping
    }

    /// Runs `f` on a transfer thread (an idle one, else a new one),
    /// counted as a live transfer; `done` gets its result.
    pub fn spawn<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) -> io::Result<()> {
        struct Live(std::sync::Arc<Transfers>);
        impl Drop for Live {
            fn drop(&mut self) {
                self.0.live.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.live.fetch_add(1, Ordering::AcqRel);
        let live = Live(self.clone());
        self.threads.run(
            "drift-xfer",
            Box::new(move || {
                let _live = live;
                done(f());
            }),
        )
    }

    /// Waits (bounded) until no transfer thread is left; false on timeout.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let since = Instant::now();
        while self.live.load(Ordering::Acquire) > 0 {
            if since.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// The error of a transfer that made no progress for `limit` (both the
/// zero-copy and the buffered paths).
pub(super) fn stalled(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} stalled: no data for {} s", limit.as_secs()),
    )
}

fn stopping_error() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "the node is stopping")
}

/// Waits until `fd` is ready for `events` (POLLIN or POLLOUT), the idle
/// limit passes since `progress` (when bytes last moved), or the node
/// starts stopping.
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    what: &str,
    limit: Duration,
    progress: Instant,
    stop: &AtomicBool,
) -> io::Result<()> {
    let since = progress;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(stopping_error());
        }
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            return Err(stalled(what, limit));
        }
        let slice = left.min(POLL_SLICE);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, borrowed for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Readiness, an error or a hang-up: the next call reports which.
        if n > 0 {
            return Ok(());
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Outcome of [`send_file`].
#[derive(Debug)]
pub enum Sent {
    /// Bytes sent; fewer than asked only if the file shrank meanwhile.
    Done(u64),
    /// The kernel cannot `sendfile` from this file (nothing was sent):
    /// the caller copies through user space instead.
    Unsupported,
}

/// Sends `file[start..end)` to the non-blocking `socket` with `sendfile`.
pub fn send_file(socket: BorrowedFd<'_>, file: &File, start: u64, end: u64, limit: Duration, stop: &AtomicBool) -> io::Result<Sent> {
    let mut off = start as libc::off_t;
    let mut progress = Instant::now();
    while (off as u64) < end {
        if stop.load(Ordering::Relaxed) {
            return Err(stopping_error());
        }
        let want = SEND_CHUNK.min((end - off as u64) as usize);
        // SAFETY: both descriptors are open for the call; `off` is ours.
        let n = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        if n > 0 {
            progress = Instant::now();
            continue;
        }
        if n == 0 {
            // The file ended early (truncated while being served).
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) if off as u64 == start => return Ok(Sent::Unsupported),
            _ if would_block(&e) => wait_ready(socket, libc::POLLOUT, "download", limit, progress, stop)?,
            _ if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(Sent::Done(off as u64 - start))
}

/// A pipe for `splice`.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe is slower, not wrong.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(Pipe { read, write })
    }
}

/// Result of [`receive_into`]: bytes that reached the file, and why the
/// loop ended if not at the client's end of data. Bytes received before
/// an error are in the file either way (a resumed upload needs them).
#[derive(Debug)]
pub struct Received {
    pub bytes: u64,
    pub result: io::Result<()>,
}

/// Receives from the non-blocking `socket` until end of data, writing at
/// `start` onwards in `file`, with `splice` through a pipe.
/// `written` is told each new end of the data written so far.
pub fn receive_into(
    socket: BorrowedFd<'_>,
    file: &File,
    start: u64,
    limit: Duration,
    stop: &AtomicBool,
    written: &mut dyn FnMut(u64),
) -> Received {
    let mut pos = start;
    let result = (|| -> io::Result<()> {
        let pipe = Pipe::new()?;
        // Whether the file accepts splice; if not, the pipe is drained
        // through a buffer (still one copy fewer than a socket read).
        let mut splice_out = true;
        let mut buf = Vec::new();
        let mut progress = Instant::now();
        // Set after poll said "readable": TCP splice stops at urgent
        // (out-of-band) data while poll keeps reporting the bytes behind
        // it, so a splice without progress then is followed by a recv(2).
        let mut readable_but_stuck = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(stopping_error());
            }
            // SAFETY: valid descriptors; null offsets (socket and pipe).
            let n = unsafe {
                libc::splice(
                    socket.as_raw_fd(),
                    std::ptr::null_mut(),
                    pipe.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    PIPE_SIZE,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            // 0 is the end of data, or a stop at urgent data (seen on
            // 6.18), and EAGAIN right after poll said "readable" is the
            // latter too: a recv(2) tells them apart and steps over the
            // urgent byte, as the buffered path's plain read does.
            let mut ask_recv = n == 0;
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if !would_block(&e) {
                    return Err(e);
                }
                ask_recv = readable_but_stuck;
            }
            if n <= 0 {
                readable_but_stuck = false;
                if ask_recv {
                    match recv_by_copy(socket, file, pos, &mut buf)? {
                        Some(0) => return Ok(()),
                        Some(got) => {
                            pos += got as u64;
                            progress = Instant::now();
                            written(pos);
                            continue;
                        }
                        None => {}
                    }
                }
                wait_ready(socket, libc::POLLIN, "upload", limit, progress, stop)?;
                readable_but_stuck = true;
                continue;
            }
            readable_but_stuck = false;
            progress = Instant::now();
            let mut left = n as usize;
            while left > 0 {
                let moved = if splice_out {
                    let mut off = pos as libc::loff_t;
                    // SAFETY: valid descriptors; `off` is ours.
                    let m = unsafe {
                        libc::splice(pipe.read.as_raw_fd(), std::ptr::null_mut(), file.as_raw_fd(), &mut off, left, libc::SPLICE_F_MOVE)
                    };
                    if m < 0 {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EINVAL) => {
                                splice_out = false;
                                continue;
                            }
                            Some(libc::EINTR) => continue,
                            _ => return Err(e),
                        }
                    }
                    m as usize
                } else {
                    drain_by_copy(pipe.read.as_fd(), file, pos, left, &mut buf)?
                };
                if moved == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "the file accepted no bytes"));
                }
                left -= moved;
                pos += moved as u64;
            }
            written(pos);
        }
    })();
    Received {
        bytes: pos - start,
        result,
    }
}

/// Moves up to `len` bytes from the pipe to `file` at `pos` through a
/// buffer; returns how many.
fn drain_by_copy(pipe: BorrowedFd<'_>, file: &File, pos: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    buf.resize(len.min(PIPE_SIZE), 0);
    let n = loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    file.write_all_at(&buf[..n], pos)?;
    Ok(n)
}

/// One non-blocking `recv` from the socket, written to `file` at `pos`:
/// the bytes moved (0 at the end of data), `None` if nothing was there
/// (an urgent byte alone is stepped over and gives `None`).
fn recv_by_copy(socket: BorrowedFd<'_>, file: &File, pos: u64, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    use std::os::unix::fs::FileExt;
    buf.resize(PIPE_SIZE, 0);
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            file.write_all_at(&buf[..n as usize], pos)?;
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if would_block(&e) {
            return Ok(None);
        }
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Hashes a file on its own thread while it is being written, following
/// the written end, so the upload's BLAKE3 is ready when the last byte
/// lands instead of after a read-back of the whole file. The bytes are
/// read back from the page cache (the spliced data never passes through
/// the node otherwise).
pub struct TailHasher {
    tx: std::sync::mpsc::Sender<u64>,
    cancel: std::sync::Arc<AtomicBool>,
    result: std::sync::mpsc::Receiver<io::Result<blake3::Hash>>,
}

/// The upload hashers' threads (one per upload in flight, reused).
fn hasher_threads() -> &'static std::sync::Arc<ThreadPool> {
    static POOL: std::sync::OnceLock<std::sync::Arc<ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(Default::default)
}

impl TailHasher {
    /// Starts hashing `file` (a readable handle of the file being
    /// written, read with positioned reads) from offset 0.
    pub fn start(file: File) -> io::Result<TailHasher> {
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let (result_tx, result) = std::sync::mpsc::channel();
        let hash = move || -> io::Result<blake3::Hash> {
            use std::os::unix::fs::FileExt;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; PIPE_SIZE];
            let mut done = 0u64;
            // Each message is a new written end; a closed channel means
            // the writer finished and sent its final end last.
            while let Ok(mut end) = rx.recv() {
                while let Ok(later) = rx.try_recv() {
                    end = end.max(later);
                }
                while done < end {
                    if cancelled.load(Ordering::Relaxed) {
                        return Err(io::Error::new(io::ErrorKind::Interrupted, "upload hash abandoned"));
                    }
                    let want = buf.len().min((end - done) as usize);
                    let n = file.read_at(&mut buf[..want], done)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the upload shrank while being hashed"));
                    }
                    hasher.update(&buf[..n]);
                    done += n as u64;
                }
            }
            Ok(hasher.finalize())
        };
        hasher_threads().run(
            "drift-hash",
            Box::new(move || {
                // The receiver is gone only if the TailHasher was dropped.
                let _ = result_tx.send(hash());
            }),
        )?;
        Ok(TailHasher { tx, cancel, result })
    }

    /// Bytes up to `end` are written.
    pub fn advance(&self, end: u64) {
        // A stopped thread reports its error in `finish`.
        let _ = self.tx.send(end);
    }

    /// Stops hashing (the upload failed) and waits for the thread, which
    /// then closes its handle of the file.
    pub fn abandon(self) {
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.tx);
        let _ = self.result.recv();
    }

    /// The hash of bytes `0..end`, once the thread has caught up.
    pub fn finish(self, end: u64) -> io::Result<blake3::Hash> {
        self.advance(end);
        drop(self.tx);
        self.result.recv().map_err(|_| io::Error::other("upload hasher panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (s, c)
    }

    #[test]
    fn transfer_threads_are_reused_and_counted() {
        let t = std::sync::Arc::new(Transfers::default());
        let run = |t: &std::sync::Arc<Transfers>| {
            let (tx, rx) = std::sync::mpsc::channel();
            t.spawn(|| std::thread::current().id(), move |id| tx.send(id).unwrap()).unwrap();
            rx.recv().unwrap()
        };
        let first = run(&t);
        assert!(t.wait_idle(Duration::from_secs(5)), "a finished transfer still counts as live");
        // The thread parks itself as idle right after its job; wait for it.
        assert!(eventually(|| !t.threads.idle().waiting.is_empty()));
        assert_eq!(run(&t), first, "the idle thread was not reused");
        // Two at once need two threads.
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
        for _ in 0..2 {
            let (tx, gate) = (tx.clone(), gate.clone());
            t.spawn(move || { gate.wait(); std::thread::current().id() }, move |id| tx.send(id).unwrap()).unwrap();
        }
        let (a, b) = (rx.recv().unwrap(), rx.recv().unwrap());
        assert_ne!(a, b);
        assert!(t.wait_idle(Duration::from_secs(5)));
    }

    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::yield_now();
        }
        cond()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn send_file_sends_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(3 << 20 | 17);
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let (server, mut client) = pair();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        let file = File::open(&path).unwrap();
        let stop = AtomicBool::new(false);
        let sent = send_file(server.as_fd(), &file, 1000, data.len() as u64, Duration::from_secs(10), &stop).unwrap();
        assert!(matches!(sent, Sent::Done(n) if n == data.len() as u64 - 1000), "{sent:?}");
        drop(server);
        assert!(reader.join().unwrap() == data[1000..]);
    }

    #[test]
    fn receive_into_writes_at_the_offset_and_keeps_partial_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let data = pattern(5 << 20 | 3);
        let (server, mut client) = pair();
        let sent = data.clone();
        let writer = std::thread::spawn(move || client.write_all(&sent).unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let stop = AtomicBool::new(false);
        let mut ends = Vec::new();
        let got = receive_into(server.as_fd(), &file, 4, Duration::from_secs(10), &stop, &mut |end| ends.push(end));
        writer.join().unwrap();
        got.result.unwrap();
        assert_eq!(got.bytes, data.len() as u64);
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "ends only grow");
        assert_eq!(ends.last(), Some(&(4 + data.len() as u64)));
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..4], b"0123");
        assert!(on_disk[4..] == data[..]);
    }

    #[test]
    fn tail_hasher_follows_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pattern(3 << 20 | 5);
        let mut w = File::create(&path).unwrap();
        let hasher = TailHasher::start(File::open(&path).unwrap()).unwrap();
        for piece in data.chunks(700_001) {
            w.write_all(piece).unwrap();
            hasher.advance(w.metadata().unwrap().len());
        }
        assert_eq!(hasher.finish(data.len() as u64).unwrap(), blake3::hash(&data));
    }

    #[test]
    fn urgent_data_neither_spins_nor_stops_the_upload() {
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
        let (server, mut client) = pair();
        let writer = std::thread::spawn(move || {
            client.write_all(b"abc").unwrap();
            // SAFETY: one byte from a valid buffer on an open socket.
            let n = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
            assert_eq!(n, 1);
            std::thread::sleep(Duration::from_millis(100));
            client.write_all(b"def").unwrap();
        });
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        let got = receive_into(server.as_fd(), &file, 0, Duration::from_secs(10), &stop, &mut |_| {});
        writer.join().unwrap();
        got.result.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        // recv(2) without SO_OOBINLINE leaves the urgent byte out, as the
        // buffered path (a plain socket read) does.
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef", "bytes {} len {}", got.bytes, file.metadata().unwrap().len());
    }

    #[test]
    fn a_silent_client_stalls_and_a_stop_interrupts() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let (server, mut client) = pair();
        client.write_all(b"abc").unwrap();
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        let got = receive_into(server.as_fd(), &file, 0, Duration::from_millis(300), &stop, &mut |_| {});
        assert_eq!(got.result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(got.bytes, 3, "bytes received before the stall are kept");
        assert!(t.elapsed() < Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        let got = receive_into(server.as_fd(), &file, 3, Duration::from_secs(60), &stop, &mut |_| {});
        assert_eq!(got.result.unwrap_err().kind(), io::ErrorKind::Interrupted);
        drop(client);
    }
}
