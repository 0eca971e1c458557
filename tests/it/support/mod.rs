//! Integration-test support harness.
//!
//! * [`pg`]: throwaway PostgreSQL servers, per-test databases and the daemon's
//!   environment for a pair of databases.
//! * [`proxy`]: a fault-injecting TCP proxy (latency, cuts, black hole, refusal).
//! * [`daemon`]: the crate's binary as an RAII child process.
//!
//! This module also owns the small helpers shared by the three: unique temp
//! dirs and polling.
#![allow(dead_code)]

pub mod daemon;
pub mod pg;
pub mod proxy;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Creates a fresh directory `temp_dir()/<prefix>-<pid>-<counter>-<nanos>`.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("could not create temp dir {}: {e}", dir.display()));
    dir
}

/// Polls `cond` every 20 ms until it is true (returns true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
