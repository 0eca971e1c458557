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
pub use read::{hostname, read_password_file};
pub use variables::{default_of, unknown_variable_warnings, VARIABLES};

use crate::upload::validate::{Check, TimestampWindow};

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

/// DOWNLOAD_CONFLICT_POLICY: what a download does with a mirrored row changed locally since it was last
/// mirrored (download/diff.rs, [`reconcile`](crate::download::reconcile)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// Overwrite it with the remote's values (re-insert it when it was deleted locally), and report it.
    #[default]
    RemoteWins,
    /// Leave it as it is, and report it again every cycle until the local change is undone.
    KeepLocal,
}

impl ConflictPolicy {
    pub const ACCEPTED: &'static str = "remote-wins|keep-local";

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::RemoteWins => "remote-wins",
            ConflictPolicy::KeepLocal => "keep-local",
        }
    }
}

impl FromStr for ConflictPolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<ConflictPolicy, ()> {
        Ok(match s {
            "remote-wins" => ConflictPolicy::RemoteWins,
            "keep-local" => ConflictPolicy::KeepLocal,
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
    /// The password as read at start (empty: none, with a client certificate).
    pub password: Secret,
    /// `*_PASSWORD_FILE`: read again for every new connection, so a rotated password needs no restart.
    pub password_file: Option<PathBuf>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// `*_SSLCERT` and `*_SSLKEY` (both or neither): the client certificate and its key, PEM, read again
    /// whenever a new connection finds them changed.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
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
    /// BATCH_SIZE_MAX: batches grow from `batch_size` up to this while a backlog remains (= `batch_size`: off).
    pub batch_size_max: u32,
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
    /// UPLOAD_VALIDATE: the checks a reading must pass before upload, in `Check::ALL` order (empty = off).
    pub upload_validate: Vec<Check>,
    /// UPLOAD_TIMESTAMP_WINDOW: timestamp-window's window around the local server's clock.
    pub upload_timestamp_window: TimestampWindow,
    /// A ratio of row counts (not a reading), in 0..=1.
    pub download_max_delete_ratio: f64,
    /// DOWNLOAD_CONFLICT_POLICY.
    pub download_conflict_policy: ConflictPolicy,
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
        let (download_max_delete_ratio, download_conflict_policy, migrate_on_start) =
            read::download_and_migrations(&mut r);
        r.finish()?;
        Ok(Config {
            local,
            remote,
            sync_interval: cycle.sync_interval,
            batch_size: cycle.batch_size,
            batch_size_max: cycle.batch_size_max,
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
            upload_validate: upload.upload_validate,
            upload_timestamp_window: upload.upload_timestamp_window,
            download_max_delete_ratio,
            download_conflict_policy,
            migrate_on_start,
        })
    }

    /// The configuration for a person: every setting, passwords redacted.
    pub fn summary(&self) -> String {
        let db = |d: &DbConfig| {
            format!(
                "{} user={} password={}{} sslmode={}{}{}",
                d.target(),
                d.user,
                if d.password.expose().is_empty() {
                    "(empty)"
                } else {
                    "[redacted]"
                },
                d.password_file
                    .as_ref()
                    .map(|p| format!(" password_file={}", p.display()))
                    .unwrap_or_default(),
                d.sslmode.as_str(),
                d.sslrootcert
                    .as_ref()
                    .map(|p| format!(" sslrootcert={}", p.display()))
                    .unwrap_or_default(),
                match (&d.sslcert, &d.sslkey) {
                    (Some(c), Some(k)) => format!(" sslcert={} sslkey={}", c.display(), k.display()),
                    _ => String::new(),
                }
            )
        };
        let mut s = String::new();
        s.push_str(&format!("local (sync server):    {}\n", db(&self.local)));
        s.push_str(&format!("remote (client server): {}\n", db(&self.remote)));
        s.push_str(&format!(
            "sync: interval={}s batch_size={} batch_size_max={} batches_in_flight={} confirm={}s source_id={} source_column={} \
             max_rows_per_second={}\n",
            self.sync_interval.as_secs(),
            self.batch_size,
            self.batch_size_max,
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
            "validate: {}\n",
            if self.upload_validate.is_empty() {
                "(off)".to_string()
            } else {
                let names: Vec<&str> = self.upload_validate.iter().map(|c| c.name()).collect();
                let window = if self.upload_validate.contains(&Check::TimestampWindow) {
                    format!(" timestamp_window={}", self.upload_timestamp_window.text)
                } else {
                    String::new()
                };
                format!("{}{window}", names.join(","))
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
            "download: max_delete_ratio={} conflict_policy={} | sync_logs retention: {} days | migrate_on_start={}",
            self.download_max_delete_ratio,
            self.download_conflict_policy.as_str(),
            self.sync_log_retention_days,
            self.migrate_on_start
        ));
        s
    }
}

#[cfg(test)]
mod tests;
