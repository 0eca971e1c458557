//! `sync-process demo` as a person runs it: two throwaway servers, readings flowing up, Ctrl-C cleans up
//! (or, with `--keep`, hands the servers over). The .deb itself is checked by `.ci/package`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::{pg, wait_until};

/// The data dirs the demo printed (`data dir <path>` lines of its banner).
fn data_dirs(stdout: &str) -> Vec<PathBuf> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("data dir "))
        .map(PathBuf::from)
        .collect()
}

/// The largest "uploaded (remote readings) N" of the demo's status lines.
fn uploaded(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter_map(|l| l.split("uploaded (remote readings) ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn start_demo(args: &[&str]) -> Daemon {
    pg::bin_dir(); // the install hint, if the server binaries are missing
    Daemon::spawn(args, &BTreeMap::new())
}

#[test]
fn demo_syncs_readings_and_ctrl_c_removes_everything() {
    let mut demo = start_demo(&["demo"]);
    let synced = wait_until(Duration::from_secs(120), || {
        uploaded(&demo.stdout_text()) > 0 || !demo.is_running()
    });
    let stdout = demo.stdout_text();
    assert!(
        synced && demo.is_running(),
        "no status line with uploaded readings > 0 while the demo ran\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        demo.stderr_text()
    );
    let dirs = data_dirs(&stdout);
    assert_eq!(dirs.len(), 2, "two data dirs in the banner:\n{stdout}");
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "data dirs exist while the demo runs: {dirs:?}"
    );
    assert!(
        stdout.contains("psql -h 127.0.0.1 -p "),
        "the banner says how to connect:\n{stdout}"
    );
    assert!(stdout.contains("/status"), "the banner names the status URL:\n{stdout}");
    // The banner hands over the demo's variables for other commands, which work while it runs.
    let env_file = dirs[0].join("sync-process-demo.env");
    assert!(
        stdout.contains(&format!("--env-file {} quarantine list", env_file.display())),
        "{stdout}"
    );
    let out = crate::support::daemon::run_command(
        &["--env-file", &env_file.display().to_string(), "quarantine", "list"],
        &BTreeMap::new(),
    );
    assert!(
        out.status.success(),
        "quarantine list with the demo's env file: {}",
        out.stderr
    );
    let url = stdout
        .split("status --url ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a status --url line");
    let out = crate::support::daemon::run_command(&["status", "--url", url], &BTreeMap::new());
    assert!(out.status.success(), "status --url {url}: {}", out.stderr);

    demo.signal("INT");
    let status = demo.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "demo did not exit 0 within 20 s of SIGINT: {status:?}\n--- stderr ---\n{}",
        demo.stderr_text()
    );
    for d in &dirs {
        assert!(!d.exists(), "{} still exists after the demo exited", d.display());
    }
}

#[test]
fn demo_keep_leaves_servers_running_and_says_how_to_stop_them() {
    let mut demo = start_demo(&["demo", "--keep"]);
    let started = wait_until(Duration::from_secs(120), || {
        demo.stdout_text().contains("[demo ") || !demo.is_running()
    });
    assert!(
        started && demo.is_running(),
        "demo --keep did not start:\n{}",
        demo.stderr_text()
    );
    demo.signal("INT");
    let status = demo.wait_timeout(Duration::from_secs(20));
    let stdout = demo.stdout_text();
    let dirs = data_dirs(&stdout);
    // Stop the kept servers whatever the assertions below say.
    let _cleanup = KeptServers(dirs.clone());
    assert!(
        status.is_some_and(|s| s.success()),
        "demo --keep exit: {status:?}\n{}",
        demo.stderr_text()
    );
    assert_eq!(dirs.len(), 2, "{stdout}");
    for d in &dirs {
        assert!(
            d.join("PG_VERSION").is_file(),
            "{} was removed despite --keep",
            d.display()
        );
        assert!(
            stdout.contains(&format!("-D {} stop", d.display())),
            "no stop command for {}:\n{stdout}",
            d.display()
        );
        assert!(
            pg_ctl(d, "status"),
            "server in {} is not running after demo --keep",
            d.display()
        );
    }
    let env_file = dirs[0].join("sync-process-demo.env");
    let env = std::fs::read_to_string(&env_file).expect("the env file for `sync-process run`");
    assert!(env.contains("POSTGRES_SYNC_DB=meterit_sync") && env.contains("POSTGRES_CLIENT_DB=meterit_client"));
    assert!(
        stdout.contains(&format!("--env-file {} run", env_file.display())),
        "{stdout}"
    );
}

/// Runs `pg_ctl <action> -D dir` as the server's owner; true on success.
fn pg_ctl(dir: &std::path::Path, action: &str) -> bool {
    let pg_ctl = pg::bin_dir().join("pg_ctl");
    let mut cmd = if pg::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    cmd.arg(action).arg("-D").arg(dir).current_dir("/");
    if action == "stop" {
        cmd.args(["-m", "immediate", "-w"]);
    }
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Stops and removes the servers a `--keep` demo left behind.
struct KeptServers(Vec<PathBuf>);

impl Drop for KeptServers {
    fn drop(&mut self) {
        for d in &self.0 {
            pg_ctl(d, "stop");
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The unit's `SystemCallFilter=~@privileged @resources` and `ProcSubset=pid` hold for what the daemon really
/// does: `run` (both pools, the status server answering, a log file, sd_notify with the watchdog, the host name
/// as SYNC_SOURCE_ID, SIGTERM) and `once`, each under strace, make no syscall of those sets and open nothing in
/// /proc outside the process's own directory. The sets are systemd's own (`systemd-analyze syscall-filter`).
#[test]
fn daemon_syscalls_fit_the_units_filter_and_proc_subset() {
    let strace = which("strace", "apt-get install strace");
    which("systemd-analyze", "apt-get install systemd");
    let pair = crate::support::pg::DbPair::new();
    let dir = crate::support::unique_temp_dir("sync-process-strace");
    let mut env = pg::env_map(&pair);
    env.remove("SYNC_SOURCE_ID");
    env.insert("MIGRATE_ON_START".into(), "true".into());
    env.insert(
        "LOG_FILE".into(),
        dir.join("log/sync-process.log").display().to_string(),
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address").port()
    };
    env.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).expect("binding a notify socket");
    env.insert("NOTIFY_SOCKET".into(), dir.join("notify").display().to_string());
    env.insert("WATCHDOG_USEC".into(), "1000000".into());

    let traced = |args: &[&str], out: &str| {
        let mut cmd = Command::new(&strace);
        cmd.args(["-f", "-qq", "-o"])
            .arg(dir.join(out))
            .arg(crate::support::daemon::BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{out}.stdout"))).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join(format!("{out}.stderr"))).expect("stderr file"));
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", strace.display()))
    };
    let mut run = traced(&["run"], "run.trace");
    let stderr = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.stderr"))).unwrap_or_default();
    let cycled = wait_until(Duration::from_secs(60), || {
        stderr("run.trace").matches("every part succeeded").count() >= 2
    });
    assert!(
        cycled,
        "the traced daemon ran no two good cycles:\n{}",
        stderr("run.trace")
    );
    let status = http_get(port, "/status");
    assert!(status.contains("\"isRunning\":true"), "{status}");
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification from the daemon");
    assert!(!buf[..n].is_empty());
    // SIGTERM to the daemon itself (strace's child), not to strace.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.id())).expect("strace's child");
    let daemon_pid = children
        .split_whitespace()
        .next()
        .expect("strace has a child")
        .to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &daemon_pid])
        .status()
        .expect("kill")
        .success());
    let exited = wait_until(Duration::from_secs(30), || matches!(run.try_wait(), Ok(Some(_))));
    assert!(
        exited,
        "the traced daemon did not stop on SIGTERM:\n{}",
        stderr("run.trace")
    );
    let mut once = traced(&["once"], "once.trace");
    let code = once.wait().expect("waiting for the traced once");
    assert!(code.success(), "traced once failed:\n{}", stderr("once.trace"));

    let denied = denied_syscalls(&["@privileged", "@resources"]);
    assert!(denied.contains("setuid") && denied.contains("setrlimit"), "{denied:?}");
    for trace in ["run.trace", "once.trace"] {
        let text = std::fs::read_to_string(dir.join(trace)).expect("the trace");
        let calls = syscalls(&text);
        assert!(
            calls.contains("connect") && calls.contains("openat"),
            "{trace}: {calls:?}"
        );
        let bad: Vec<&String> = calls.intersection(&denied).collect();
        assert!(bad.is_empty(), "{trace}: syscalls the unit's filter denies: {bad:?}");
        let outside: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("open"))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|p| p.starts_with("/proc/"))
            .filter(|p| {
                let first = p["/proc/".len()..].split('/').next().unwrap_or("");
                !(first == "self" || first == "thread-self" || first.chars().all(|c| c.is_ascii_digit()))
            })
            .collect();
        assert!(outside.is_empty(), "{trace}: opens outside ProcSubset=pid: {outside:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The path of `tool`, or a failure saying what to install.
fn which(tool: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed: {install}"))
}

/// The syscall names in an strace log (`PID name(...`).
fn syscalls(trace: &str) -> std::collections::BTreeSet<String> {
    trace
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
            let name = &rest[..rest.find('(')?];
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_string())
        })
        .collect()
}

/// The syscalls of systemd's groups, nested groups expanded (`systemd-analyze syscall-filter`).
fn denied_syscalls(groups: &[&str]) -> std::collections::BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("running systemd-analyze syscall-filter");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(group) = line.strip_prefix('@') {
            current = Some(format!("@{}", group.trim()));
            continue;
        }
        let entry = line.trim();
        if let (Some(g), false) = (&current, entry.is_empty() || entry.starts_with('#')) {
            sets.entry(g.clone()).or_default().push(entry.to_string());
        }
    }
    let mut todo: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let mut names = std::collections::BTreeSet::new();
    while let Some(g) = todo.pop() {
        for e in sets
            .get(&g)
            .unwrap_or_else(|| panic!("systemd-analyze knows no group {g}"))
        {
            if e.starts_with('@') {
                todo.push(e.clone());
            } else {
                names.insert(e.clone());
            }
        }
    }
    names
}

/// A plain HTTP/1.0 GET on 127.0.0.1:port.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the status server");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("sending the request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("reading the answer");
    body
}
