//! Integration tests: monitoring a fleet can import (issue 16, part 2). A live daemon's /metrics is checked by
//! `promtool check metrics`; the shipped alerting rules by `promtool check rules` and their unit tests by
//! `promtool test rules`; every metric name that the rules and the Grafana dashboard query must appear in a live
//! scrape. promtool comes from Debian's `prometheus` package (.ci/run installs it); without it these tests fail
//! saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::env::{closed_port, Env};
use crate::support::wait_until;

const PATIENCE: Duration = Duration::from_secs(60);

/// packaging/monitoring/ in the repository.
fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring")
}

/// `promtool <args>` with `stdin` piped in; fails the test in one line when promtool is not installed.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = match Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("promtool not found: apt-get install -y prometheus")
        }
        Err(e) => panic!("could not start promtool: {e}"),
    };
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin");
        pipe.write_all(text.as_bytes()).expect("writing to promtool");
    }
    child.wait_with_output().expect("waiting for promtool")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A bare HTTP/1.0 GET: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `name{labels}` -> value of the sample lines.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The metric names of the sample lines.
fn sample_names(text: &str) -> BTreeSet<String> {
    samples(text)
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k).to_string())
        .collect()
}

/// A daemon with its status server, after its first finished cycle (100 readings uploaded); and /metrics.
fn live_scrape() -> (Env, Daemon, String) {
    let port = closed_port();
    let bind = format!("127.0.0.1:{port}");
    let mut env = Env::new(&[("STATUS_BIND", &bind), ("SYNC_INTERVAL_SECONDS", "3600")]);
    env.local
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit)
             SELECT 'm1', TIMESTAMP '2024-01-01' + i * INTERVAL '1 s', i, 'kWh' FROM generate_series(1, 100) AS i",
        )
        .expect("seeding readings");
    let d = Daemon::spawn(&["run"], &env.map);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut text = String::new();
    let done = wait_until(PATIENCE, || match http_get(addr, "/metrics") {
        Some((200, body)) if samples(&body).get("sync_process_cycles_total").map(String::as_str) == Some("1") => {
            text = body;
            true
        }
        _ => false,
    });
    assert!(
        done,
        "the daemon reports its first cycle on /metrics:\n{}",
        d.stderr_text()
    );
    (env, d, text)
}

// A live scrape is clean for `promtool check metrics` (names, units, types, HELP) and carries what a fleet
// needs: build info with version and site, per-part histograms and failure counters, the process metrics.
#[test]
fn a_live_scrape_passes_promtool_check_metrics() {
    let (_env, mut d, text) = live_scrape();
    let out = promtool(&["check", "metrics"], Some(&text));
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}\n--- scrape ---\n{text}",
        show(&out)
    );
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lint.trim().is_empty(), "promtool check metrics has remarks:\n{lint}");

    let m = samples(&text);
    assert_eq!(
        m[&format!(
            "sync_process_build_info{{version=\"{}\",source_id=\"test-site\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        "1"
    );
    assert_eq!(m["sync_process_readings_uploaded_total"], "100");
    assert_eq!(m["sync_process_queued_readings"], "0");
    assert_eq!(m["sync_process_consecutive_failures"], "0");
    for part in ["upload", "download_meters", "download_tenants"] {
        assert_eq!(m[&format!("sync_process_part_failures_total{{part=\"{part}\"}}")], "0");
        assert_eq!(
            m[&format!("sync_process_cycle_duration_seconds_count{{part=\"{part}\"}}")],
            "1"
        );
        assert_eq!(
            m[&format!("sync_process_cycle_duration_seconds_bucket{{part=\"{part}\",le=\"+Inf\"}}")],
            "1"
        );
    }
    let rss: u64 = m["process_resident_memory_bytes"].parse().expect("rss is a number");
    assert!(rss > 1024 * 1024, "a daemon holds more than 1 MiB: {rss}");
    let started: f64 = m["process_start_time_seconds"].parse().expect("start time");
    let now = sync_process::status::unix_now() as f64;
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "started {started}, now {now}"
    );
    assert!(m["process_cpu_seconds_total"].parse::<f64>().is_ok());
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}
