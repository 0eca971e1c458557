//! stdout that cannot be written: a reader that went away (EPIPE, `sync-process --help | head -0`) is no
//! failure (exit 0 when the work succeeded, quietly); any other write error (`> /dev/full`) exits 1 with one
//! `sync-process: ...` line; never a panic (exit 101 and a backtrace), whatever the command.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};

use crate::support::daemon::{run_command, BIN};
use crate::support::pg::{env_map, DbPair};

/// Where the child's stdout goes.
enum Stdout {
    /// A stream whose other end is already closed: every write fails with EPIPE, whatever the timing.
    ClosedPipe,
    /// /dev/full: every write fails with ENOSPC.
    Full,
}

fn run(args: &[&str], env: &BTreeMap<String, String>, stdout: Stdout) -> Output {
    let stdout = match stdout {
        Stdout::ClosedPipe => {
            let (ours, theirs) = UnixStream::pair().expect("a socket pair");
            drop(ours);
            Stdio::from(std::os::fd::OwnedFd::from(theirs))
        }
        Stdout::Full => Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        ),
    };
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running {BIN}: {e}"))
}

fn no_panic(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(101), "{what}: panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: panicked:\n{stderr}");
    stderr
}

#[test]
fn a_closed_stdout_exits_0_without_a_word() {
    let none = BTreeMap::new();
    for args in [
        &["--help"][..],
        &["--version"],
        &["help", "quarantine"],
        &["migrate", "--help"],
    ] {
        let out = run(args, &none, Stdout::ClosedPipe);
        let stderr = no_panic(&out, &args.join(" "));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn a_full_stdout_exits_1_with_one_line() {
    let none = BTreeMap::new();
    for args in [&["--help"][..], &["--version"]] {
        let out = run(args, &none, Stdout::Full);
        let stderr = no_panic(&out, &args.join(" "));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "sync-process: writing to stdout: No space left on device (os error 28)",
            "{args:?}"
        );
    }
}

/// The commands that talk to the databases print through the same path: `once`, `check-config`, `migrate`
/// and `quarantine list` (the `status` command uses it too; tests/it/service.rs runs it against a daemon).
#[test]
fn database_commands_survive_an_unwritable_stdout() {
    let pair = DbPair::new();
    let env = env_map(&pair);
    assert!(run_command(&["migrate"], &env).status.success());
    for args in [
        &["once"][..],
        &["check-config"],
        &["migrate"],
        &["quarantine", "list"],
        &["quarantine", "list", "--json"],
    ] {
        let full = run(args, &env, Stdout::Full);
        let stderr = no_panic(&full, &args.join(" "));
        assert_eq!(full.status.code(), Some(1), "{args:?} > /dev/full: {stderr}");
        assert!(
            stderr.contains("writing to stdout: No space left on device"),
            "{args:?}: {stderr}"
        );
        let closed = run(args, &env, Stdout::ClosedPipe);
        let stderr = no_panic(&closed, &args.join(" "));
        assert_eq!(closed.status.code(), Some(0), "{args:?} | head -0: {stderr}");
        assert!(!stderr.contains("ERROR"), "{args:?} | head -0: {stderr}");
    }
}
