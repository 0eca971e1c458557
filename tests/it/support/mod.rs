//! Integration-test support harness.
//!
//! * [`pg`]: throwaway PostgreSQL servers, per-test databases and the daemon's
//!   environment for a pair of databases.
//! * [`proxy`]: a fault-injecting TCP proxy (latency, cuts, black hole, refusal).
//! * [`daemon`]: the crate's binary as an RAII child process.
//! * [`contract`]: the JSON field names of the contract's results.
//! * [`env`]: [`env::Env`], the one test fixture (pair, variables, config, pools, clients, optional proxy),
//!   and the helpers every area uses (`count`, `once_json`, `closed_port`, `migrate`).
//! * [`readings`]: [`readings::Reading`], the one reading type (column texts, compared as multisets), its
//!   inserts and snapshots, and `assert_exactly_once`.
//!
//! This module also owns the small helpers shared by them: unique temp
//! dirs and polling.
#![allow(dead_code)]

pub mod citus;
pub mod contract;
pub mod daemon;
pub mod env;
pub mod pg;
pub mod pgbouncer;
pub mod proxy;
pub mod readings;
pub mod standby;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

/// Creates a fresh directory `temp_dir()/<prefix>-<pid>-<counter>-<nanos>`.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    sync_process::pgtemp::unique_temp_dir(prefix).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the openssl CLI in `dir`; fails the test in one line when it is missing.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("could not run openssl (install it with apt-get install -y openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets the flag when dropped: a sampler thread that loops until its flag is set stops even when the test
/// body beside it panics (inside `thread::scope`, a panic would otherwise wait for the sampler forever).
pub struct SetOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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
