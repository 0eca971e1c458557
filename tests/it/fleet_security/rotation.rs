//! Rotation without a restart, and the client certificate's expiry in /status, /metrics and the alerts: a
//! running daemon keeps syncing across a password change (ALTER ROLE + the password file rewritten) and across
//! a replaced certificate and key (picked up by the next connection; SIGHUP closes the idle ones at once).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sync_process::status::daemon_get;

use super::sites::{central, Site};
use super::*;
use crate::support::daemon::Daemon;
use crate::support::env::closed_port;
use crate::support::pg::psql_script;
use crate::support::wait_until;

const PER_SITE_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/per-site-remote-roles.sql");
const PATIENCE: Duration = Duration::from_secs(60);

/// Replaces `path` the way deployment tools do: a new file renamed over the old one, mode `mode`.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).expect("writing the new file");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::fs::rename(&tmp, path).expect("renaming the new file over the old one");
}

fn status_json(addr: SocketAddr) -> Option<Value> {
    daemon_get(addr, "/status")
        .ok()
        .and_then(|(code, body)| (code == 200).then_some(body))
        .and_then(|body| serde_json::from_str(&body).ok())
}

#[test]
fn rotation_a_rewritten_password_file_keeps_the_running_daemon_syncing() {
    let central = central();
    let site = Site::new(&central, "rot", 4);
    let dir = TempDir::new("sync-process-rotation");
    let pw_file = dir.path().join("remote-password");
    replace_file(&pw_file, format!("{}\n", site.password).as_bytes(), 0o600);
    let mut env = site.env.clone();
    env.remove("POSTGRES_CLIENT_PASSWORD");
    env.insert("POSTGRES_CLIENT_PASSWORD_FILE".into(), pw_file.display().to_string());
    env.insert("SYNC_INTERVAL_SECONDS".into(), "1".into());
    let mut daemon = Daemon::spawn(&["run"], &env);
    assert!(
        wait_until(PATIENCE, || central.count("SELECT count(*) FROM meter_readings") == 4),
        "the first readings arrive:\n{}",
        daemon.stderr_text()
    );

    // The password changes on the central and in the file; the daemon is not told.
    let new_password = "rotated-Pw-51e0";
    central
        .client()
        .batch_execute(&format!("ALTER ROLE {} PASSWORD '{new_password}'", site.role))
        .expect("changing the password");
    replace_file(&pw_file, format!("{new_password}\n").as_bytes(), 0o600);
    site.queue(5, 100);
    assert!(
        wait_until(PATIENCE, || central.count("SELECT count(*) FROM meter_readings") == 9),
        "readings queued after the change arrive with the new password:\n{}",
        daemon.stderr_text()
    );

    // SIGHUP (systemctl reload): idle connections close, the daemon goes on.
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_stderr("reload: closed", PATIENCE),
        "{}",
        daemon.stderr_text()
    );
    site.queue(2, 200);
    assert!(
        wait_until(PATIENCE, || central.count("SELECT count(*) FROM meter_readings") == 11),
        "{}",
        daemon.stderr_text()
    );
    assert!(daemon.is_running(), "{}", daemon.stderr_text());
    daemon.signal("TERM");
    assert_eq!(daemon.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = daemon.stderr_text();
    for pw in [site.password.as_str(), new_password] {
        assert!(!log.contains(pw), "a password shows in the log");
    }
    assert_eq!(site.local.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(
        central.count("SELECT count(*) FROM meter_readings"),
        11,
        "every reading exactly once"
    );
}

#[test]
fn rotation_a_replaced_client_certificate_is_used_and_its_expiry_shows_and_alerts() {
    let s = fleet_server();
    let central = central();
    let site = Site::new(&central, "crt", 3);
    // The same site, authenticating by certificate alone: no password, CN = role.
    psql_script(
        &central,
        PER_SITE_SQL,
        &[
            ("role", &site.role),
            ("source_id", &site.source_id),
            ("no_password", "1"),
        ],
    );
    central
        .client()
        .batch_execute(&format!(
            "REVOKE {SCRAM_GROUP} FROM {}; GRANT {CERT_GROUP} TO {}",
            site.role, site.role
        ))
        .expect("certificate authentication for the role");
    let dir = TempDir::new("sync-process-cert-rotation");
    // Five days left: inside the 14-day warning.
    let (cert, key) = s.client_ca.client(&site.role, 5, dir.path(), "box");
    let port = closed_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut env = site.env.clone();
    env.remove("POSTGRES_CLIENT_PASSWORD");
    for (k, v) in [
        ("POSTGRES_CLIENT_SSLMODE", "verify-full".to_string()),
        (
            "POSTGRES_CLIENT_SSLROOTCERT",
            s.server_ca.cert_path().display().to_string(),
        ),
        ("POSTGRES_CLIENT_SSLCERT", cert.display().to_string()),
        ("POSTGRES_CLIENT_SSLKEY", key.display().to_string()),
        ("STATUS_BIND", format!("127.0.0.1:{port}")),
        ("SYNC_INTERVAL_SECONDS", "1".to_string()),
    ] {
        env.insert(k.into(), v);
    }
    let mut daemon = Daemon::spawn(&["run"], &env);
    let mut status = Value::Null;
    let alerted = wait_until(PATIENCE, || {
        status = status_json(addr).unwrap_or(Value::Null);
        status["activeAlerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "client_certificate_expiring"))
    });
    assert!(alerted, "{status:#}\n{}", daemon.stderr_text());
    assert_eq!(
        central.count("SELECT count(*) FROM meter_readings"),
        3,
        "{}",
        daemon.stderr_text()
    );
    let certs = status["clientCertificates"].as_array().cloned().unwrap_or_default();
    assert_eq!(certs.len(), 1, "{status:#}");
    assert_eq!(certs[0]["database"], "remote");
    assert_eq!(certs[0]["file"], cert.display().to_string());
    assert_eq!(certs[0]["subject"], site.role.as_str());
    let first_not_after = certs[0]["notAfter"].as_str().unwrap_or_default().to_string();
    let shown = crate::support::daemon::run_command(&["status"], &env);
    let line = format!("remote certificate: CN={}, valid until {first_not_after}", site.role);
    assert!(shown.stdout.contains(&line), "{}", shown.stdout);
    let metrics = daemon_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let sample = metrics
        .lines()
        .find(|l| l.starts_with("sync_process_tls_certificate_expiry_timestamp_seconds{database=\"remote\"} "))
        .unwrap_or_else(|| panic!("no expiry sample in:\n{metrics}"));
    let expiry: u64 = sample.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let left = expiry.saturating_sub(sync_process::status::unix_now());
    assert!(
        (4 * 86_400..=5 * 86_400 + 60).contains(&left),
        "{sample}: {left} s left"
    );
    let log = daemon.stderr_text();
    let raised: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ALERT raised: client_certificate_expiring"))
        .collect();
    assert_eq!(raised.len(), 1, "raised once:\n{log}");
    assert!(raised[0].contains(&cert.display().to_string()), "{}", raised[0]);

    // A new certificate and key (a year) replace the files; SIGHUP makes the next connection use them.
    let fresh_dir = TempDir::new("sync-process-cert-fresh");
    let (new_cert, new_key) = s.client_ca.client(&site.role, 365, fresh_dir.path(), "box");
    let read = |p: &Path| std::fs::read(p).expect("reading the new file");
    replace_file(&key, &read(&new_key), 0o600);
    replace_file(&cert, &read(&new_cert), 0o644);
    daemon.signal("HUP");
    let cleared = wait_until(PATIENCE, || {
        status = status_json(addr).unwrap_or(Value::Null);
        status["clientCertificates"][0]["notAfter"]
            .as_str()
            .is_some_and(|n| n != first_not_after)
            && status["activeAlerts"]
                .as_array()
                .is_some_and(|a| !a.iter().any(|n| n == "client_certificate_expiring"))
    });
    assert!(cleared, "{status:#}\n{}", daemon.stderr_text());
    assert!(
        daemon.wait_for_stderr("ALERT cleared: client_certificate_expiring", PATIENCE),
        "{}",
        daemon.stderr_text()
    );
    site.queue(4, 100);
    assert!(
        wait_until(PATIENCE, || central.count("SELECT count(*) FROM meter_readings") == 7),
        "the daemon keeps syncing with the new certificate:\n{}",
        daemon.stderr_text()
    );
    assert!(daemon.is_running());
    daemon.signal("TERM");
    assert_eq!(daemon.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}
