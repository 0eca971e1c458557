//! [`Daemon`]: the crate's `sync-process` binary as an RAII child process, and
//! [`run_command`] for one-shot invocations.
//!
//! The child gets a cleared environment (plus PATH and HOME) and the given
//! variables; stdout and stderr go to files in a temp dir (never pipes, so a
//! chatty child cannot block). Drop kills (-9) and reaps a still-running child,
//! prints the tail of its stderr if the test is panicking, and removes the dir.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sync-process");

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A running (or finished) `sync-process` child.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts the binary with `args` and exactly `env` (plus PATH and HOME, which `env` may override).
    pub fn spawn(args: &[&str], env: &BTreeMap<String, String>) -> Daemon {
        let dir = super::unique_temp_dir("sync-process-daemon");
        let create = |name: &str| {
            File::create(dir.join(name)).unwrap_or_else(|e| panic!("creating {}/{name}: {e}", dir.display()))
        };
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.envs(env)
            .stdin(Stdio::null())
            .stdout(create("stdout"))
            .stderr(create("stderr"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {BIN}: {e}"));
        Daemon {
            child,
            dir,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name via `kill`: "TERM", "SIGHUP", "INT", "KILL", ...
    pub fn signal(&self, sig: &str) {
        assert!(
            self.status.is_none(),
            "signal {sig}: the daemon has already been reaped"
        );
        let sig = sig.trim_start_matches('-').trim_start_matches("SIG");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("could not run kill: {e}"));
        assert!(status.success(), "kill -{sig} {} failed ({status})", self.pid());
    }

    /// The exit status if the child exits within `timeout` (or had already exited).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waiting for the daemon (try_wait)");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.read_output("stderr")
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.read_output("stdout")
    }

    /// Waits until stderr contains `needle`; true if it did within `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.stderr_text().contains(needle))
    }

    /// SIGKILL and reap; returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for the killed daemon");
        self.status = Some(status);
        status
    }

    fn read_output(&self, name: &str) -> String {
        let path = self.dir.join(name);
        String::from_utf8_lossy(&fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
            .into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let stderr = String::from_utf8_lossy(&fs::read(self.dir.join("stderr")).unwrap_or_default()).into_owned();
            let lines: Vec<&str> = stderr.lines().collect();
            eprintln!(
                "--- last stderr lines of sync-process (pid {}) ---\n{}",
                self.child.id(),
                lines[lines.len().saturating_sub(100)..].join("\n")
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Result of [`run_command`].
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to completion (120 s limit, then it is killed and the test panics).
pub fn run_command(args: &[&str], env: &BTreeMap<String, String>) -> RunOutput {
    let mut daemon = Daemon::spawn(args, env);
    let Some(status) = daemon.wait_timeout(RUN_TIMEOUT) else {
        daemon.kill();
        panic!(
            "`sync-process {}` did not finish within {RUN_TIMEOUT:?}",
            args.join(" ")
        );
    };
    RunOutput {
        status,
        stdout: daemon.stdout_text(),
        stderr: daemon.stderr_text(),
    }
}
