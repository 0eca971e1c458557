//! GET /: the dashboard, one self-contained page embedded in the binary (no CDN, no framework, no build step).
//!
//! Owns: [`page`] (dashboard.html with the snapshot's values filled in, so the numbers are there without
//! JavaScript: a phone, a terminal browser), [`SCRIPT`] and [`STYLE`] (served as /dashboard.js and
//! /dashboard.css: the Content-Security-Policy `default-src 'self'` forbids inline script and style) and
//! [`format`] (a value as the page shows it; dashboard.js formats the same way when it refreshes the
//! `data-field` elements from /status every few seconds and draws the charts from /history).
//! Does not own: the values (mod.rs) or the cycles (history.rs).

use serde_json::Value;

use super::Snapshot;

const TEMPLATE: &str = include_str!("dashboard.html");
/// /dashboard.js.
pub const SCRIPT: &str = include_str!("dashboard.js");
/// /dashboard.css.
pub const STYLE: &str = include_str!("dashboard.css");

/// A status value for the page: `—` for null, yes/no, a list joined by commas (`none` when empty).
pub fn format(v: &Value) -> String {
    match v {
        Value::Null => "\u{2014}".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) => a.iter().map(format).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page: every `{{field}}` of the template replaced by the status field's value as text, `{{field.raw}}`
/// by its JSON, `{{version}}` and `{{sourceId}}` by the build's version and SYNC_SOURCE_ID; all HTML-escaped.
/// An unknown name is left empty.
pub fn page(s: &Snapshot) -> String {
    let status = serde_json::to_value(&s.status).unwrap_or(Value::Null);
    let lookup = |name: &str| -> String {
        match name {
            "version" => env!("CARGO_PKG_VERSION").to_string(),
            "sourceId" => s.source_id.clone(),
            _ => match name.strip_suffix(".raw") {
                Some(field) => status.get(field).map(Value::to_string).unwrap_or_default(),
                None => status.get(name).map(format).unwrap_or_default(),
            },
        }
    };
    let mut out = String::with_capacity(TEMPLATE.len() + 512);
    let mut rest = TEMPLATE;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) => {
                out.push_str(&escape(&lookup(&after[..close])));
                rest = &after[close + 2..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_values_and_stays_small() {
        let mut s = Snapshot {
            source_id: "box<17>".into(),
            ..Default::default()
        };
        s.status.queue_size = 137;
        s.status.last_sync_error = Some("upload: remote r:5432/x: \"boom\" <b>".into());
        s.status.active_alerts = vec!["sync_failures".into()];
        let html = page(&s);
        assert!(html.contains(r#"data-field="queueSize">137<"#), "{html}");
        assert!(html.contains("&quot;boom&quot; &lt;b&gt;"));
        assert!(html.contains("box&lt;17&gt;"));
        assert!(html.contains(r#"data-value="[&quot;sync_failures&quot;]">sync_failures<"#));
        assert!(html.contains(r#"data-field="lastSyncSuccess" data-value="false">no<"#));
        assert!(!html.contains("{{"), "every placeholder is filled");
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains(" style="));
        assert!(
            !html.contains("=\"http") && !html.contains("=\"//"),
            "no external resources"
        );
        assert_eq!(SCRIPT.matches("http").count(), 1, "only the SVG namespace");
        assert!(!STYLE.contains("url("), "no external resources");
        let total = html.len() + SCRIPT.len() + STYLE.len();
        assert!(total < 40 * 1024, "the dashboard is {total} bytes");
    }

    #[test]
    fn formats() {
        assert_eq!(format(&Value::Null), "\u{2014}");
        assert_eq!(format(&serde_json::json!(true)), "yes");
        assert_eq!(format(&serde_json::json!([])), "none");
        assert_eq!(format(&serde_json::json!(["a", "b"])), "a, b");
        assert_eq!(format(&serde_json::json!(12)), "12");
    }
}
