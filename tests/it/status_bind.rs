//! STATUS_BIND on a port that is taken: the daemon keeps syncing, says so once, tries again each interval and
//! serves as soon as the port is free; under systemd (NOTIFY_SOCKET) it gives up after
//! `BIND_ATTEMPTS_UNDER_SYSTEMD` attempts and exits 1, so the failure shows and systemd restarts it. And the
//! `status` command, which needs STATUS_BIND alone (or `--url`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use crate::support::daemon::{run_command, Daemon};
use crate::support::pg::{env_map, DbPair};
use crate::support::{unique_temp_dir, wait_until};
use sync_process::status::BIND_ATTEMPTS_UNDER_SYSTEMD;

fn taken_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a port to take it");
    let port = l.local_addr().expect("its address").port();
    (l, port)
}

fn env_with_status(pair: &DbPair, port: u16) -> BTreeMap<String, String> {
    let mut env = env_map(pair);
    env.insert("MIGRATE_ON_START".into(), "true".into());
    env.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
    env.insert("LOG_LEVEL".into(), "info".into());
    env
}

fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.")
}

#[test]
fn a_taken_port_is_reported_once_and_tried_again_until_it_is_free() {
    let pair = DbPair::new();
    let (holder, port) = taken_port();
    let mut daemon = Daemon::spawn(&["run"], &env_with_status(&pair, port));
    let synced = wait_until(Duration::from_secs(60), || {
        daemon.stderr_text().matches("every part succeeded").count() >= 3
    });
    assert!(synced, "the daemon does not sync without its status server");
    let text = daemon.stderr_text();
    let reports: Vec<&str> = text.lines().filter(|l| l.contains("cannot listen on")).collect();
    assert_eq!(reports.len(), 1, "one report, not one per cycle: {reports:?}");
    assert!(
        reports[0].contains(" ERROR ") && reports[0].contains(&format!("127.0.0.1:{port}")),
        "{}",
        reports[0]
    );
    drop(holder);
    let serving = wait_until(Duration::from_secs(30), || healthz(port));
    assert!(serving, "the status server did not start once the port was free");
    assert!(
        daemon.wait_for_stderr(&format!("listening on 127.0.0.1:{port} after"), Duration::from_secs(5)),
        "no line saying the server now listens"
    );
    assert!(daemon.is_running(), "outside systemd the daemon never gives up");
    daemon.signal("TERM");
    assert!(daemon
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

#[test]
fn under_systemd_a_port_that_stays_taken_ends_the_daemon_with_exit_1() {
    let pair = DbPair::new();
    let (_holder, port) = taken_port();
    let dir = unique_temp_dir("sync-process-notify");
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).expect("a notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut env = env_with_status(&pair, port);
    env.insert("NOTIFY_SOCKET".into(), dir.join("notify").display().to_string());
    let mut daemon = Daemon::spawn(&["run"], &env);
    // One attempt per 1 s interval: the daemon gives up after about BIND_ATTEMPTS_UNDER_SYSTEMD seconds.
    let limit = Duration::from_secs(u64::from(BIND_ATTEMPTS_UNDER_SYSTEMD) * 3 + 30);
    let status = daemon.wait_timeout(limit);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "exit status {status:?}");
    let text = daemon.stderr_text();
    assert!(
        text.contains(&format!("giving up after {BIND_ATTEMPTS_UNDER_SYSTEMD} attempts")),
        "{text}"
    );
    assert!(text.matches("every part succeeded").count() >= 1, "it synced meanwhile");
    let mut told = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = notify.recv(&mut buf) {
        told.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        told.iter()
            .any(|m| m.starts_with("STATUS=cycle ") && m.contains("no status server (")),
        "systemd was not told: {told:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sync-process status` reads STATUS_BIND alone (or `--url`): a monitoring user without the env file and
/// its passwords can ask the daemon.
#[test]
fn status_needs_only_status_bind_or_url() {
    let pair = DbPair::new();
    let (holder, port) = taken_port();
    drop(holder);
    let mut daemon = Daemon::spawn(&["run"], &env_with_status(&pair, port));
    assert!(
        wait_until(Duration::from_secs(60), || healthz(port)),
        "the daemon's status server did not come up"
    );
    let only_bind: BTreeMap<String, String> = [("STATUS_BIND".to_string(), format!("127.0.0.1:{port}"))].into();
    let out = run_command(&["status", "--json"], &only_bind);
    assert!(out.status.success(), "status with STATUS_BIND alone: {}", out.stderr);
    assert!(out.stdout.contains("\"isRunning\":true"), "{}", out.stdout);
    assert!(
        !out.stderr.contains("not set"),
        "asked for other variables: {}",
        out.stderr
    );
    let url = format!("http://127.0.0.1:{port}/");
    let out = run_command(&["status", "--url", &url], &BTreeMap::new());
    assert!(
        out.status.success(),
        "status --url with no variable at all: {}",
        out.stderr
    );
    assert!(out.stdout.contains(&format!("127.0.0.1:{port}")), "{}", out.stdout);
    let out = run_command(&["status", "--url", "https://127.0.0.1:1"], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("accepted: http://HOST:PORT"), "{}", out.stderr);
    // A bad STATUS_BIND is still named; nothing else is asked for.
    let bad: BTreeMap<String, String> = [("STATUS_BIND".to_string(), "nonsense".to_string())].into();
    let out = run_command(&["status"], &bad);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("STATUS_BIND") && !out.stderr.contains("POSTGRES_"),
        "{}",
        out.stderr
    );
    daemon.signal("TERM");
    assert!(daemon
        .wait_timeout(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}
