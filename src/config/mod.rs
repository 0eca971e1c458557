//! Configuration: the environment variables of the contract, parsed in two stages.
//!
//! Stage one gathers raw `KEY=VALUE` pairs (env_file.rs: `--env-file` with the real environment laid over it;
//! the environment wins). Stage two, [`Config::from_map`], turns a map into a checked, typed [`Config`], one
//! group of variables at a time (read.rs), reporting *every* bad variable at once with what is accepted. The
//! parser never reads the process environment itself, so tests need no env juggling. Every variable and its
//! one default are listed in [`VARIABLES`] (variables.rs). Passwords live in [`Secret`], whose `Debug` and
//! `Display` redact them. Does not own: connecting (db.rs) or logging setup (logging.rs).

mod env_file;
mod read;
mod variables;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use env_file::{gather, load_variables, parse_env_file, process_env};
pub use read::hostname;
pub use variables::{default_of, unknown_variable_warnings, VARIABLES};

/// A password. Never printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The password itself, for handing to the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// libpq's sslmode values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ACCEPTED: &'static str = "disable|prefer|require|verify-ca|verify-full";

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ();
    fn from_str(s: &str) -> Result<SslMode, ()> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// ALERT_WEBHOOK_FORMAT: the body of an alert webhook POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The project's own JSON: `{alert, state, message, source_id, timestamp}`.
    Json,
    /// A Slack incoming-webhook message: `text` plus blocks.
    Slack,
    /// A PagerDuty Events API v2 event: trigger on raise, resolve on clear, one dedup_key per alert and site.
    PagerDuty,
}

impl WebhookFormat {
    pub const ACCEPTED: &'static str = "json|slack|pagerduty";
    /// Where PagerDuty format posts when ALERT_WEBHOOK_URL is not set.
    pub const PAGERDUTY_EVENTS_URL: &'static str = "https://events.pagerduty.com/v2/enqueue";

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::PagerDuty => "pagerduty",
        }
    }
}

impl FromStr for WebhookFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<WebhookFormat, ()> {
        Ok(match s {
            "json" => WebhookFormat::Json,
            "slack" => WebhookFormat::Slack,
            "pagerduty" => WebhookFormat::PagerDuty,
            _ => return Err(()),
        })
    }
}

/// One database's connection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

impl DbConfig {
    /// `host:port/db`, the way errors and logs name this database.
    pub fn target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub local: DbConfig,
    pub remote: DbConfig,
    pub sync_interval: Duration,
    pub batch_size: u32,
    pub max_connection_retries: u32,
    pub max_query_retries: u32,
    pub retry_base_delay: Duration,
    /// SYNC_JITTER_PERCENT: ticks and retry waits are shortened by a random share of up to this (jitter.rs).
    pub jitter_percent: u8,
    pub pool_max: u32,
    pub pool_idle_timeout: Duration,
    pub connection_timeout: Duration,
    pub statement_timeout: Duration,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    pub source_id: String,
    pub status_bind: Option<SocketAddr>,
    /// STATUS_ALLOWED_HOSTS, lower case: Host header values the status server answers besides its own address
    /// and the loopback names.
    pub status_allowed_hosts: Vec<String>,
    pub sync_log_retention_days: u32,
    pub queue_alert_threshold: u64,
    pub alert_after_failures: u32,
    /// The webhook's URL: ALERT_WEBHOOK_URL, or for pagerduty its default. None: no webhook.
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_format: WebhookFormat,
    /// ALERT_WEBHOOK_ROUTING_KEY (always Some for pagerduty).
    pub alert_webhook_routing_key: Option<Secret>,
    pub upload_max_rows_per_second: u32,
    /// Batches uploading at once (each on its own remote connection); 1 = one at a time.
    pub upload_batches_in_flight: u32,
    /// UPLOAD_SOURCE_COLUMN: a column of the remote meter_readings that receives `source_id` (None = none).
    /// A checked identifier; quote it where it is used.
    pub upload_source_column: Option<String>,
    /// UPLOAD_CONFIRM_SECONDS: how long an acknowledged batch is kept (marked) before the ledger is asked again
    /// and it is deleted; 0 = deleted at once.
    pub upload_confirm_seconds: u64,
    /// A ratio of row counts (not a reading), in 0..=1.
    pub download_max_delete_ratio: f64,
    pub migrate_on_start: bool,
}

/// One bad variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every bad variable, in the order of the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.key.as_str()).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

/// STATUS_BIND alone, for `sync-process status`, which needs nothing else (no database variable, no
/// password): None when it is set empty (the status server is off).
pub fn status_bind(map: &BTreeMap<String, String>) -> Result<Option<SocketAddr>, ConfigErrors> {
    let mut r = read::Reader::new(map);
    let bind = read::status_bind(&mut r);
    r.finish()?;
    Ok(bind)
}

impl Config {
    /// Checks a map of variables. Returns the config, or every problem at once (in the order of the contract).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut r = read::Reader::new(map);
        let (local, remote) = read::databases(&mut r);
        let cycle = read::cycle(&mut r);
        let pool = read::pool(&mut r);
        let (log_level, log_file) = read::logging(&mut r);
        let upload = read::upload(&mut r, pool.pool_max);
        let status = read::status_and_alerts(&mut r);
        let (download_max_delete_ratio, migrate_on_start) = read::download_and_migrations(&mut r);
        r.finish()?;
        Ok(Config {
            local,
            remote,
            sync_interval: cycle.sync_interval,
            batch_size: cycle.batch_size,
            max_connection_retries: cycle.max_connection_retries,
            max_query_retries: cycle.max_query_retries,
            retry_base_delay: cycle.retry_base_delay,
            jitter_percent: cycle.jitter_percent,
            pool_max: pool.pool_max,
            pool_idle_timeout: pool.pool_idle_timeout,
            connection_timeout: pool.connection_timeout,
            statement_timeout: pool.statement_timeout,
            log_level,
            log_file,
            source_id: upload.source_id,
            status_bind: status.status_bind,
            status_allowed_hosts: status.status_allowed_hosts,
            sync_log_retention_days: status.sync_log_retention_days,
            queue_alert_threshold: status.queue_alert_threshold,
            alert_after_failures: status.alert_after_failures,
            alert_webhook_url: status.alert_webhook_url,
            alert_webhook_format: status.alert_webhook_format,
            alert_webhook_routing_key: status.alert_webhook_routing_key,
            upload_max_rows_per_second: upload.upload_max_rows_per_second,
            upload_batches_in_flight: upload.upload_batches_in_flight,
            upload_source_column: upload.upload_source_column,
            upload_confirm_seconds: upload.upload_confirm_seconds,
            download_max_delete_ratio,
            migrate_on_start,
        })
    }

    /// The configuration for a person: every setting, passwords redacted.
    pub fn summary(&self) -> String {
        let db = |d: &DbConfig| {
            format!(
                "{} user={} password={} sslmode={}{}",
                d.target(),
                d.user,
                if d.password.expose().is_empty() {
                    "(empty)"
                } else {
                    "[redacted]"
                },
                d.sslmode.as_str(),
                d.sslrootcert
                    .as_ref()
                    .map(|p| format!(" sslrootcert={}", p.display()))
                    .unwrap_or_default()
            )
        };
        let mut s = String::new();
        s.push_str(&format!("local (sync server):    {}\n", db(&self.local)));
        s.push_str(&format!("remote (client server): {}\n", db(&self.remote)));
        s.push_str(&format!(
            "sync: interval={}s batch_size={} batches_in_flight={} confirm={}s source_id={} source_column={} \
             max_rows_per_second={}\n",
            self.sync_interval.as_secs(),
            self.batch_size,
            self.upload_batches_in_flight,
            self.upload_confirm_seconds,
            self.source_id,
            self.upload_source_column.as_deref().unwrap_or("(none)"),
            if self.upload_max_rows_per_second == 0 {
                "unlimited".to_string()
            } else {
                self.upload_max_rows_per_second.to_string()
            }
        ));
        s.push_str(&format!(
            "retries: connection={} query={} base_delay={}ms jitter={}%\n",
            self.max_connection_retries,
            self.max_query_retries,
            self.retry_base_delay.as_millis(),
            self.jitter_percent
        ));
        s.push_str(&format!(
            "pool: max={} idle_timeout={}ms connection_timeout={}ms statement_timeout={}ms\n",
            self.pool_max,
            self.pool_idle_timeout.as_millis(),
            self.connection_timeout.as_millis(),
            self.statement_timeout.as_millis()
        ));
        s.push_str(&format!(
            "log: level={} file={}\n",
            self.log_level,
            self.log_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(stderr only)".into())
        ));
        s.push_str(&format!(
            "status: {}{}\n",
            self.status_bind
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(off)".into()),
            if self.status_allowed_hosts.is_empty() {
                String::new()
            } else {
                format!(" allowed_hosts={}", self.status_allowed_hosts.join(","))
            }
        ));
        s.push_str(&format!(
            "alerts: after_failures={} queue_threshold={} webhook={}\n",
            self.alert_after_failures,
            self.queue_alert_threshold,
            match &self.alert_webhook_url {
                None => "(none)".to_string(),
                Some(_) => format!(
                    "set format={}{}",
                    self.alert_webhook_format.as_str(),
                    if self.alert_webhook_routing_key.is_some() {
                        " routing_key=[redacted]"
                    } else {
                        ""
                    }
                ),
            }
        ));
        s.push_str(&format!(
            "download: max_delete_ratio={} | sync_logs retention: {} days | migrate_on_start={}",
            self.download_max_delete_ratio, self.sync_log_retention_days, self.migrate_on_start
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        expected.sort();
        match Config::from_map(&m) {
            Ok(c) => {
                let ok = expected.is_empty()
                    && (1..=100_000).contains(&c.batch_size)
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
}
