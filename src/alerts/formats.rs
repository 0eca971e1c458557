//! The bodies of alert webhook POSTs, one per ALERT_WEBHOOK_FORMAT (pure: no I/O).
//!
//! Owns: [`body`] and the three shapes: `json` (this project's own payload, [`WebhookPayload`] as is), `slack`
//! (a Slack incoming-webhook message: `text`, the notification fallback, plus a `section` and a `context`
//! block in mrkdwn, with `&`, `<`, `>` escaped as Slack requires), `pagerduty` (an Events API v2 event:
//! `routing_key`, `event_action` trigger when an alert is raised and resolve when it clears, and a
//! `dedup_key` stable per alert and site, [`dedup_key`], so the resolve closes the incident the trigger
//! opened; a trigger carries `payload.summary` (at most 1024 characters), `payload.source` (the site),
//! `payload.severity` (critical|error|warning), `payload.timestamp`, `component`, `group`, `class` and
//! `custom_details`). Does not own: sending (the webhook thread in alerts.rs), the routing key's checking
//! (config). The routing key is in the PagerDuty body only: bodies are never logged.

use serde_json::{json, Value};

use super::{AlertName, WebhookPayload};
use crate::config::{Secret, WebhookFormat};

/// Longest `payload.summary` PagerDuty accepts.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// Longest `dedup_key` PagerDuty accepts.
const PAGERDUTY_DEDUP_MAX: usize = 255;
/// Longest text of a Slack section block.
const SLACK_SECTION_MAX: usize = 3000;

/// The JSON body of one POST in `format`. `routing_key` is used by pagerduty only.
pub fn body(format: WebhookFormat, p: &WebhookPayload, routing_key: Option<&Secret>) -> Value {
    match format {
        WebhookFormat::Json => serde_json::to_value(p).unwrap_or(Value::Null),
        WebhookFormat::Slack => slack(p),
        WebhookFormat::PagerDuty => pagerduty(p, routing_key),
    }
}

/// `sync-process/<source_id>/<alert>`: the same for every trigger and resolve of one alert at one site.
pub fn dedup_key(p: &WebhookPayload) -> String {
    truncate(
        &format!("sync-process/{}/{}", p.source_id, p.alert),
        PAGERDUTY_DEDUP_MAX,
    )
}

fn raised(p: &WebhookPayload) -> bool {
    p.state == "raised"
}

fn slack(p: &WebhookPayload) -> Value {
    let (icon, verb) = if raised(p) {
        (":rotating_light:", "raised")
    } else {
        (":white_check_mark:", "cleared")
    };
    let text = format!(
        "{icon} sync-process {}: {} {verb}: {}",
        esc(&p.source_id),
        p.alert,
        esc(&p.message)
    );
    let section = format!(
        "{icon} *{}* {verb} on `{}`\n{}",
        p.alert,
        esc(&p.source_id),
        esc(&p.message)
    );
    json!({
        "text": truncate(&text, SLACK_SECTION_MAX),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&section, SLACK_SECTION_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "sync-process {} · {}", env!("CARGO_PKG_VERSION"), p.timestamp)}]}
        ]
    })
}

/// Slack's three control characters in mrkdwn and text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn pagerduty(p: &WebhookPayload, routing_key: Option<&Secret>) -> Value {
    let key = routing_key.map(Secret::expose).unwrap_or("");
    if !raised(p) {
        // As the Events API v2 documents a resolve: the key, the action and the dedup_key of the trigger.
        return json!({"routing_key": key, "event_action": "resolve", "dedup_key": dedup_key(p)});
    }
    let name = AlertName::ALL.into_iter().find(|n| n.as_str() == p.alert);
    let (severity, component) = match name {
        Some(AlertName::LocalDbUnreachable) => ("critical", "local database"),
        Some(AlertName::RemoteDbUnreachable) => ("error", "remote database"),
        Some(AlertName::SyncFailures) => ("error", "sync cycle"),
        Some(AlertName::CentralFault) => ("error", "central database"),
        Some(AlertName::ClientCertificateExpiring) => ("warning", "client certificate"),
        Some(AlertName::QueueAboveThreshold) | None => ("warning", "upload queue"),
    };
    json!({
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": dedup_key(p),
        "client": "sync-process",
        "payload": {
            "summary": truncate(&format!("sync-process {}: {}: {}", p.source_id, p.alert, p.message),
                PAGERDUTY_SUMMARY_MAX),
            "source": p.source_id,
            "severity": severity,
            "timestamp": p.timestamp,
            "component": component,
            "group": "sync-process",
            "class": p.alert,
            "custom_details": {"alert": p.alert, "message": p.message, "source_id": p.source_id,
                "version": env!("CARGO_PKG_VERSION")},
        }
    })
}

/// At most `max` characters (on a character boundary), `...` marking a cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(alert: &str, state: &str, message: &str) -> WebhookPayload {
        WebhookPayload {
            alert: alert.into(),
            state: state.into(),
            message: message.into(),
            source_id: "site-1".into(),
            timestamp: "2024-05-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn pagerduty_trigger_and_resolve_share_the_dedup_key() {
        let key = Secret::new("R0123456789abcdefABCDEF012345678");
        let t = body(
            WebhookFormat::PagerDuty,
            &payload(
                "remote_db_unreachable",
                "raised",
                "the remote database r:5432/c is unreachable",
            ),
            Some(&key),
        );
        assert_eq!(t["routing_key"], "R0123456789abcdefABCDEF012345678");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "sync-process/site-1/remote_db_unreachable");
        assert_eq!(
            t["payload"]["summary"],
            "sync-process site-1: remote_db_unreachable: the remote database r:5432/c is unreachable"
        );
        assert_eq!(t["payload"]["source"], "site-1");
        assert_eq!(t["payload"]["severity"], "error");
        assert_eq!(t["payload"]["timestamp"], "2024-05-01T10:00:00Z");
        let r = body(
            WebhookFormat::PagerDuty,
            &payload("remote_db_unreachable", "cleared", "answers again"),
            Some(&key),
        );
        assert_eq!(
            r,
            json!({"routing_key": "R0123456789abcdefABCDEF012345678", "event_action": "resolve",
                "dedup_key": "sync-process/site-1/remote_db_unreachable"})
        );
        let long = "x".repeat(5000);
        let t = body(
            WebhookFormat::PagerDuty,
            &payload("sync_failures", "raised", &long),
            Some(&key),
        );
        let summary = t["payload"]["summary"].as_str().expect("summary");
        assert_eq!(summary.chars().count(), 1024);
        assert!(summary.ends_with("..."));
    }

    #[test]
    fn slack_escapes_its_control_characters() {
        let v = body(
            WebhookFormat::Slack,
            &payload("sync_failures", "raised", "error <html> & more"),
            None,
        );
        let text = v["text"].as_str().expect("text");
        assert!(
            text.contains("sync_failures raised: error &lt;html&gt; &amp; more"),
            "{text}"
        );
        assert_eq!(v["blocks"][0]["type"], "section");
        assert_eq!(v["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(v["blocks"][1]["type"], "context");
        assert!(v.get("routing_key").is_none());
    }

    #[test]
    fn json_is_the_payload_unchanged() {
        let p = payload("queue_above_threshold", "cleared", "m");
        assert_eq!(
            body(WebhookFormat::Json, &p, Some(&Secret::new("k"))),
            serde_json::to_value(&p).expect("json")
        );
    }
}
