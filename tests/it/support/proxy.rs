//! [`FaultProxy`]: a TCP proxy on std threads that sits between the daemon (or a
//! test client) and a PostgreSQL server and injects network faults: one-way
//! latency, a bandwidth cap, cutting live connections, a black hole and refusal, and a target that can be
//! re-pointed (a failover: the same address now reaches another server). It counts the bytes it carries each
//! way (the benches' bytes on the wire).
//!
//! Each accepted connection gets a supervisor thread; each direction gets a
//! reader thread that timestamps chunks and a writer thread that sends each
//! chunk when it is due, so latency does not limit throughput (no stop-and-wait).
//! The cap is a token bucket per direction, shared by all connections (one link):
//! a writer takes tokens for every piece it sends and sleeps until they are there.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PAUSE_POLL: Duration = Duration::from_millis(10);
/// The token bucket's depth, and the largest piece a capped writer sends at once.
pub const BURST_BYTES: usize = 16 * 1024;

/// A fault-injecting TCP proxy listening on a free 127.0.0.1 port.
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    /// Where new connections go; [`FaultProxy::set_target`] changes it.
    target: Mutex<SocketAddr>,
    latency_us: AtomicU64,
    /// The cap per direction in bytes per second; 0 is none.
    bandwidth: AtomicU64,
    /// The token buckets, client to server and server to client.
    buckets: [Mutex<Bucket>; 2],
    /// Bytes delivered client to server and server to client.
    carried: [AtomicU64; 2],
    blackhole: AtomicBool,
    refuse: AtomicBool,
    stopping: AtomicBool,
    opened: AtomicUsize,
    /// Bumped by `cut_all`; a connection is dead once this differs from its value at accept.
    cut_generation: AtomicU64,
    next_id: AtomicU64,
    /// Sockets of live (and black-holed) connections, for `cut_all` and drop.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Shared {
    fn alive(&self, generation: u64) -> bool {
        !self.stopping.load(Ordering::SeqCst) && self.cut_generation.load(Ordering::SeqCst) == generation
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<TcpStream>>> {
        self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the link going `way` may carry `n` (at most [`BURST_BYTES`]) more bytes.
    fn take_tokens(&self, way: Way, n: usize) {
        let rate = self.bandwidth.load(Ordering::SeqCst);
        if rate == 0 {
            return;
        }
        let wait = {
            let mut bucket = self.buckets[way as usize].lock().unwrap_or_else(|p| p.into_inner());
            bucket.take(rate, n, Instant::now())
        };
        if !wait.is_zero() {
            thread::sleep(wait);
        }
    }
}

/// Which way bytes go through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Client to server (to the remote database: statements and their parameters).
    Up = 0,
    /// Server to client (results).
    Down = 1,
}

/// A token bucket: `tokens` bytes may go at once, refilled at the cap's rate up to [`BURST_BYTES`]. Tokens
/// may go negative: a piece taken on credit makes the next takers wait until it is paid off.
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `at`.
    pub fn full(at: Instant) -> Bucket {
        Bucket {
            tokens: BURST_BYTES as f64,
            at,
        }
    }

    fn new() -> Bucket {
        Bucket::full(Instant::now())
    }

    /// Takes `n` tokens at `now` with `rate` bytes/s; returns how long the taker must wait for them.
    pub fn take(&mut self, rate: u64, n: usize, now: Instant) -> Duration {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(BURST_BYTES as f64) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<free port> to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("proxy: binding 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy: local_addr of listener").port();
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            latency_us: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            buckets: [Mutex::new(Bucket::new()), Mutex::new(Bucket::new())],
            carried: [AtomicU64::new(0), AtomicU64::new(0)],
            blackhole: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            opened: AtomicUsize::new(0),
            cut_generation: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("proxy-accept-{port}"))
                .spawn(move || accept_loop(listener, shared))
                .expect("proxy: spawning accept thread")
        };
        FaultProxy {
            shared,
            port,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One-way delay added in each direction (round trip gains twice this).
    /// Applies to chunks read from now on.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(us, Ordering::SeqCst);
    }

    /// Caps each direction at `bytes_per_sec` (shared by all connections, like one link), with bursts of at
    /// most 16 KiB; None lifts the cap. Applies to chunks sent from now on.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .bandwidth
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Bytes carried `way` so far, over all connections (the TCP payload, as PostgreSQL's protocol sent it).
    pub fn bytes(&self, way: Way) -> u64 {
        self.shared.carried[way as usize].load(Ordering::SeqCst)
    }

    /// Shuts down (both ways) every live connection, black-holed ones included.
    /// New connections are unaffected.
    pub fn cut_all(&self) {
        self.shared.cut_generation.fetch_add(1, Ordering::SeqCst);
        for (_, streams) in self.shared.conns().drain() {
            for s in streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// While on: new connections are accepted but never connected onward nor
    /// answered (held open until `cut_all`/drop, also after turning it off), and
    /// existing connections stop delivering: their data is held back and
    /// delivered when the black hole ends (like TCP after a partition heals).
    ///
    /// Note: postgres' `connect_timeout` only bounds the TCP connect, which
    /// succeeds here, so a connect through a black hole hangs in the startup
    /// handshake until `cut_all` or drop.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are accepted and closed at once (remote down).
    pub fn set_refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// New connections go to `target` from now on; live ones stay where they are (cut them with
    /// [`FaultProxy::cut_all`]).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Connections accepted so far (including refused and black-holed ones).
    pub fn connections_opened(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); if that fails, detach rather than hang.
        let woke = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woke {
                let _ = acceptor.join();
            }
        }
        self.cut_all();
        // Connection threads exit on their own once their sockets are shut down.
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        shared.opened.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || handle_connection(client, shared));
        if spawned.is_err() {
            continue; // out of threads: the client is dropped, i.e. closed
        }
    }
}

/// Registers `streams` under a new id; shuts them down and returns None if the
/// proxy was cut or stopped since `generation` was read.
fn register(shared: &Shared, generation: u64, streams: &[&TcpStream]) -> Option<u64> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let clones: Vec<TcpStream> = streams.iter().filter_map(|s| s.try_clone().ok()).collect();
    shared.conns().insert(id, clones);
    if shared.alive(generation) {
        Some(id)
    } else {
        for s in streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        shared.conns().remove(&id);
        None
    }
}

fn handle_connection(client: TcpStream, shared: Arc<Shared>) {
    let generation = shared.cut_generation.load(Ordering::SeqCst);
    if shared.blackhole.load(Ordering::SeqCst) {
        // Held open, nothing read or sent, until the black hole ends (then it is forwarded like any other
        // connection: what the client sent meanwhile waits in the socket buffer) or cut_all/drop.
        let Some(id) = register(&shared, generation, &[&client]) else {
            return;
        };
        while shared.blackhole.load(Ordering::SeqCst) && shared.alive(generation) {
            thread::sleep(Duration::from_millis(20));
        }
        shared.conns().remove(&id);
        if !shared.alive(generation) {
            return;
        }
    }
    let target = *shared.target.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let Some(id) = register(&shared, generation, &[&client, &server]) else {
        return;
    };
    let upstream = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => {
            let shared = shared.clone();
            thread::Builder::new()
                .name("proxy-up".into())
                .spawn(move || pump(c, s, &shared, generation, Way::Up))
                .ok()
        }
        _ => None,
    };
    match upstream {
        Some(upstream) => {
            pump(server, client, &shared, generation, Way::Down);
            let _ = upstream.join();
        }
        None => {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
    shared.conns().remove(&id);
}

/// Copies `from` to `to` (going `way`): this thread reads and timestamps chunks, a writer
/// thread delivers each when due (and, under a cap, when the link has room). EOF is passed on as a
/// half-close; any error or a cut shuts down both sockets.
fn pump(mut from: TcpStream, to: TcpStream, shared: &Arc<Shared>, generation: u64, way: Way) {
    let kill_both = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let (Ok(from_w), Ok(to_r)) = (from.try_clone(), to.try_clone()) else {
        kill_both(&from, &to);
        return;
    };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let shared = shared.clone();
        thread::Builder::new().name("proxy-write".into()).spawn(move || {
            let mut to = to;
            for (due, chunk) in rx {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    thread::sleep(wait);
                }
                while shared.blackhole.load(Ordering::SeqCst) && shared.alive(generation) {
                    thread::sleep(PAUSE_POLL);
                }
                for piece in chunk.chunks(BURST_BYTES) {
                    shared.take_tokens(way, piece.len());
                    // Counted before the write: a reader that got the bytes sees them counted.
                    shared.carried[way as usize].fetch_add(piece.len() as u64, Ordering::SeqCst);
                    if !shared.alive(generation) || to.write_all(piece).is_err() {
                        kill_both(&from_w, &to);
                        return;
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write); // pass EOF on
        })
    };
    let Ok(writer) = writer else {
        kill_both(&from, &to_r);
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let latency = Duration::from_micros(shared.latency_us.load(Ordering::SeqCst));
                if tx.send((Instant::now() + latency, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                kill_both(&from, &to_r);
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
