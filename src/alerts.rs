//! Alerts: when to raise and clear an alert, and telling someone about it.
//!
//! Owns: the alert conditions of the design's "Monitoring and Alerts" — ALERT_AFTER_FAILURES consecutive failed
//! cycles, a database unreachable (one alert per side), the queue above QUEUE_ALERT_THRESHOLD, and the central
//! database refusing readings for a reason of its own (a missing partition, a sequence at its maximum, a grant,
//! an unsupported feature: raised at the first such upload failure, cleared by the next upload that succeeds), and a
//! client certificate (`*_SSLCERT`) that expires within [`CERTIFICATE_WARNING`] (14 days) — as a pure
//! state machine ([`AlertMachine`]: one observation per cycle in, transitions out, each alert raised once per
//! incident and cleared once at recovery); the stable log lines (`ALERT raised: <name>: ...`,
//! `ALERT cleared: <name>: ...`, both at error level so that whatever watches error lines sees the recovery
//! too); and the optional webhook ([`Webhook`]): a POST from one background thread fed through a bounded
//! channel, so a failing or hanging receiver never delays a cycle (a full queue drops the alert with a
//! warning), its body in the ALERT_WEBHOOK_FORMAT that `formats.rs` builds (json, slack, pagerduty). Does not
//! own: measuring (the scheduler observes the databases and hands the result in). Never logged: the webhook
//! URL's user info and query, the bodies, the PagerDuty routing key.

mod formats;

pub use formats::{body as webhook_body, dedup_key};

use std::fmt;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Sender, TrySendError};
use serde::Serialize;

use crate::config::{Config, Secret, WebhookFormat};

/// Alerts waiting for the webhook thread; beyond this they are dropped (with a warning).
const WEBHOOK_QUEUE: usize = 32;
/// Connect + send + answer limit of one webhook POST.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The alert conditions. `as_str` names are part of the log-line and webhook contract: do not rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertName {
    /// ALERT_AFTER_FAILURES or more cycles in a row failed.
    SyncFailures,
    /// The local database did not answer `SELECT 1` after a cycle.
    LocalDbUnreachable,
    /// The remote database did not answer `SELECT 1` after a cycle.
    RemoteDbUnreachable,
    /// More than QUEUE_ALERT_THRESHOLD readings wait locally.
    QueueAboveThreshold,
    /// The central cannot take readings for a reason of its own (the upload part's error names it).
    CentralFault,
    /// A client certificate (POSTGRES_*_SSLCERT) expires within 14 days, or has expired.
    ClientCertificateExpiring,
}

impl AlertName {
    pub const ALL: [AlertName; 6] = [
        AlertName::SyncFailures,
        AlertName::LocalDbUnreachable,
        AlertName::RemoteDbUnreachable,
        AlertName::QueueAboveThreshold,
        AlertName::CentralFault,
        AlertName::ClientCertificateExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::SyncFailures => "sync_failures",
            AlertName::LocalDbUnreachable => "local_db_unreachable",
            AlertName::RemoteDbUnreachable => "remote_db_unreachable",
            AlertName::QueueAboveThreshold => "queue_above_threshold",
            AlertName::CentralFault => "central_fault",
            AlertName::ClientCertificateExpiring => "client_certificate_expiring",
        }
    }

    fn index(self) -> usize {
        match self {
            AlertName::SyncFailures => 0,
            AlertName::LocalDbUnreachable => 1,
            AlertName::RemoteDbUnreachable => 2,
            AlertName::QueueAboveThreshold => 3,
            AlertName::CentralFault => 4,
            AlertName::ClientCertificateExpiring => 5,
        }
    }
}

impl fmt::Display for AlertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    Raised,
    Cleared,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        }
    }
}

/// One alert changing state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub name: AlertName,
    pub state: AlertState,
    pub message: String,
}

impl Transition {
    /// The log line: `ALERT raised: <name>: <message>` or `ALERT cleared: <name>: <message>`.
    pub fn log_line(&self) -> String {
        format!("ALERT {}: {}: {}", self.state.as_str(), self.name, self.message)
    }
}

/// What the scheduler measured after one cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    pub cycle_success: bool,
    /// The first error of the cycle, for the failure alert's message.
    pub last_error: Option<String>,
    pub local_up: bool,
    pub remote_up: bool,
    /// Readings queued locally; None when it could not be counted (the alert keeps its state).
    pub queue_size: Option<u64>,
    /// The upload part: Some(Some(cause)) failed for a fault of the central's own, Some(None) succeeded, None
    /// neither (another failure, or it did not run: the central-fault alert keeps its state).
    pub central_fault: Option<Option<String>>,
    /// The client certificates: Some(Some(what)) one expires within [`CERTIFICATE_WARNING`] (see
    /// [`certificates_expiring`]), Some(None) none does (or none is configured), None unknown.
    pub certificate_expiring: Option<Option<String>>,
}

/// How long before a client certificate's notAfter the `client_certificate_expiring` alert is raised.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The client certificates that expire within [`CERTIFICATE_WARNING`] of `now_unix` (or have expired), for the
/// alert's message: `certs` are (how the database is named, the certificate file, notAfter in Unix seconds).
/// None when none does.
pub fn certificates_expiring(certs: &[(String, String, i64)], now_unix: i64) -> Option<String> {
    let warn = i64::try_from(CERTIFICATE_WARNING.as_secs()).unwrap_or(i64::MAX);
    let soon: Vec<String> = certs
        .iter()
        .filter(|(_, _, not_after)| not_after.saturating_sub(now_unix) < warn)
        .map(|(db, file, not_after)| {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(*not_after).unwrap_or(0)),
            );
            let left = not_after - now_unix;
            if left <= 0 {
                format!("the client certificate {file} of the {db} expired at {when}")
            } else {
                format!(
                    "the client certificate {file} of the {db} expires at {when} (in {} days {} hours)",
                    left / 86_400,
                    left % 86_400 / 3600
                )
            }
        })
        .collect();
    (!soon.is_empty()).then(|| {
        format!(
            "{}: issue a new certificate and replace the file; the next connection uses it (no restart)",
            soon.join("; ")
        )
    })
}

/// The limits, from ALERT_AFTER_FAILURES and QUEUE_ALERT_THRESHOLD, and how to name the databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub after_failures: u32,
    pub queue: u64,
    pub local_target: String,
    pub remote_target: String,
}

impl Thresholds {
    pub fn from_config(cfg: &Config) -> Thresholds {
        Thresholds {
            after_failures: cfg.alert_after_failures.max(1),
            queue: cfg.queue_alert_threshold,
            local_target: cfg.local.target(),
            remote_target: cfg.remote.target(),
        }
    }
}

/// The pure state machine: which alerts are active, and the run of failed cycles.
#[derive(Clone, Debug)]
pub struct AlertMachine {
    thresholds: Thresholds,
    consecutive_failures: u32,
    active: [bool; 6],
}

impl AlertMachine {
    pub fn new(thresholds: Thresholds) -> AlertMachine {
        AlertMachine {
            thresholds,
            consecutive_failures: 0,
            active: [false; 6],
        }
    }

    /// Failed cycles in a row, up to and including the last observation.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn is_active(&self, name: AlertName) -> bool {
        self.active[name.index()]
    }

    /// Takes one cycle's observation; returns the alerts that changed state, in [`AlertName::ALL`] order.
    pub fn observe(&mut self, obs: &Observation) -> Vec<Transition> {
        let th = &self.thresholds;
        let failures = if obs.cycle_success {
            0
        } else {
            self.consecutive_failures.saturating_add(1)
        };
        let last_error = obs.last_error.as_deref().unwrap_or("unknown error");
        // For each alert: Some(true/false) = condition now holds / does not; None = unknown, keep the state.
        let conditions: [(AlertName, Option<bool>, String, String); 6] = [
            (
                AlertName::SyncFailures,
                Some(failures >= th.after_failures),
                format!(
                    "{failures} sync cycles in a row failed (threshold {}); last error: {last_error}",
                    th.after_failures
                ),
                "a sync cycle succeeded again".to_string(),
            ),
            (
                AlertName::LocalDbUnreachable,
                Some(!obs.local_up),
                format!("the local database {} is unreachable", th.local_target),
                format!("the local database {} answers again", th.local_target),
            ),
            (
                AlertName::RemoteDbUnreachable,
                Some(!obs.remote_up),
                format!("the remote database {} is unreachable", th.remote_target),
                format!("the remote database {} answers again", th.remote_target),
            ),
            (
                AlertName::QueueAboveThreshold,
                obs.queue_size.map(|q| q > th.queue),
                format!(
                    "{} readings wait in the local queue (threshold {})",
                    obs.queue_size.unwrap_or(0),
                    th.queue
                ),
                format!(
                    "the local queue is back to {} readings (threshold {})",
                    obs.queue_size.unwrap_or(0),
                    th.queue
                ),
            ),
            (
                AlertName::CentralFault,
                obs.central_fault.as_ref().map(Option::is_some),
                format!(
                    "the central database {} cannot take readings: {}",
                    th.remote_target,
                    obs.central_fault.clone().flatten().unwrap_or_default()
                ),
                format!("the central database {} takes readings again", th.remote_target),
            ),
            (
                AlertName::ClientCertificateExpiring,
                obs.certificate_expiring.as_ref().map(Option::is_some),
                obs.certificate_expiring.clone().flatten().unwrap_or_default(),
                format!(
                    "no client certificate expires within {} days",
                    CERTIFICATE_WARNING.as_secs() / 86_400
                ),
            ),
        ];
        self.consecutive_failures = failures;
        let mut out = Vec::new();
        for (name, holds, raise_msg, clear_msg) in conditions {
            let Some(holds) = holds else { continue };
            let active = &mut self.active[name.index()];
            if holds && !*active {
                *active = true;
                out.push(Transition {
                    name,
                    state: AlertState::Raised,
                    message: raise_msg,
                });
            } else if !holds && *active {
                *active = false;
                out.push(Transition {
                    name,
                    state: AlertState::Cleared,
                    message: clear_msg,
                });
            }
        }
        out
    }
}

/// An alert as the webhook reports it; with ALERT_WEBHOOK_FORMAT=json, the body of the POST as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookPayload {
    pub alert: String,
    pub state: String,
    pub message: String,
    pub source_id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

impl WebhookPayload {
    pub fn new(t: &Transition, source_id: &str, at: SystemTime) -> WebhookPayload {
        WebhookPayload {
            alert: t.name.as_str().to_string(),
            state: t.state.as_str().to_string(),
            message: t.message.clone(),
            source_id: source_id.to_string(),
            timestamp: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

/// The webhook sender: a bounded queue and one thread doing blocking POSTs with a 5 s timeout.
pub struct Webhook {
    tx: Sender<WebhookPayload>,
    shown: String,
}

impl Webhook {
    /// Starts the sender thread for `url`, posting bodies in `format` (`routing_key`: pagerduty's). The thread
    /// ends when the `Webhook` is dropped and the queue is empty.
    pub fn start(url: &str, format: WebhookFormat, routing_key: Option<Secret>) -> std::io::Result<Webhook> {
        let (tx, rx) = crossbeam_channel::bounded::<WebhookPayload>(WEBHOOK_QUEUE);
        let shown = redact_url(url);
        let agent = ureq::AgentBuilder::new().timeout(WEBHOOK_TIMEOUT).redirects(0).build();
        let url = url.to_string();
        let thread_shown = shown.clone();
        thread::Builder::new().name("alert-webhook".into()).spawn(move || {
            for payload in rx {
                let body = match serde_json::to_string(&webhook_body(format, &payload, routing_key.as_ref())) {
                    Ok(b) => b,
                    Err(e) => {
                        log::warn!("alert webhook: cannot encode the alert: {e}");
                        continue;
                    }
                };
                match agent
                    .post(&url)
                    .set("Content-Type", "application/json")
                    .send_string(&body)
                {
                    Ok(_) => log::debug!(
                        "alert webhook {thread_shown}: delivered {} {}",
                        payload.alert,
                        payload.state
                    ),
                    Err(e) => log::warn!(
                        "alert webhook {thread_shown}: delivering {} {} failed: {}",
                        payload.alert,
                        payload.state,
                        describe_ureq_error(&e)
                    ),
                }
            }
        })?;
        Ok(Webhook { tx, shown })
    }

    /// Queues an alert without waiting; drops it with a warning when the queue is full.
    pub fn send(&self, payload: WebhookPayload) {
        match self.tx.try_send(payload) {
            Ok(()) => {}
            Err(TrySendError::Full(p)) => log::warn!(
                "alert webhook {}: {WEBHOOK_QUEUE} alerts already wait for delivery; dropping {} {}",
                self.shown,
                p.alert,
                p.state
            ),
            Err(TrySendError::Disconnected(p)) => {
                log::warn!(
                    "alert webhook {}: sender thread is gone; dropping {} {}",
                    self.shown,
                    p.alert,
                    p.state
                )
            }
        }
    }
}

/// The URL without user info and query (either may hold a token): `scheme://host[:port]/path`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A ureq error without its URL (which may hold a token).
fn describe_ureq_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP status {code}"),
        ureq::Error::Transport(t) => {
            let mut s = t.kind().to_string();
            if let Some(m) = t.message() {
                s.push_str(&format!(": {m}"));
            }
            if let Some(src) = std::error::Error::source(t) {
                s.push_str(&format!(": {src}"));
            }
            s
        }
    }
}

/// The machine plus its outputs: log lines and the optional webhook.
pub struct Alerts {
    machine: AlertMachine,
    webhook: Option<Webhook>,
    source_id: String,
}

impl Alerts {
    /// Starts the webhook thread when ALERT_WEBHOOK_URL is set (a failure to start it is logged, not fatal).
    pub fn new(cfg: &Config) -> Alerts {
        let webhook = cfg.alert_webhook_url.as_deref().and_then(|url| {
            match Webhook::start(url, cfg.alert_webhook_format, cfg.alert_webhook_routing_key.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    log::error!(
                        "alert webhook {}: cannot start its thread: {e}; alerts go to the log only",
                        redact_url(url)
                    );
                    None
                }
            }
        });
        Alerts {
            machine: AlertMachine::new(Thresholds::from_config(cfg)),
            webhook,
            source_id: cfg.source_id.clone(),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.machine.consecutive_failures()
    }

    /// Feeds one observation; logs each transition and queues it for the webhook. Never blocks.
    pub fn observe(&mut self, obs: &Observation) -> Vec<Transition> {
        let transitions = self.machine.observe(obs);
        let now = SystemTime::now();
        for t in &transitions {
            log::error!("{}", t.log_line());
            if let Some(w) = &self.webhook {
                w.send(WebhookPayload::new(t, &self.source_id, now));
            }
        }
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    fn thresholds(after: u32, queue: u64) -> Thresholds {
        Thresholds {
            after_failures: after,
            queue,
            local_target: "l:1/a".into(),
            remote_target: "r:2/b".into(),
        }
    }

    #[derive(Clone, Debug)]
    struct Obs(Observation);

    impl Arbitrary for Obs {
        fn arbitrary(g: &mut Gen) -> Obs {
            let q = u8::arbitrary(g) % 4;
            Obs(Observation {
                cycle_success: bool::arbitrary(g),
                last_error: Some("boom".into()),
                local_up: u8::arbitrary(g) % 4 != 0,
                remote_up: u8::arbitrary(g) % 3 != 0,
                queue_size: match q {
                    0 => None,
                    1 => Some(5),
                    _ => Some(u64::from(u8::arbitrary(g)) * 2),
                },
                central_fault: match u8::arbitrary(g) % 3 {
                    0 => None,
                    1 => Some(None),
                    _ => Some(Some("no partition".into())),
                },
                certificate_expiring: match u8::arbitrary(g) % 3 {
                    0 => None,
                    1 => Some(None),
                    _ => Some(Some("expires soon".into())),
                },
            })
        }
    }

    // For any sequence of observations: per alert, transitions alternate raised/cleared starting with raised;
    // an alert is raised exactly when its condition starts to hold and cleared exactly when it stops; the
    // failure counter equals the run of failed cycles at the end.
    fn prop_alerts_once_per_incident(after: u8, seq: Vec<Obs>) -> bool {
        let after = u32::from(after % 5) + 1;
        let mut m = AlertMachine::new(thresholds(after, 100));
        let mut active = [false; 6];
        let mut run = 0u32;
        for Obs(o) in &seq {
            run = if o.cycle_success { 0 } else { run + 1 };
            let ts = m.observe(o);
            let want: [Option<bool>; 6] = [
                Some(run >= after),
                Some(!o.local_up),
                Some(!o.remote_up),
                o.queue_size.map(|q| q > 100),
                o.central_fault.as_ref().map(Option::is_some),
                o.certificate_expiring.as_ref().map(Option::is_some),
            ];
            for name in AlertName::ALL {
                let i = name.index();
                let mine: Vec<&Transition> = ts.iter().filter(|t| t.name == name).collect();
                let expected = match want[i] {
                    Some(h) if h != active[i] => Some(if h { AlertState::Raised } else { AlertState::Cleared }),
                    _ => None,
                };
                if mine.len() > 1 || mine.first().map(|t| t.state) != expected {
                    return false;
                }
                if let Some(h) = want[i] {
                    active[i] = h;
                }
                if m.is_active(name) != active[i] {
                    return false;
                }
            }
        }
        m.consecutive_failures() == run
    }

    #[test]
    fn alert_machine_property() {
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop_alerts_once_per_incident as fn(u8, Vec<Obs>) -> bool);
    }

    #[test]
    fn log_lines_have_the_stable_prefix() {
        let mut m = AlertMachine::new(thresholds(1, 10));
        let down = Observation {
            cycle_success: false,
            remote_up: false,
            local_up: true,
            queue_size: Some(3),
            ..Default::default()
        };
        let ts = m.observe(&down);
        let lines: Vec<String> = ts.iter().map(Transition::log_line).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("ALERT raised: sync_failures: 1 sync cycles in a row failed"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("ALERT raised: remote_db_unreachable: the remote database r:2/b"),
            "{lines:?}"
        );
        assert!(m.observe(&down).is_empty());
        let up = Observation {
            cycle_success: true,
            remote_up: true,
            local_up: true,
            queue_size: Some(3),
            ..Default::default()
        };
        let lines: Vec<String> = m.observe(&up).iter().map(Transition::log_line).collect();
        assert_eq!(
            lines,
            vec![
                "ALERT cleared: sync_failures: a sync cycle succeeded again".to_string(),
                "ALERT cleared: remote_db_unreachable: the remote database r:2/b answers again".to_string(),
            ]
        );
    }

    #[test]
    fn a_central_fault_is_raised_once_and_cleared_by_the_next_upload_that_succeeds() {
        let mut m = AlertMachine::new(thresholds(100, 10));
        let fault = |cause: &str| Observation {
            local_up: true,
            remote_up: true,
            central_fault: Some(Some(cause.to_string())),
            ..Default::default()
        };
        let lines: Vec<String> = m
            .observe(&fault("no partition for 2025-01-01"))
            .iter()
            .map(Transition::log_line)
            .collect();
        assert_eq!(
            lines,
            vec!["ALERT raised: central_fault: the central database r:2/b cannot take readings: no partition for 2025-01-01"]
        );
        // Still failing, for the same or another cause of the central's: no second alert.
        assert!(m.observe(&fault("no partition for 2025-01-01")).is_empty());
        assert!(m.observe(&fault("permission denied")).is_empty());
        // An upload that neither succeeded nor met a central fault (the link is down) says nothing new.
        let unknown = Observation {
            central_fault: None,
            ..fault("")
        };
        assert!(m.observe(&unknown).is_empty());
        assert!(m.is_active(AlertName::CentralFault));
        let ok = Observation {
            central_fault: Some(None),
            ..fault("")
        };
        let lines: Vec<String> = m.observe(&ok).iter().map(Transition::log_line).collect();
        assert_eq!(
            lines,
            vec!["ALERT cleared: central_fault: the central database r:2/b takes readings again"]
        );
        assert!(m.observe(&ok).is_empty());
    }

    #[test]
    fn a_certificate_within_14_days_of_its_expiry_raises_the_alert_once() {
        let now = 1_800_000_000;
        let day = 86_400;
        let cert = |left: i64| {
            vec![(
                "remote database r:2/b".to_string(),
                "/etc/box.crt".to_string(),
                now + left,
            )]
        };
        assert_eq!(certificates_expiring(&cert(15 * day), now), None);
        assert_eq!(certificates_expiring(&[], now), None);
        let soon = certificates_expiring(&cert(3 * day + 7200), now).unwrap_or_default();
        assert!(
            soon.contains("/etc/box.crt")
                && soon.contains("remote database r:2/b")
                && soon.contains("in 3 days 2 hours"),
            "{soon}"
        );
        let gone = certificates_expiring(&cert(-day), now).unwrap_or_default();
        assert!(gone.contains("expired at"), "{gone}");

        let mut m = AlertMachine::new(thresholds(100, 10));
        let obs = |left: i64| Observation {
            local_up: true,
            remote_up: true,
            certificate_expiring: Some(certificates_expiring(&cert(left), now)),
            ..Default::default()
        };
        assert!(m.observe(&obs(20 * day)).is_empty());
        let lines: Vec<String> = m.observe(&obs(13 * day)).iter().map(Transition::log_line).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("ALERT raised: client_certificate_expiring: the client certificate /etc/box.crt"));
        assert!(m.observe(&obs(12 * day)).is_empty(), "raised once");
        assert!(m.observe(&obs(-day)).is_empty(), "still the same incident once expired");
        let lines: Vec<String> = m.observe(&obs(365 * day)).iter().map(Transition::log_line).collect();
        assert_eq!(
            lines,
            vec!["ALERT cleared: client_certificate_expiring: no client certificate expires within 14 days"]
        );
    }

    #[test]
    fn urls_lose_credentials_and_query() {
        assert_eq!(
            redact_url("https://user:tok@hooks.example.com:8443/a/b?key=s3cret#x"),
            "https://hooks.example.com:8443/a/b"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/"), "http://127.0.0.1:9/");
    }

    #[test]
    fn payload_shape() {
        let t = Transition {
            name: AlertName::QueueAboveThreshold,
            state: AlertState::Raised,
            message: "m".into(),
        };
        let p = WebhookPayload::new(&t, "site-1", SystemTime::UNIX_EPOCH);
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"alert":"queue_above_threshold","state":"raised","message":"m","source_id":"site-1",
                "timestamp":"1970-01-01T00:00:00Z"})
        );
    }
}
