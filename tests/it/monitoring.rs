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

// The shipped rules load (`promtool check rules`) and behave as their unit tests say (`promtool test rules`:
// input series for two boxes, each alert just before and just after its `for`, with labels and annotations).
#[test]
fn shipped_rules_pass_promtool_check_and_unit_tests() {
    let dir = monitoring_dir();
    let rules = dir.join("sync-process.rules.yml");
    let out = promtool(&["check", "rules", rules.to_str().expect("path")], None);
    assert!(out.status.success(), "promtool check rules:\n{}", show(&out));
    let found = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(found.contains("SUCCESS: 7 rules found"), "{found}");
    let tests = dir.join("sync-process.rules.test.yml");
    let out = promtool(&["test", "rules", tests.to_str().expect("path")], None);
    assert!(out.status.success(), "promtool test rules:\n{}", show(&out));
    let tested = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(tested.contains("SUCCESS"), "{tested}");
    let text = std::fs::read_to_string(&tests).expect("the rules' test file");
    for alert in rule_alert_names(&std::fs::read_to_string(&rules).expect("the rules")) {
        assert!(
            text.contains(&format!("alertname: {alert}\n")),
            "the rule {alert} has no unit test in {}",
            tests.display()
        );
    }
}

// Every metric the Grafana dashboard and the alerting rules query exists in a live scrape (so neither breaks
// silently when a metric is renamed), and the dashboard shows what a fleet needs: queue, throughput,
// failures, oldest pending age, memory.
#[test]
fn dashboard_and_rules_query_only_metrics_a_live_daemon_exports() {
    let dir = monitoring_dir();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sync-process-dashboard.json")).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard's queries: {exprs:?}");
    let dashboard_names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for needed in [
        "sync_process_queued_readings",
        "sync_process_readings_uploaded_total",
        "sync_process_part_failures_total",
        "sync_process_oldest_pending_reading_age_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(
            dashboard_names.contains(needed),
            "the dashboard lacks {needed}: {dashboard_names:?}"
        );
    }
    let rules = std::fs::read_to_string(dir.join("sync-process.rules.yml")).expect("the rules");
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_string()))
        .collect();
    assert_eq!(rule_exprs.len(), 7, "{rule_exprs:?}");
    let rule_names: BTreeSet<String> = rule_exprs.iter().flat_map(|e| metric_names(e)).collect();

    let (_env, mut d, text) = live_scrape();
    let live = sample_names(&text);
    for (what, names) in [("the dashboard", &dashboard_names), ("the rules", &rule_names)] {
        for name in names {
            // `up` is the series Prometheus itself writes for every scrape target; the certificate expiry is
            // exported only with a client certificate configured (fleet_security.rs scrapes it from one).
            assert!(
                name == "up" || name == CERTIFICATE_EXPIRY || live.contains(name),
                "{what} queries {name}, which a live /metrics does not have:\n{text}"
            );
        }
    }
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}

/// The one metric with no sample unless a client certificate is configured.
const CERTIFICATE_EXPIRY: &str = "sync_process_tls_certificate_expiry_timestamp_seconds";

/// Every `"expr"` string of a Grafana dashboard (panels, nested rows, targets).
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `- alert: Name` names of a rules file (comments skipped).
fn rule_alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_prefix("- alert:").map(|n| n.trim().to_string()))
        .collect()
}

/// PromQL words that are not metric names: aggregations, keywords, modifiers.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers `{...}` and
/// ranges `[...]`, that are not functions (followed by `(`), PromQL words, nor the label lists of
/// `by (...)` / `without (...)` / `on (...)` / `ignoring (...)` / `group_left (...)` / `group_right (...)`.
fn metric_names(expr: &str) -> Vec<String> {
    // Blank out strings, matchers and ranges first.
    let mut plain = String::new();
    let (mut depth_brace, mut depth_bracket, mut quote) = (0usize, 0usize, None::<char>);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace = depth_brace.saturating_sub(1),
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket = depth_bracket.saturating_sub(1),
            (None, c) if depth_brace == 0 && depth_bracket == 0 => {
                plain.push(c);
                continue;
            }
            _ => {}
        }
        plain.push(' ');
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = c.is_ascii_alphabetic() || c == '_' || c == ':';
        let after_number = i > 0 && (chars[i - 1].is_ascii_digit() || chars[i - 1] == '.');
        if !starts || after_number {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let next = chars.get(j).copied();
        let label_list = ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str());
        if label_list && next == Some('(') {
            // Skip the label list.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            continue;
        }
        if next == Some('(') || PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue;
        }
        names.push(word);
    }
    names
}

#[test]
fn metric_names_of_promql() {
    let e = r#"histogram_quantile(0.95, sum by (instance, part, le) (rate(sync_process_cycle_duration_seconds_bucket{job="sync-process", instance=~"$instance"}[$__rate_interval])))"#;
    assert_eq!(metric_names(e), ["sync_process_cycle_duration_seconds_bucket"]);
    assert_eq!(
        metric_names("time() - process_start_time_seconds{job=\"a\"} > 14 * 86400 and on (instance) up == 1"),
        ["process_start_time_seconds", "up"]
    );
    assert_eq!(
        metric_names("sum without(part) (increase(x_total[1h])) / ignoring(le) y"),
        ["x_total", "y"]
    );
    assert_eq!(metric_names("1e3 + 2h"), Vec::<String>::new());
}
