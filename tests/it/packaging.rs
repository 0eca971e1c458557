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
