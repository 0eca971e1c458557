//! Log lines as journald sees them: under systemd (JOURNAL_STREAM names stderr) every line carries its
//! syslog priority (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug) and no timestamp; anywhere else the
//! timestamped format. A requested stop during an outage logs no error.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::daemon::BIN;
use crate::support::{pg, unique_temp_dir, wait_until};

/// The binary with exactly `env`, stderr to a file; `journal`: JOURNAL_STREAM set to that file's
/// `<dev>:<inode>` as systemd does, or to this given value.
struct Run {
    child: Child,
    stderr: PathBuf,
    dir: PathBuf,
}

enum Journal {
    ThisStderr,
    Value(&'static str),
}

impl Run {
    fn start(args: &[&str], env: &BTreeMap<String, String>, journal: Journal) -> Run {
        let dir = unique_temp_dir("sync-process-journald");
        let stderr = dir.join("stderr");
        let file = File::create(&stderr).expect("creating the stderr file");
        let meta = file.metadata().expect("stat of the stderr file");
        let stream = match journal {
            Journal::ThisStderr => format!("{}:{}", meta.dev(), meta.ino()),
            Journal::Value(v) => v.to_string(),
        };
        let child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .env("JOURNAL_STREAM", stream)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        Run { child, stderr, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the exit; its code (None: still running).
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(timeout, || match self.child.try_wait() {
            Ok(Some(s)) => {
                code = Some(s.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        code
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stderr ---\n{}", self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configuration whose remote is a closed port: cycles fail (error and warn lines), the local side works
/// (info lines), LOG_LEVEL=debug (debug lines).
fn remote_down_env(pair: &pg::DbPair) -> BTreeMap<String, String> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let mut env = pg::env_map_with_remote(pair, "127.0.0.1", closed);
    env.insert("MIGRATE_ON_START".into(), "true".into());
    env.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    env
}

#[test]
fn under_journald_every_line_has_a_priority_and_no_timestamp() {
    let pair = pg::DbPair::new();
    let mut run = Run::start(&["run"], &remote_down_env(&pair), Journal::ThisStderr);
    let failed = wait_until(Duration::from_secs(60), || run.stderr().contains("finished in"));
    assert!(failed, "no finished cycle:\n{}", run.stderr());
    run.signal("TERM");
    assert_eq!(run.wait(Duration::from_secs(30)), Some(0), "{}", run.stderr());
    let text = run.stderr();
    for line in text.lines() {
        let p = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&p),
            "a line without a priority prefix: {line:?}"
        );
        assert!(
            !line.contains("Z INFO") && !line.starts_with('['),
            "a timestamped line: {line:?}"
        );
    }
    for (p, what) in [("<3>", "error"), ("<4>", "warn"), ("<6>", "info"), ("<7>", "debug")] {
        assert!(text.lines().any(|l| l.starts_with(p)), "no {what} line ({p}):\n{text}");
    }
    // The right priority for the right line: the failed download is an error, the summary a warning.
    assert!(
        text.lines()
            .any(|l| l.starts_with("<3>sync_process::download: download of meters failed")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("finished in") && l.contains("with failures")),
        "{text}"
    );
    // The multi-line configuration summary: each of its lines at info, not only the first.
    let start = text.find("starting; configuration:").expect("the start line");
    let next: Vec<&str> = text[start..].lines().skip(1).take(3).collect();
    assert!(next.iter().all(|l| l.starts_with("<6>")), "{next:?}");
}

#[test]
fn without_journald_lines_keep_their_timestamp() {
    let pair = pg::DbPair::new();
    // JOURNAL_STREAM inherited by a process whose stderr is something else: systemd's rule says plain.
    let mut run = Run::start(&["run"], &remote_down_env(&pair), Journal::Value("1:2"));
    assert!(
        wait_until(Duration::from_secs(60), || run.stderr().contains("finished in")),
        "{}",
        run.stderr()
    );
    run.signal("TERM");
    assert_eq!(run.wait(Duration::from_secs(30)), Some(0));
    let text = run.stderr();
    let first = text.lines().next().expect("a line");
    assert!(
        first.starts_with("[20") && first.contains("Z INFO  sync_process"),
        "{first:?}"
    );
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
}

/// A SIGINT while a database is down is a requested stop, not an error: no error line from the signal on,
/// exit 0. Both outages: the local database (the cycle lock cannot be taken) and the remote (the upload
/// waits in its retry backoff).
#[test]
fn sigint_during_an_outage_logs_no_error() {
    let pair = pg::DbPair::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let mut local_down = pg::env_map(&pair);
    local_down.insert("POSTGRES_SYNC_PORT".into(), closed.to_string());
    let mut remote_down = remote_down_env(&pair);
    for env in [&mut local_down, &mut remote_down] {
        // Long backoffs: the signal lands while a retry waits.
        env.insert("RETRY_BASE_DELAY_MS".into(), "3000".into());
        env.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
        env.insert("LOG_LEVEL".into(), "info".into());
    }
    for (what, env) in [("local down", local_down), ("remote down", remote_down)] {
        let mut run = Run::start(&["run"], &env, Journal::ThisStderr);
        let waiting = wait_until(Duration::from_secs(60), || run.stderr().contains("starting"));
        assert!(waiting, "{what}: did not start:\n{}", run.stderr());
        std::thread::sleep(Duration::from_millis(1500));
        run.signal("INT");
        assert_eq!(run.wait(Duration::from_secs(30)), Some(0), "{what}: {}", run.stderr());
        let text = run.stderr();
        let at = text
            .find("SIGINT received")
            .unwrap_or_else(|| panic!("{what}: no SIGINT line:\n{text}"));
        let errors: Vec<&str> = text[at..].lines().filter(|l| l.starts_with("<3>")).collect();
        assert!(errors.is_empty(), "{what}: errors after SIGINT: {errors:?}\n{text}");
        assert!(text[at..].contains("sync-process stopped"), "{what}:\n{text}");
    }
}
