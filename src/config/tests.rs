//! Unit tests of the configuration: defaults, every error at once, the example env file, redaction.

use super::*;
use crate::upload::validate::Check;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

pub(crate) fn valid_map() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("POSTGRES_SYNC_HOST", "localhost"),
        ("POSTGRES_SYNC_DB", "meterit_sync"),
        ("POSTGRES_SYNC_USER", "postgres"),
        ("POSTGRES_SYNC_PASSWORD", "s3cret-local-pw"),
        ("POSTGRES_CLIENT_HOST", "remote.example.com"),
        ("POSTGRES_CLIENT_DB", "meterit_client"),
        ("POSTGRES_CLIENT_USER", "postgres"),
        ("POSTGRES_CLIENT_PASSWORD", "s3cret-remote-pw"),
    ] {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

#[test]
fn the_source_column_is_an_sql_identifier_or_none() {
    let mut m = valid_map();
    assert_eq!(Config::from_map(&m).expect("valid").upload_source_column, None);
    m.insert("UPLOAD_SOURCE_COLUMN".into(), String::new());
    assert_eq!(Config::from_map(&m).expect("empty = none").upload_source_column, None);
    m.insert("UPLOAD_SOURCE_COLUMN".into(), "Site_Id2".into());
    assert_eq!(
        Config::from_map(&m).expect("valid").upload_source_column.as_deref(),
        Some("Site_Id2")
    );
    for bad in ["site id", "2site", "site\"; DROP TABLE x; --", "sité", &"x".repeat(64)] {
        m.insert("UPLOAD_SOURCE_COLUMN".into(), bad.to_string());
        let e = Config::from_map(&m).expect_err(bad).to_string();
        assert!(
            e.contains("UPLOAD_SOURCE_COLUMN") && e.contains("not a column name"),
            "{e}"
        );
    }
}

#[test]
fn batch_size_max_defaults_to_batch_size_and_is_never_below_it() {
    let mut m = valid_map();
    m.insert("BATCH_SIZE".into(), "250".into());
    let c = Config::from_map(&m).expect("valid");
    assert_eq!((c.batch_size, c.batch_size_max), (250, 250));
    m.insert("BATCH_SIZE_MAX".into(), "".into());
    assert_eq!(Config::from_map(&m).expect("empty = unset").batch_size_max, 250);
    m.insert("BATCH_SIZE_MAX".into(), "5000".into());
    let c = Config::from_map(&m).expect("valid");
    assert_eq!((c.batch_size, c.batch_size_max), (250, 5000));
    assert!(
        c.summary().contains("batch_size=250 batch_size_max=5000"),
        "{}",
        c.summary()
    );
    m.insert("BATCH_SIZE_MAX".into(), "200".into());
    let e = Config::from_map(&m).expect_err("below BATCH_SIZE").to_string();
    assert!(
        e.contains("BATCH_SIZE_MAX") && e.contains("200") && e.contains("BATCH_SIZE 250"),
        "{e}"
    );
    m.insert("BATCH_SIZE_MAX".into(), "100001".into());
    let e = Config::from_map(&m).expect_err("above the limit").to_string();
    assert!(e.contains("BATCH_SIZE_MAX") && e.contains("1..=100000"), "{e}");
    // A bad BATCH_SIZE is reported once, not again as BATCH_SIZE_MAX's lower bound.
    m.insert("BATCH_SIZE".into(), "x".into());
    m.insert("BATCH_SIZE_MAX".into(), "10".into());
    let errs = Config::from_map(&m).expect_err("bad BATCH_SIZE");
    assert_eq!(errs.keys(), ["BATCH_SIZE"]);
}

#[test]
fn validation_checks_and_their_window() {
    let mut m = valid_map();
    let c = Config::from_map(&m).expect("valid");
    assert!(c.upload_validate.is_empty());
    assert_eq!(
        (
            c.upload_timestamp_window.lower_secs,
            c.upload_timestamp_window.upper_secs
        ),
        (-365 * 86_400, 3600)
    );
    assert!(c.summary().contains("validate: (off)\n"), "{}", c.summary());
    m.insert(
        "UPLOAD_VALIDATE".into(),
        " timestamp-window,finite-value, finite-value ".into(),
    );
    m.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "-30d..+10m".into());
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(c.upload_validate, vec![Check::FiniteValue, Check::TimestampWindow]);
    assert_eq!(c.upload_timestamp_window.lower_secs, -30 * 86_400);
    assert!(
        c.summary()
            .contains("validate: finite-value,timestamp-window timestamp_window=-30d..+10m\n"),
        "{}",
        c.summary()
    );
    m.insert("UPLOAD_VALIDATE".into(), String::new());
    assert!(Config::from_map(&m).expect("empty = off").upload_validate.is_empty());

    m.insert("UPLOAD_VALIDATE".into(), "known-meter,no-nan".into());
    m.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "+1h..-365d".into());
    let errs = Config::from_map(&m).expect_err("bad");
    assert_eq!(errs.keys(), vec!["UPLOAD_VALIDATE", "UPLOAD_TIMESTAMP_WINDOW"]);
    let e = errs.to_string();
    assert!(
        e.contains(
            "UPLOAD_VALIDATE: \"no-nan\" is not a check (accepted: known-meter, meter-unit, finite-value, \
             timestamp-window; empty = off)"
        ),
        "{e}"
    );
    assert!(
        e.contains("UPLOAD_TIMESTAMP_WINDOW: \"+1h..-365d\": the lower bound must be before the upper one"),
        "{e}"
    );
    m.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "-1 year..now".into());
    let e = Config::from_map(&m).expect_err("bad").to_string();
    assert!(
        e.contains("UPLOAD_TIMESTAMP_WINDOW: \"-1year..now\": the lower bound \"-1year\" has an unknown unit"),
        "{e}"
    );
}

#[test]
fn batches_in_flight_need_a_remote_connection_each_plus_one() {
    let mut m = valid_map();
    assert_eq!(Config::from_map(&m).expect("valid").upload_batches_in_flight, 1);
    m.insert("UPLOAD_BATCHES_IN_FLIGHT".into(), "4".into());
    m.insert("DB_POOL_MAX".into(), "4".into());
    let e = Config::from_map(&m).expect_err("pool too small").to_string();
    assert!(
        e.contains("UPLOAD_BATCHES_IN_FLIGHT") && e.contains("DB_POOL_MAX of at least 5") && e.contains("is 4"),
        "{e}"
    );
    m.insert("DB_POOL_MAX".into(), "5".into());
    assert_eq!(Config::from_map(&m).expect("valid").upload_batches_in_flight, 4);
    m.insert("UPLOAD_BATCHES_IN_FLIGHT".into(), "9".into());
    let e = Config::from_map(&m).expect_err("out of range").to_string();
    assert!(e.contains("UPLOAD_BATCHES_IN_FLIGHT") && e.contains("1..=8"), "{e}");
}

#[test]
fn download_conflict_policy_names_the_bad_value_and_the_accepted_ones() {
    let mut m = valid_map();
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(c.download_conflict_policy, ConflictPolicy::RemoteWins);
    assert!(c.summary().contains("conflict_policy=remote-wins"), "{}", c.summary());
    for (v, want) in [
        ("keep-local", ConflictPolicy::KeepLocal),
        ("Keep-Local", ConflictPolicy::KeepLocal),
        ("remote-wins", ConflictPolicy::RemoteWins),
    ] {
        m.insert("DOWNLOAD_CONFLICT_POLICY".into(), v.into());
        assert_eq!(Config::from_map(&m).expect(v).download_conflict_policy, want);
    }
    m.insert("DOWNLOAD_CONFLICT_POLICY".into(), "local-wins".into());
    let e = Config::from_map(&m).expect_err("unknown policy").to_string();
    assert!(
        e.contains("DOWNLOAD_CONFLICT_POLICY: \"local-wins\" is not a conflict policy (remote-wins|keep-local)"),
        "{e}"
    );
}

#[test]
fn webhook_formats_and_the_routing_key() {
    let mut m = valid_map();
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(
        (c.alert_webhook_format, c.alert_webhook_url),
        (WebhookFormat::Json, None)
    );

    m.insert("ALERT_WEBHOOK_FORMAT".into(), "teams".into());
    let e = Config::from_map(&m).expect_err("unknown format").to_string();
    assert!(
        e.contains("ALERT_WEBHOOK_FORMAT: \"teams\" is not a webhook format (json|slack|pagerduty)"),
        "{e}"
    );

    m.insert("ALERT_WEBHOOK_FORMAT".into(), "slack".into());
    let e = Config::from_map(&m).expect_err("slack without a URL").to_string();
    assert!(
        e.contains("ALERT_WEBHOOK_URL: not set (ALERT_WEBHOOK_FORMAT=slack"),
        "{e}"
    );
    m.insert(
        "ALERT_WEBHOOK_URL".into(),
        "https://hooks.slack.com/services/T0/B0/x".into(),
    );
    assert_eq!(
        Config::from_map(&m).expect("slack").alert_webhook_format,
        WebhookFormat::Slack
    );

    m.remove("ALERT_WEBHOOK_URL");
    m.insert("ALERT_WEBHOOK_FORMAT".into(), "pagerduty".into());
    let e = Config::from_map(&m).expect_err("pagerduty without a key").to_string();
    assert!(
        e.contains("ALERT_WEBHOOK_ROUTING_KEY: not set (ALERT_WEBHOOK_FORMAT=pagerduty needs"),
        "{e}"
    );
    let bad = "short-key-that-is-SECRET";
    m.insert("ALERT_WEBHOOK_ROUTING_KEY".into(), bad.into());
    let e = Config::from_map(&m).expect_err("malformed key").to_string();
    assert!(
        e.contains("ALERT_WEBHOOK_ROUTING_KEY: is 24 characters long and holds"),
        "{e}"
    );
    assert!(e.contains("32 letters and digits"), "{e}");
    assert!(!e.contains("SECRET"), "a routing key is never shown: {e}");

    let key = "R0123456789abcdefABCDEF012345678";
    m.insert("ALERT_WEBHOOK_ROUTING_KEY".into(), key.into());
    let c = Config::from_map(&m).expect("pagerduty");
    assert_eq!(c.alert_webhook_format, WebhookFormat::PagerDuty);
    assert_eq!(
        c.alert_webhook_url.as_deref(),
        Some("https://events.pagerduty.com/v2/enqueue"),
        "the Events API v2 endpoint by default"
    );
    assert_eq!(c.alert_webhook_routing_key.as_ref().map(Secret::expose), Some(key));
    for text in [format!("{c:?}"), c.summary()] {
        assert!(!text.contains(key), "the routing key leaks: {text}");
    }
    assert!(
        c.summary()
            .contains("webhook=set format=pagerduty routing_key=[redacted]"),
        "{}",
        c.summary()
    );
    m.insert("ALERT_WEBHOOK_URL".into(), "http://127.0.0.1:9/enqueue".into());
    let c = Config::from_map(&m).expect("pagerduty at a given URL");
    assert_eq!(c.alert_webhook_url.as_deref(), Some("http://127.0.0.1:9/enqueue"));
}

#[test]
fn the_confirmation_window_stays_well_below_the_ledger_retention() {
    let mut m = valid_map();
    assert_eq!(
        Config::from_map(&m).expect("valid").upload_confirm_seconds,
        0,
        "off by default"
    );
    m.insert("UPLOAD_CONFIRM_SECONDS".into(), "151200".into());
    assert_eq!(Config::from_map(&m).expect("valid").upload_confirm_seconds, 151_200);
    m.insert("UPLOAD_CONFIRM_SECONDS".into(), "604800".into());
    let e = Config::from_map(&m).expect_err("as long as the retention").to_string();
    assert!(
        e.contains("UPLOAD_CONFIRM_SECONDS")
            && e.contains("604800 is too close")
            && e.contains("604800 s (7 days)")
            && e.contains("at most 151200 s"),
        "{e}"
    );
    m.insert("UPLOAD_CONFIRM_SECONDS".into(), "-1".into());
    assert!(Config::from_map(&m).is_err());
}

#[test]
fn defaults_are_the_contract_ones() {
    let c = Config::from_map(&valid_map()).expect("valid");
    assert_eq!(c.sync_interval, Duration::from_secs(60));
    assert_eq!(c.batch_size, 100);
    assert_eq!(c.max_connection_retries, 5);
    assert_eq!(c.max_query_retries, 3);
    assert_eq!(c.retry_base_delay, Duration::from_millis(2000));
    assert_eq!(c.pool_max, 10);
    assert_eq!(c.pool_idle_timeout, Duration::from_millis(30000));
    assert_eq!(c.connection_timeout, Duration::from_millis(5000));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.log_file, Some(PathBuf::from("logs/sync-process.log")));
    assert_eq!(c.status_bind, Some("127.0.0.1:17461".parse().expect("addr")));
    assert_eq!(c.local.port, 5432);
    assert_eq!(c.remote.sslmode, SslMode::Prefer);
    assert_eq!(c.sync_log_retention_days, 90);
    assert_eq!(c.queue_alert_threshold, 10000);
    assert_eq!(c.alert_after_failures, 3);
    assert_eq!(c.upload_max_rows_per_second, 0);
    assert_eq!(c.download_max_delete_ratio, 0.5);
    assert_eq!(c.download_conflict_policy, ConflictPolicy::RemoteWins);
    assert!(!c.migrate_on_start);
    assert!(!c.source_id.is_empty());
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut m = valid_map();
    m.remove("POSTGRES_CLIENT_HOST");
    m.insert("BATCH_SIZE".into(), "abc".into());
    m.insert("POSTGRES_SYNC_PORT".into(), "70000".into());
    m.insert("LOG_LEVEL".into(), "loud".into());
    m.insert("POSTGRES_CLIENT_SSLMODE".into(), "always".into());
    let errs = Config::from_map(&m).expect_err("invalid");
    assert_eq!(
        errs.keys(),
        vec![
            "POSTGRES_SYNC_PORT",
            "POSTGRES_CLIENT_HOST",
            "POSTGRES_CLIENT_SSLMODE",
            "BATCH_SIZE",
            "LOG_LEVEL"
        ]
    );
    let text = errs.to_string();
    assert!(
        text.contains(r#"BATCH_SIZE: "abc" is not a whole number (1..=100000)"#),
        "{text}"
    );
    assert!(
        text.contains(r#"POSTGRES_SYNC_PORT: "70000" is out of range (1..=65535)"#),
        "{text}"
    );
    assert!(text.contains("disable|prefer|require|verify-ca|verify-full"), "{text}");
}

#[test]
fn passwords_never_show() {
    let c = Config::from_map(&valid_map()).expect("valid");
    for text in [format!("{c:?}"), c.summary(), format!("{}", c.local.password)] {
        assert!(!text.contains("s3cret"), "{text}");
    }
}

#[test]
fn password_file_is_read_and_exclusive() {
    let dir = std::env::temp_dir().join(format!("sp-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("pw");
    std::fs::write(&file, "from-file-pw\n").expect("write");
    let mut m = valid_map();
    m.remove("POSTGRES_CLIENT_PASSWORD");
    m.insert("POSTGRES_CLIENT_PASSWORD_FILE".into(), file.display().to_string());
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(c.remote.password.expose(), "from-file-pw");
    m.insert("POSTGRES_CLIENT_PASSWORD".into(), "x".into());
    let errs = Config::from_map(&m).expect_err("both set");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_PASSWORD_FILE"]);
    m.remove("POSTGRES_CLIENT_PASSWORD");
    m.insert(
        "POSTGRES_CLIENT_PASSWORD_FILE".into(),
        dir.join("missing").display().to_string(),
    );
    assert_eq!(
        Config::from_map(&m).expect_err("missing").keys(),
        vec!["POSTGRES_CLIENT_PASSWORD_FILE"]
    );
    m.insert("POSTGRES_CLIENT_PASSWORD_FILE".into(), "/dev/zero".into());
    let errs = Config::from_map(&m).expect_err("an endless file is refused, not read whole");
    assert!(errs.to_string().contains("larger than"), "{errs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn empty_log_file_and_status_bind_mean_off() {
    let mut m = valid_map();
    m.insert("LOG_FILE".into(), "".into());
    m.insert("STATUS_BIND".into(), "".into());
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(c.log_file, None);
    assert_eq!(c.status_bind, None);
}

#[test]
fn status_allowed_hosts_are_read_in_lower_case_and_checked() {
    let mut m = valid_map();
    let c = Config::from_map(&m).expect("valid");
    assert!(c.status_allowed_hosts.is_empty());
    m.insert(
        "STATUS_ALLOWED_HOSTS".into(),
        " Box-17.Example , 10.0.0.5:17461,[FD00::5]:80,".into(),
    );
    let c = Config::from_map(&m).expect("valid");
    assert_eq!(
        c.status_allowed_hosts,
        ["box-17.example", "10.0.0.5:17461", "[fd00::5]:80"]
    );
    for bad in ["http://box", "box:port", "a b", "[nope]", "box:99999"] {
        m.insert("STATUS_ALLOWED_HOSTS".into(), bad.into());
        let errs = Config::from_map(&m).expect_err(bad);
        let text = errs.to_string();
        assert!(text.contains("STATUS_ALLOWED_HOSTS") && text.contains(bad), "{text}");
    }
}

#[test]
fn example_env_file_documents_every_variable_with_its_default() {
    let text = include_str!("../../sync-process.env");
    let file = parse_env_file(text).expect("sync-process.env parses");
    for (key, default, _) in VARIABLES {
        let documented = file.contains_key(*key) || text.contains(&format!("#{key}="));
        assert!(documented, "{key} is missing from sync-process.env");
        if let (Some(d), Some(v)) = (default, file.get(*key)) {
            assert_eq!(v, d, "{key}: sync-process.env and the code disagree on the default");
        }
    }
    // As shipped, it is "not configured": exactly the required variables are reported.
    let errs = Config::from_map(&file).expect_err("not configured");
    assert!(errs.keys().iter().all(|k| k.starts_with("POSTGRES_")), "{errs}");
    let mut with_creds = file.clone();
    with_creds.extend(valid_map());
    Config::from_map(&with_creds).expect("the example plus credentials is valid");
}

/// A map mixing valid and invalid values for a subset of the numeric variables.
#[derive(Clone, Debug)]
struct Vars(Vec<(String, String)>);

const NUMERIC: &[(&str, i64, i64)] = &[
    ("POSTGRES_SYNC_PORT", 1, 65535),
    ("POSTGRES_CLIENT_PORT", 1, 65535),
    ("BATCH_SIZE", 1, 100_000),
    ("BATCH_SIZE_MAX", 1, 100_000),
    ("SYNC_INTERVAL_SECONDS", 1, 86_400),
    ("MAX_CONNECTION_RETRIES", 0, 20),
    ("MAX_QUERY_RETRIES", 0, 20),
    ("DB_POOL_MAX", 1, 100),
    ("DB_CONNECTION_TIMEOUT_MS", 1, 86_400_000),
    ("UPLOAD_BATCHES_IN_FLIGHT", 1, 8),
    ("SYNC_JITTER_PERCENT", 0, 100),
];

impl Arbitrary for Vars {
    fn arbitrary(g: &mut Gen) -> Vars {
        let mut v = Vec::new();
        for (k, lo, hi) in NUMERIC {
            let value = match u8::arbitrary(g) % 6 {
                0 => continue,
                1 => (lo - 1).to_string(),
                2 => (hi + 1).to_string(),
                3 => String::arbitrary(g),
                _ => (lo + (u32::arbitrary(g) as i64).rem_euclid(hi - lo + 1)).to_string(),
            };
            v.push((k.to_string(), value));
        }
        Vars(v)
    }
}

fn in_range(key: &str, value: &str) -> bool {
    let (_, lo, hi) = NUMERIC.iter().find(|(k, _, _)| *k == key).expect("known key");
    let v = value.trim();
    v.is_empty() || v.parse::<i64>().is_ok_and(|n| n >= *lo && n <= *hi)
}

// Any map either yields a config inside the ranges or errors naming exactly the bad keys; never panics;
// the passwords never appear in the errors.
fn prop_config_errors_name_exactly_the_bad_keys(vars: Vars) -> TestResult {
    let mut m = valid_map();
    for (k, v) in &vars.0 {
        m.insert(k.clone(), v.clone());
    }
    let mut expected: Vec<&str> = vars
        .0
        .iter()
        .filter(|(k, v)| !in_range(k, v))
        .map(|(k, _)| k.as_str())
        .collect();
    // The one rule across variables: a batch in flight per remote connection, plus one.
    let value = |key: &str, default: i64| match vars.0.iter().find(|(k, _)| k == key) {
        None => Some(default),
        Some((_, v)) if v.trim().is_empty() => Some(default),
        Some((k, v)) if in_range(k, v) => v.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    if let (Some(in_flight), Some(pool)) = (value("UPLOAD_BATCHES_IN_FLIGHT", 1), value("DB_POOL_MAX", 10)) {
        if in_flight >= pool {
            expected.push("UPLOAD_BATCHES_IN_FLIGHT");
        }
    }
    // And growing batches never start above their maximum (an unset maximum is BATCH_SIZE).
    if let (Some(batch), Some(max)) = (value("BATCH_SIZE", 100), value("BATCH_SIZE_MAX", i64::MAX)) {
        if max < batch {
            expected.push("BATCH_SIZE_MAX");
        }
    }
    expected.sort();
    match Config::from_map(&m) {
        Ok(c) => {
            let ok = expected.is_empty()
                && (1..=100_000).contains(&c.batch_size)
                && (c.batch_size..=100_000).contains(&c.batch_size_max)
                && c.pool_max >= 1
                && c.pool_max <= 100
                && c.max_query_retries <= 20;
            TestResult::from_bool(ok)
        }
        Err(errs) => {
            let mut keys = errs.keys();
            keys.sort();
            let text = errs.to_string();
            TestResult::from_bool(keys == expected && !text.contains("s3cret"))
        }
    }
}

#[test]
fn config_validation_property() {
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop_config_errors_name_exactly_the_bad_keys as fn(Vars) -> TestResult);
}

#[test]
fn client_certificate_and_key_are_both_or_neither_private_and_make_the_password_optional() {
    use crate::db::identity::testing::{cert_and_key, temp_dir};
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("config-cert");
    let (cert, key) = cert_and_key(&dir, "box-1");
    let mut m = valid_map();
    m.insert("POSTGRES_CLIENT_SSLCERT".into(), cert.display().to_string());
    let errs = Config::from_map(&m).expect_err("a certificate without its key");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_SSLKEY"], "{errs}");
    assert!(
        errs.to_string()
            .contains("remote client certificate needs its private key"),
        "{errs}"
    );

    m.remove("POSTGRES_CLIENT_SSLCERT");
    m.insert("POSTGRES_CLIENT_SSLKEY".into(), key.display().to_string());
    let errs = Config::from_map(&m).expect_err("a key without its certificate");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_SSLCERT"], "{errs}");

    // Both: valid, and then no password is needed (cert authentication).
    m.insert("POSTGRES_CLIENT_SSLCERT".into(), cert.display().to_string());
    m.remove("POSTGRES_CLIENT_PASSWORD");
    let c = Config::from_map(&m).expect("certificate authentication needs no password");
    assert_eq!(c.remote.sslcert.as_deref(), Some(cert.as_path()));
    assert_eq!(c.remote.sslkey.as_deref(), Some(key.as_path()));
    assert_eq!(c.remote.password.expose(), "");
    assert!(
        c.summary().contains(&format!("sslcert={}", cert.display())),
        "{}",
        c.summary()
    );
    // The local side still needs its password.
    let mut no_local = m.clone();
    no_local.remove("POSTGRES_SYNC_PASSWORD");
    let errs = Config::from_map(&no_local).expect_err("no local password");
    assert_eq!(errs.keys(), vec!["POSTGRES_SYNC_PASSWORD"], "{errs}");

    // A key readable by others is refused as libpq refuses it, naming the file and the fix.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let errs = Config::from_map(&m).expect_err("world-readable key");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_SSLKEY"], "{errs}");
    let text = errs.to_string();
    assert!(
        text.contains(&key.display().to_string()) && text.contains("chmod 600"),
        "{text}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A file that is not there.
    let mut missing = m.clone();
    missing.insert(
        "POSTGRES_CLIENT_SSLCERT".into(),
        dir.join("nope.crt").display().to_string(),
    );
    let errs = Config::from_map(&missing).expect_err("missing certificate");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_SSLCERT"], "{errs}");
    assert!(errs.to_string().contains("nope.crt"), "{errs}");

    // Over sslmode=disable a certificate would never be presented.
    m.insert("POSTGRES_CLIENT_SSLMODE".into(), "disable".into());
    let errs = Config::from_map(&m).expect_err("certificate without TLS");
    assert_eq!(errs.keys(), vec!["POSTGRES_CLIENT_SSLCERT"], "{errs}");
    let _ = std::fs::remove_dir_all(&dir);
}
