//! Integration tests: alerts where operators look (issue 16, part 3). For each ALERT_WEBHOOK_FORMAT (json,
//! slack, pagerduty) the daemon raises and clears a real alert (the remote refused, then back) against a local
//! HTTP receiver (a std TcpListener thread) that checks each body against the vendor's documented fields:
//! Slack's incoming-webhook message (`text`, blocks of known types), PagerDuty's Events API v2 (`routing_key`,
//! `event_action` trigger/resolve, `dedup_key` equal across both, `payload.summary/source/severity/timestamp`).
//! A receiver that never answers does not slow the cycles. The routing key is never logged or printed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{run_command, Daemon};
use crate::support::env::Env;
use crate::support::pg::{env_map, DbPair};
use crate::support::wait_until;

const PATIENCE: Duration = Duration::from_secs(60);
/// A routing key of the documented shape (32 letters and digits); the tests look for it in every output.
const ROUTING_KEY: &str = "Rk0123456789abcdefSECRETxyz98765";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    body: String,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.body))
    }
}

/// A local HTTP receiver: records every request; answers with `reply` (a whole HTTP response), or, when
/// `reply` is None, accepts and never answers (counting connections opened and closed by the client).
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    accepted: Arc<AtomicUsize>,
    closed_by_client: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(reply: Option<&'static str>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("receiver: binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (reqs, acc, closed) = (requests.clone(), accepted.clone(), closed_by_client.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let (reqs, closed) = (reqs.clone(), closed.clone());
                thread::spawn(move || serve(stream, reply, &reqs, &closed));
            }
        });
        Receiver {
            addr,
            requests,
            accepted,
            closed_by_client,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }
}

fn serve(mut stream: TcpStream, reply: Option<&str>, reqs: &Mutex<Vec<Request>>, closed: &AtomicUsize) {
    let Some(reply) = reply else {
        // Never answer; read until the client gives up.
        let mut buf = [0u8; 4096];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        closed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let request = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let (method, path) = (
            first.next().unwrap_or("").to_string(),
            first.next().unwrap_or("").to_string(),
        );
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if body.len() >= len {
            break Request {
                method,
                path,
                headers,
                body: body.to_string(),
            };
        }
    };
    reqs.lock().expect("requests").push(request);
    let _ = stream.write_all(reply.as_bytes());
}

const OK_200: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
/// What the Events API v2 answers an accepted event with.
const PAGERDUTY_202: &str = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 74\r\n\
    Connection: close\r\n\r\n{\"status\":\"success\",\"message\":\"Event processed\",\"dedup_key\":\"abcdefghijk\"}";

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

/// Runs a daemon whose remote is refused until the first webhook arrives, then let through, until the
/// receiver has `raise` and `clear` requests; returns them (checking that nothing else was sent) and the
/// daemon's stderr.
fn raise_and_clear(format: &str, url: &str, extra: &[(&str, &str)], rx: &Receiver) -> (Request, Request, String) {
    let mut vars = vec![
        ("ALERT_WEBHOOK_FORMAT", format),
        ("ALERT_WEBHOOK_URL", url),
        // Only the remote_db_unreachable alert: no failure run long enough, no queue.
        ("ALERT_AFTER_FAILURES", "1000"),
        ("DB_CONNECTION_TIMEOUT_MS", "300"),
        ("MAX_CONNECTION_RETRIES", "0"),
        ("MAX_QUERY_RETRIES", "0"),
    ];
    vars.extend_from_slice(extra);
    let fixture = Env::builder().remote_via_proxy().vars(&vars).build();
    let proxy = fixture.proxy();
    proxy.set_refuse(true);
    let mut d = Daemon::spawn(&["run"], &fixture.map);
    assert!(
        wait_until(PATIENCE, || !rx.requests().is_empty()),
        "the raise is posted:\n{}",
        d.stderr_text()
    );
    proxy.set_refuse(false);
    assert!(
        wait_until(PATIENCE, || rx.requests().len() >= 2),
        "the clear is posted:\n{}",
        d.stderr_text()
    );
    // Two more cycles: nothing else is sent.
    let done = finished_cycles(&d.stderr_text());
    assert!(wait_until(PATIENCE, || finished_cycles(&d.stderr_text()) >= done + 2));
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one raise and one clear: {reqs:?}");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert!(
            r.headers
                .get("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{r:?}"
        );
    }
    (reqs[0].clone(), reqs[1].clone(), d.stderr_text())
}

fn finished_cycles(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("sync cycle ") && l.contains(" finished in "))
        .count()
}

#[test]
fn json_format_posts_todays_payload() {
    let rx = Receiver::start(Some(OK_200));
    let url = format!("http://{}/hook?token=not-for-logs", rx.addr);
    let (raise, clear, stderr) = raise_and_clear("json", &url, &[], &rx);
    assert_eq!(raise.path, "/hook?token=not-for-logs");
    for (r, state) in [(&raise, "raised"), (&clear, "cleared")] {
        let v = r.json();
        assert_eq!(keys(&v), ["alert", "message", "source_id", "state", "timestamp"], "{v}");
        assert_eq!(v["alert"], "remote_db_unreachable");
        assert_eq!(v["state"], state);
        assert_eq!(v["source_id"], "test-site");
        assert!(
            humantime::parse_rfc3339(v["timestamp"].as_str().expect("timestamp")).is_ok(),
            "{v}"
        );
    }
    assert!(!stderr.contains("not-for-logs"), "the URL's query is never logged");
}

// Slack's incoming webhooks take `text` (required when there are no blocks; the notification fallback
// otherwise) and optional `blocks`; a section's text object is `{type: mrkdwn|plain_text, text}` of at most
// 3000 characters; `&`, `<`, `>` must be escaped.
#[test]
fn slack_format_posts_an_incoming_webhook_message() {
    let rx = Receiver::start(Some(OK_200));
    let url = format!("http://{}/services/T000/B000/XXXX", rx.addr);
    let (raise, clear, _) = raise_and_clear("slack", &url, &[], &rx);
    assert_eq!(raise.path, "/services/T000/B000/XXXX");
    for (r, state) in [(&raise, "raised"), (&clear, "cleared")] {
        let v = r.json();
        assert_eq!(keys(&v), ["blocks", "text"], "only documented fields: {v}");
        let text = v["text"].as_str().expect("text is a string");
        assert!(
            text.contains(&format!("test-site: remote_db_unreachable {state}")),
            "{text}"
        );
        assert!(!text.contains('<') && !text.contains('>'), "escaped: {text}");
        let blocks = v["blocks"].as_array().expect("blocks is an array");
        assert!(!blocks.is_empty() && blocks.len() <= 50);
        for b in blocks {
            match b["type"].as_str() {
                Some("section") => {
                    assert!(
                        ["mrkdwn", "plain_text"].contains(&b["text"]["type"].as_str().unwrap_or("")),
                        "{b}"
                    );
                    let t = b["text"]["text"].as_str().expect("section text");
                    assert!(!t.is_empty() && t.chars().count() <= 3000, "{b}");
                    assert!(t.contains("remote_db_unreachable") && t.contains(state), "{t}");
                }
                Some("context") => {
                    let els = b["elements"].as_array().expect("context elements");
                    assert!(!els.is_empty() && els.len() <= 10, "{b}");
                    assert!(
                        els.iter().all(|e| e["type"] == "mrkdwn" && e["text"].is_string()),
                        "{b}"
                    );
                }
                other => panic!("a block type this message does not use: {other:?} in {v}"),
            }
        }
    }
}

// PagerDuty Events API v2: POST to the enqueue URL with routing_key, event_action (trigger|acknowledge|
// resolve), dedup_key (<= 255 characters) and, for a trigger, payload {summary (<= 1024), source, severity
// (critical|error|warning|info), timestamp, component, group, class, custom_details}; a resolve names the
// trigger's dedup_key. The routing key never appears in the logs nor in check-config.
#[test]
fn pagerduty_format_triggers_and_resolves_with_one_dedup_key() {
    let rx = Receiver::start(Some(PAGERDUTY_202));
    let url = format!("http://{}/v2/enqueue", rx.addr);
    let (trigger, resolve, stderr) =
        raise_and_clear("pagerduty", &url, &[("ALERT_WEBHOOK_ROUTING_KEY", ROUTING_KEY)], &rx);
    assert_eq!(trigger.path, "/v2/enqueue");
    let documented = [
        "client",
        "client_url",
        "dedup_key",
        "event_action",
        "images",
        "links",
        "payload",
        "routing_key",
    ];
    let t = trigger.json();
    assert!(keys(&t).iter().all(|k| documented.contains(&k.as_str())), "{t}");
    assert_eq!(t["routing_key"], ROUTING_KEY);
    assert_eq!(t["event_action"], "trigger");
    let dedup = t["dedup_key"].as_str().expect("dedup_key");
    assert!(!dedup.is_empty() && dedup.chars().count() <= 255);
    assert!(
        dedup.contains("test-site") && dedup.contains("remote_db_unreachable"),
        "{dedup}"
    );
    let p = &t["payload"];
    let summary = p["summary"].as_str().expect("payload.summary");
    assert!(!summary.is_empty() && summary.chars().count() <= 1024);
    assert!(
        summary.contains("remote database") && summary.contains("unreachable"),
        "{summary}"
    );
    assert_eq!(p["source"], "test-site");
    assert!(
        ["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap_or("")),
        "{p}"
    );
    assert!(humantime::parse_rfc3339(p["timestamp"].as_str().expect("payload.timestamp")).is_ok());
    for optional in ["component", "group", "class"] {
        assert!(p[optional].is_string(), "{optional}: {p}");
    }
    assert!(p["custom_details"].is_object());

    let r = resolve.json();
    assert!(keys(&r).iter().all(|k| documented.contains(&k.as_str())), "{r}");
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(r["routing_key"], ROUTING_KEY);
    assert_eq!(
        r["dedup_key"], dedup,
        "the resolve closes the incident the trigger opened"
    );

    assert!(!stderr.contains(ROUTING_KEY), "the routing key is never logged");
    let mut env = env_map(&DbPair::new());
    env.insert("ALERT_WEBHOOK_FORMAT".into(), "pagerduty".into());
    env.insert("ALERT_WEBHOOK_ROUTING_KEY".into(), ROUTING_KEY.into());
    let out = run_command(&["check-config"], &env);
    assert!(
        out.stdout.contains("format=pagerduty routing_key=[redacted]"),
        "check-config shows the setting:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(ROUTING_KEY) && !out.stderr.contains(ROUTING_KEY),
        "check-config never prints the routing key:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

// A receiver that accepts and never answers does not hold up the loop: while its first request hangs (until
// the webhook's 5 s timeout), cycles keep finishing at their pace (one a second here; at least two are
// required, a generous margin: a loop that waited for the webhook would finish none).
#[test]
fn a_hanging_pagerduty_receiver_does_not_delay_cycles() {
    let pair = DbPair::new(); // no schema on either side: every cycle fails fast, which raises the alert
    let rx = Receiver::start(None);
    let mut env = env_map(&pair);
    env.insert("ALERT_AFTER_FAILURES".into(), "1".into());
    env.insert("ALERT_WEBHOOK_FORMAT".into(), "pagerduty".into());
    env.insert("ALERT_WEBHOOK_ROUTING_KEY".into(), ROUTING_KEY.into());
    env.insert("ALERT_WEBHOOK_URL".into(), format!("http://{}/v2/enqueue", rx.addr));
    let mut d = Daemon::spawn(&["run"], &env);
    assert!(
        wait_until(PATIENCE, || rx.accepted.load(Ordering::SeqCst) >= 1),
        "the receiver is called:\n{}",
        d.stderr_text()
    );
    let at_hang = finished_cycles(&d.stderr_text());
    assert!(
        wait_until(PATIENCE, || rx.closed_by_client.load(Ordering::SeqCst) >= 1),
        "the webhook gives up on a receiver that never answers"
    );
    let at_give_up = finished_cycles(&d.stderr_text());
    assert!(
        at_give_up >= at_hang + 2,
        "cycles finished while the request hung: {} (from {at_hang} to {at_give_up})",
        at_give_up - at_hang
    );
    assert!(d.is_running());
    d.signal("TERM");
    assert_eq!(
        d.wait_timeout(PATIENCE).and_then(|s| s.code()),
        Some(0),
        "a hanging receiver does not block the exit"
    );
    assert!(
        !d.stderr_text().contains(ROUTING_KEY),
        "the routing key is never logged"
    );
}
