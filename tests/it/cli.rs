//! Integration tests: the binary's command line, configuration errors and check-config, run as a child
//! process exactly as an operator would.

use std::collections::BTreeMap;

use crate::support::daemon::run_command;
use crate::support::pg::{env_map, DbPair};
use crate::support::unique_temp_dir;

const SECRET: &str = "pw-that-must-never-show-7f3a";

#[test]
fn version_and_help() {
    let out = run_command(&["--version"], &BTreeMap::new());
    assert!(out.status.success());
    assert_eq!(out.stdout.trim(), format!("sync-process {}", env!("CARGO_PKG_VERSION")));
    let out = run_command(&["--help"], &BTreeMap::new());
    assert!(out.status.success());
    for cmd in [
        "run",
        "once",
        "migrate",
        "status",
        "check-config",
        "quarantine",
        "demo",
        "mcp",
    ] {
        assert!(out.stdout.contains(cmd), "--help lists {cmd}");
    }
    let out = run_command(&["migrate", "--help"], &BTreeMap::new());
    assert!(
        out.status.success() && out.stdout.contains("--dry-run"),
        "{}",
        out.stdout
    );
    let out = run_command(&["frobnicate"], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("unknown command \"frobnicate\""), "{}", out.stderr);
}

#[test]
fn check_config_names_every_bad_variable_and_exits_2() {
    let mut env = BTreeMap::new();
    env.insert("POSTGRES_SYNC_PASSWORD".to_string(), SECRET.to_string());
    env.insert("POSTGRES_CLIENT_PASSWORD".to_string(), SECRET.to_string());
    env.insert("BATCH_SIZE".to_string(), "abc".to_string());
    env.insert("POSTGRES_CLIENT_PORT".to_string(), "0".to_string());
    env.insert("LOG_LEVEL".to_string(), "chatty".to_string());
    let out = run_command(&["check-config"], &env);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    for needle in [
        "POSTGRES_SYNC_HOST: not set",
        "POSTGRES_SYNC_DB: not set",
        "POSTGRES_SYNC_USER: not set",
        "POSTGRES_CLIENT_HOST: not set",
        "POSTGRES_CLIENT_PORT: \"0\" is out of range (1..=65535)",
        "BATCH_SIZE: \"abc\" is not a whole number (1..=100000)",
        "LOG_LEVEL: \"chatty\" is not a log level",
    ] {
        assert!(out.stderr.contains(needle), "missing {needle:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains(SECRET) && !out.stdout.contains(SECRET));
}

#[test]
fn check_config_tests_both_connections() {
    let pair = DbPair::new();
    let mut env = env_map(&pair);
    env.insert("POSTGRES_SYNC_PASSWORD".into(), SECRET.into());
    let out = run_command(&["check-config"], &env);
    assert!(out.status.success(), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("local database") && out.stdout.contains("connected"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[redacted]"));
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));

    // The remote on a port where nothing listens: exit 1, the local still reported connected.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    env.insert("POSTGRES_CLIENT_PORT".into(), free.to_string());
    let out = run_command(&["check-config"], &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("remote database: UNREACHABLE"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("127.0.0.1:{free}")),
        "names host and port: {}",
        out.stdout
    );
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[test]
fn env_file_is_read_and_the_environment_wins() {
    let pair = DbPair::new();
    let env = env_map(&pair);
    let dir = unique_temp_dir("sp-envfile");
    let path = dir.join("sync-process.env");
    let mut text = String::from("# test env file\n");
    for (k, v) in &env {
        if k != "POSTGRES_CLIENT_DB" {
            text.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    text.push_str("POSTGRES_CLIENT_DB=no_such_database\nBATCH_SIZ=5\n");
    std::fs::write(&path, text).expect("write env file");
    let only_db: BTreeMap<String, String> = [("POSTGRES_CLIENT_DB".to_string(), pair.remote.name().to_string())]
        .into_iter()
        .collect();
    let path_s = path.display().to_string();
    let out = run_command(&["--env-file", &path_s, "check-config"], &only_db);
    assert!(out.status.success(), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(pair.remote.name()),
        "the environment's POSTGRES_CLIENT_DB won: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("did you mean BATCH_SIZE?"),
        "typo warned: {}",
        out.stderr
    );

    std::fs::write(&path, "GOOD=1\nthis is not a variable\n").expect("write bad env file");
    let out = run_command(&["--env-file", &path_s, "check-config"], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("line 2: expected KEY=VALUE"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn migrate_command_twice() {
    let pair = DbPair::new();
    let env = env_map(&pair);
    let out = run_command(&["migrate", "--dry-run"], &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("would apply 0001_seed_schema.sql"),
        "{}",
        out.stdout
    );
    let out = run_command(&["migrate"], &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("applied 0001_seed_schema.sql"), "{}", out.stdout);
    let out = run_command(&["migrate"], &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.matches("up to date").count(), 2, "{}", out.stdout);
}
