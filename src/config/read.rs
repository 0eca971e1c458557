//! Stage two's readers: typed values out of the map of raw variables, one reader per group of variables.
//!
//! Owns: [`Reader`] (a value or its default from [`VARIABLES`](super::VARIABLES), range checks, and the list of
//! every problem found), and the group readers, each returning its part of the [`Config`](super::Config):
//! [`databases`] (POSTGRES_SYNC_* and POSTGRES_CLIENT_*, passwords and password files), [`cycle`] (interval,
//! batch size, retries), [`pool`] (DB_*), [`logging`] (LOG_*), [`upload`] (SYNC_SOURCE_ID, UPLOAD_*, and the
//! one rule across variables: a remote connection per batch in flight, plus one), [`status_and_alerts`]
//! (STATUS_BIND, STATUS_ALLOWED_HOSTS, SYNC_LOG_RETENTION_DAYS, QUEUE_/ALERT_*) and [`download_and_migrations`]. Does not own: the
//! list of variables and their defaults (variables.rs), assembling the `Config` (mod.rs).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::variables::{contract_index, default_of};
use super::{ConfigError, ConfigErrors, ConflictPolicy, DbConfig, Secret, SslMode, WebhookFormat};
use crate::upload::validate::{Check, TimestampWindow};

/// Collects errors while reading typed values out of the map. On a bad value a reader records the error and
/// returns a placeholder that is never used: `Config::from_map` then returns the errors, not a `Config`.
pub(super) struct Reader<'a> {
    map: &'a BTreeMap<String, String>,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(map: &'a BTreeMap<String, String>) -> Reader<'a> {
        Reader {
            map,
            errors: Vec::new(),
        }
    }

    /// Every problem found, in the order of the contract (the order of VARIABLES), or Ok.
    pub(super) fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| contract_index(&e.key));
        Err(ConfigErrors(self.errors))
    }

    fn err(&mut self, key: &str, message: String) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            message,
        });
    }

    fn has_error(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    /// The raw value, or the default. A variable set to the empty string counts as unset.
    fn raw(&self, key: &str) -> Option<&'a str> {
        match self.map.get(key).map(|s| s.trim()) {
            Some(v) if !v.is_empty() => Some(v),
            _ => default_of(key),
        }
    }

    /// The value of a variable that has a default (empty only if VARIABLES gives it none).
    fn or_default(&self, key: &str) -> &'a str {
        self.raw(key).unwrap_or("")
    }

    /// The value of a variable whose empty string means "off" (LOG_FILE, STATUS_BIND): None when set empty,
    /// the default when unset.
    fn off_when_empty(&self, key: &str) -> Option<&'a str> {
        match self.map.get(key).map(|s| s.trim()) {
            Some("") => None,
            Some(v) => Some(v),
            None => default_of(key),
        }
    }

    fn required(&mut self, key: &str, what: &str) -> String {
        match self.raw(key) {
            Some(v) => v.to_string(),
            None => {
                self.err(key, format!("not set (the {what})"));
                String::new()
            }
        }
    }

    fn int<T>(&mut self, key: &str, min: T, max: T) -> T
    where
        T: TryFrom<i128> + Into<i128> + Copy + fmt::Display,
    {
        let v = self.or_default(key);
        match v.parse::<i128>() {
            Ok(n) if n >= min.into() && n <= max.into() => T::try_from(n).unwrap_or(min),
            Ok(_) => {
                self.err(key, format!("{:?} is out of range ({min}..={max})", shorten(v)));
                min
            }
            Err(_) => {
                self.err(key, format!("{:?} is not a whole number ({min}..={max})", shorten(v)));
                min
            }
        }
    }

    /// A `*_MS` variable: 1 ms to a day.
    fn milliseconds(&mut self, key: &str) -> Duration {
        Duration::from_millis(self.int::<u64>(key, 1, 86_400_000))
    }

    /// A boolean: true|1|yes|on or false|0|no|off, any case.
    fn boolean(&mut self, key: &str) -> bool {
        match self.or_default(key).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                self.err(key, format!("{:?} is not a boolean (true|false)", shorten(other)));
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The groups, in the order of the contract.

/// The local (POSTGRES_SYNC_*) and the remote (POSTGRES_CLIENT_*) database.
pub(super) fn databases(r: &mut Reader<'_>) -> (DbConfig, DbConfig) {
    let local = database(r, "POSTGRES_SYNC", "local");
    let remote = database(r, "POSTGRES_CLIENT", "remote");
    (local, remote)
}

/// SYNC_INTERVAL_SECONDS, BATCH_SIZE (and BATCH_SIZE_MAX) and the retries.
pub(super) struct Cycle {
    pub sync_interval: Duration,
    pub batch_size: u32,
    pub batch_size_max: u32,
    pub max_connection_retries: u32,
    pub max_query_retries: u32,
    pub retry_base_delay: Duration,
    pub jitter_percent: u8,
}

pub(super) fn cycle(r: &mut Reader<'_>) -> Cycle {
    let sync_interval = Duration::from_secs(r.int::<u64>("SYNC_INTERVAL_SECONDS", 1, 86_400));
    let batch_size = r.int::<u32>("BATCH_SIZE", 1, BATCH_SIZE_LIMIT);
    Cycle {
        sync_interval,
        batch_size,
        batch_size_max: batch_size_max(r, batch_size),
        max_connection_retries: r.int::<u32>("MAX_CONNECTION_RETRIES", 0, 20),
        max_query_retries: r.int::<u32>("MAX_QUERY_RETRIES", 0, 20),
        retry_base_delay: Duration::from_millis(r.int::<u64>("RETRY_BASE_DELAY_MS", 1, 600_000)),
        jitter_percent: r.int::<u8>("SYNC_JITTER_PERCENT", 0, 100),
    }
}

/// The upper limit of BATCH_SIZE and BATCH_SIZE_MAX.
const BATCH_SIZE_LIMIT: u32 = 100_000;

/// BATCH_SIZE_MAX: unset (or empty) = `batch_size` (batches do not grow); else at least BATCH_SIZE, at most
/// BATCH_SIZE's own limit.
fn batch_size_max(r: &mut Reader<'_>, batch_size: u32) -> u32 {
    if r.raw("BATCH_SIZE_MAX").is_none() {
        return batch_size;
    }
    let max = r.int::<u32>("BATCH_SIZE_MAX", 1, BATCH_SIZE_LIMIT);
    if r.has_error("BATCH_SIZE_MAX") || r.has_error("BATCH_SIZE") {
        return batch_size;
    }
    if max < batch_size {
        r.err(
            "BATCH_SIZE_MAX",
            format!("{max} is below BATCH_SIZE {batch_size} (batches grow from BATCH_SIZE up to BATCH_SIZE_MAX)"),
        );
        return batch_size;
    }
    max
}

/// DB_POOL_MAX and the DB_* timeouts.
pub(super) struct Pool {
    pub pool_max: u32,
    pub pool_idle_timeout: Duration,
    pub connection_timeout: Duration,
    pub statement_timeout: Duration,
}

pub(super) fn pool(r: &mut Reader<'_>) -> Pool {
    Pool {
        pool_max: r.int::<u32>("DB_POOL_MAX", 1, 100),
        pool_idle_timeout: r.milliseconds("DB_POOL_IDLE_TIMEOUT_MS"),
        connection_timeout: r.milliseconds("DB_CONNECTION_TIMEOUT_MS"),
        statement_timeout: r.milliseconds("DB_STATEMENT_TIMEOUT_MS"),
    }
}

/// LOG_LEVEL and LOG_FILE (set to empty: no file).
pub(super) fn logging(r: &mut Reader<'_>) -> (log::LevelFilter, Option<PathBuf>) {
    let level = match r.or_default("LOG_LEVEL").to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            let msg = format!("{:?} is not a log level (error|warn|info|debug|trace)", shorten(other));
            r.err("LOG_LEVEL", msg);
            log::LevelFilter::Off
        }
    };
    (level, r.off_when_empty("LOG_FILE").map(PathBuf::from))
}

/// SYNC_SOURCE_ID (default: the host name), the UPLOAD_* pacing and concurrency, and UPLOAD_SOURCE_COLUMN.
pub(super) struct Upload {
    pub source_id: String,
    pub upload_max_rows_per_second: u32,
    pub upload_batches_in_flight: u32,
    pub upload_source_column: Option<String>,
    pub upload_confirm_seconds: u64,
    pub upload_validate: Vec<Check>,
    pub upload_timestamp_window: TimestampWindow,
}

/// `pool_max`: DB_POOL_MAX as read (the remote pool must hold a connection per batch in flight, plus one).
pub(super) fn upload(r: &mut Reader<'_>, pool_max: u32) -> Upload {
    let source_id = match r.raw("SYNC_SOURCE_ID") {
        Some(v) if v.chars().count() <= 200 => v.to_string(),
        Some(v) => {
            r.err(
                "SYNC_SOURCE_ID",
                format!("{:?} is longer than 200 characters", shorten(v)),
            );
            String::new()
        }
        None => hostname(),
    };
    let upload_max_rows_per_second = r.int::<u32>("UPLOAD_MAX_ROWS_PER_SECOND", 0, 100_000_000);
    let in_flight = r.int::<u32>("UPLOAD_BATCHES_IN_FLIGHT", 1, 8);
    let both_valid = !r.has_error("DB_POOL_MAX") && !r.has_error("UPLOAD_BATCHES_IN_FLIGHT");
    if both_valid && in_flight >= pool_max {
        r.err(
            "UPLOAD_BATCHES_IN_FLIGHT",
            format!(
                "{in_flight} needs DB_POOL_MAX of at least {} (one remote connection per batch in flight, plus \
                 one), DB_POOL_MAX is {pool_max}",
                in_flight + 1
            ),
        );
    }
    let upload_source_column = r.off_when_empty("UPLOAD_SOURCE_COLUMN").and_then(|v| {
        if is_sql_identifier(v) {
            Some(v.to_string())
        } else {
            r.err(
                "UPLOAD_SOURCE_COLUMN",
                format!(
                    "{:?} is not a column name: letters, digits and _ only, not starting with a digit, at most 63 \
                     bytes (empty = none)",
                    shorten(v)
                ),
            );
            None
        }
    });
    Upload {
        source_id,
        upload_max_rows_per_second,
        upload_batches_in_flight: in_flight,
        upload_source_column,
        upload_confirm_seconds: confirm_window(r),
        upload_validate: validate_checks(r),
        upload_timestamp_window: timestamp_window(r),
    }
}

/// UPLOAD_VALIDATE: a comma list of check names (empty = off).
fn validate_checks(r: &mut Reader<'_>) -> Vec<Check> {
    Check::parse_list(r.raw("UPLOAD_VALIDATE").unwrap_or("")).unwrap_or_else(|e| {
        r.err("UPLOAD_VALIDATE", e);
        Vec::new()
    })
}

/// UPLOAD_TIMESTAMP_WINDOW: `LOWER..UPPER` (checked whether or not timestamp-window is enabled).
fn timestamp_window(r: &mut Reader<'_>) -> TimestampWindow {
    let v = r.or_default("UPLOAD_TIMESTAMP_WINDOW");
    TimestampWindow::parse(v).unwrap_or_else(|e| {
        r.err("UPLOAD_TIMESTAMP_WINDOW", e);
        TimestampWindow {
            lower_secs: 0,
            upper_secs: 0,
            text: String::new(),
        }
    })
}

/// A plain SQL identifier (quoted where it is used, so any case is kept): ASCII letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (PostgreSQL's NAMEDATALEN - 1).
fn is_sql_identifier(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// UPLOAD_CONFIRM_SECONDS: 0 (off) up to a quarter of the upload ledger's retention, so that the ledger row of
/// a batch awaiting confirmation is never near its prune age.
fn confirm_window(r: &mut Reader<'_>) -> u64 {
    let retention = crate::upload::LEDGER_RETENTION.as_secs();
    let max = retention / 4;
    let n = r.int::<u64>("UPLOAD_CONFIRM_SECONDS", 0, u64::from(u32::MAX));
    if n > max {
        r.err(
            "UPLOAD_CONFIRM_SECONDS",
            format!(
                "{n} is too close to the upload ledger's retention of {retention} s ({} days): a ledger row must \
                 never be pruned while its batch awaits confirmation; at most {max} s (a quarter of it) is \
                 accepted, and a few minutes covers a failover",
                retention / 86_400
            ),
        );
    }
    n
}

/// STATUS_BIND (set to empty: off), STATUS_ALLOWED_HOSTS, SYNC_LOG_RETENTION_DAYS, QUEUE_ALERT_THRESHOLD and
/// the ALERT_* variables.
pub(super) struct StatusAndAlerts {
    pub status_bind: Option<SocketAddr>,
    pub status_allowed_hosts: Vec<String>,
    pub sync_log_retention_days: u32,
    pub queue_alert_threshold: u64,
    pub alert_after_failures: u32,
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_format: WebhookFormat,
    pub alert_webhook_routing_key: Option<Secret>,
}

/// STATUS_BIND alone (None: set empty, off). Also all that `sync-process status` reads.
pub(super) fn status_bind(r: &mut Reader<'_>) -> Option<SocketAddr> {
    r.off_when_empty("STATUS_BIND")
        .and_then(|v| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let msg = format!(
                    "{:?} is not an address (IP:PORT, e.g. 127.0.0.1:17461; empty = off)",
                    shorten(v)
                );
                r.err("STATUS_BIND", msg);
                None
            }
        })
}

pub(super) fn status_and_alerts(r: &mut Reader<'_>) -> StatusAndAlerts {
    let status_bind = status_bind(r);
    let status_allowed_hosts = allowed_hosts(r);
    let sync_log_retention_days = r.int::<u32>("SYNC_LOG_RETENTION_DAYS", 1, 36_500);
    let queue_alert_threshold = r.int::<u64>("QUEUE_ALERT_THRESHOLD", 1, u64::MAX / 2);
    let alert_after_failures = r.int::<u32>("ALERT_AFTER_FAILURES", 1, 1_000_000);
    let alert_webhook_url = match r.raw("ALERT_WEBHOOK_URL") {
        None => None,
        Some(v) if v.starts_with("http://") || v.starts_with("https://") => Some(v.to_string()),
        Some(v) => {
            r.err(
                "ALERT_WEBHOOK_URL",
                format!("{:?} is not an http:// or https:// URL", shorten(v)),
            );
            None
        }
    };
    let (alert_webhook_url, alert_webhook_format, alert_webhook_routing_key) = webhook(r, alert_webhook_url);
    StatusAndAlerts {
        status_bind,
        status_allowed_hosts,
        sync_log_retention_days,
        queue_alert_threshold,
        alert_after_failures,
        alert_webhook_url,
        alert_webhook_format,
        alert_webhook_routing_key,
    }
}

/// ALERT_WEBHOOK_FORMAT and ALERT_WEBHOOK_ROUTING_KEY, with the URL as read: pagerduty needs a routing key
/// and has a default URL; slack needs a URL. The routing key is a secret: no message shows it.
fn webhook(r: &mut Reader<'_>, url: Option<String>) -> (Option<String>, WebhookFormat, Option<Secret>) {
    let v = r.or_default("ALERT_WEBHOOK_FORMAT");
    let format = match v.to_ascii_lowercase().parse::<WebhookFormat>() {
        Ok(f) => f,
        Err(()) => {
            let msg = format!("{:?} is not a webhook format ({})", shorten(v), WebhookFormat::ACCEPTED);
            r.err("ALERT_WEBHOOK_FORMAT", msg);
            WebhookFormat::Json
        }
    };
    let key = r.raw("ALERT_WEBHOOK_ROUTING_KEY").map(|k| {
        if !(k.len() == 32 && k.bytes().all(|b| b.is_ascii_alphanumeric())) {
            let msg = format!(
                "is {} characters long{}; a PagerDuty Events API v2 routing key (the integration key of an \
                 \"Events API v2\" integration) is 32 letters and digits (the value is not shown: it is a secret)",
                k.chars().count(),
                if k.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    ""
                } else {
                    " and holds characters other than letters and digits"
                }
            );
            r.err("ALERT_WEBHOOK_ROUTING_KEY", msg);
        }
        Secret::new(k)
    });
    let url = match format {
        WebhookFormat::PagerDuty => {
            if key.is_none() {
                r.err(
                    "ALERT_WEBHOOK_ROUTING_KEY",
                    "not set (ALERT_WEBHOOK_FORMAT=pagerduty needs the routing key of the PagerDuty service's \
                     Events API v2 integration)"
                        .to_string(),
                );
            }
            url.or_else(|| Some(WebhookFormat::PAGERDUTY_EVENTS_URL.to_string()))
        }
        WebhookFormat::Slack => {
            if url.is_none() && !r.has_error("ALERT_WEBHOOK_URL") {
                r.err(
                    "ALERT_WEBHOOK_URL",
                    "not set (ALERT_WEBHOOK_FORMAT=slack posts to a Slack incoming-webhook URL, \
                     https://hooks.slack.com/services/...)"
                        .to_string(),
                );
            }
            url
        }
        WebhookFormat::Json => url,
    };
    (url, format, key)
}

/// STATUS_ALLOWED_HOSTS: comma-separated host names or IP addresses (IPv6 in brackets), each optionally with
/// `:port`; kept in lower case.
fn allowed_hosts(r: &mut Reader<'_>) -> Vec<String> {
    let Some(v) = r.raw("STATUS_ALLOWED_HOSTS") else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let e = entry.to_ascii_lowercase();
        let (name, port) = match e.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((ip, port)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => (ip, port),
                _ => ("", ""),
            },
            None => match e.split_once(':') {
                Some((n, _)) => (n, &e[n.len()..]),
                None => (e.as_str(), ""),
            },
        };
        let name_ok = !name.is_empty()
            && (e.starts_with('[')
                || name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
        let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
        if name_ok && port_ok {
            hosts.push(e);
        } else {
            r.err(
                "STATUS_ALLOWED_HOSTS",
                format!(
                    "{:?} is not a host name or IP address with an optional :port (e.g. box-17.example,10.0.0.5:17461,[fd00::5])",
                    shorten(entry)
                ),
            );
        }
    }
    hosts
}

/// DOWNLOAD_MAX_DELETE_RATIO, DOWNLOAD_CONFLICT_POLICY and MIGRATE_ON_START.
pub(super) fn download_and_migrations(r: &mut Reader<'_>) -> (f64, ConflictPolicy, bool) {
    let v = r.or_default("DOWNLOAD_MAX_DELETE_RATIO");
    let ratio = match v.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => x,
        _ => {
            r.err(
                "DOWNLOAD_MAX_DELETE_RATIO",
                format!("{:?} is not a number in 0..=1", shorten(v)),
            );
            0.0
        }
    };
    let v = r.or_default("DOWNLOAD_CONFLICT_POLICY");
    let policy = match v.to_ascii_lowercase().parse::<ConflictPolicy>() {
        Ok(p) => p,
        Err(()) => {
            let msg = format!(
                "{:?} is not a conflict policy ({})",
                shorten(v),
                ConflictPolicy::ACCEPTED
            );
            r.err("DOWNLOAD_CONFLICT_POLICY", msg);
            ConflictPolicy::RemoteWins
        }
    };
    (ratio, policy, r.boolean("MIGRATE_ON_START"))
}

// ---------------------------------------------------------------------------------------------------------
// One database.

fn database(r: &mut Reader<'_>, prefix: &str, side: &str) -> DbConfig {
    let key = |suffix: &str| format!("{prefix}_{suffix}");
    let host = r.required(&key("HOST"), &format!("{side} database host"));
    let port = r.int::<u16>(&key("PORT"), 1, 65535);
    let dbname = r.required(&key("DB"), &format!("{side} database name"));
    let user = r.required(&key("USER"), &format!("{side} database user"));
    let (sslcert, sslkey) = client_certificate(r, prefix, side);
    let with_cert = r.raw(&key("SSLCERT")).is_some();
    let (password, password_file) = password(r, prefix, side, with_cert);
    let v = r.or_default(&key("SSLMODE"));
    let sslmode = match v.parse::<SslMode>() {
        Ok(m) => m,
        Err(()) => {
            r.err(
                &key("SSLMODE"),
                format!("{:?} is not an sslmode ({})", shorten(v), SslMode::ACCEPTED),
            );
            SslMode::VerifyFull
        }
    };
    if sslmode == SslMode::Disable && sslcert.is_some() {
        r.err(
            &key("SSLCERT"),
            format!(
                "set with {} = disable: a client certificate is presented only over TLS (prefer, require, \
                 verify-ca or verify-full)",
                key("SSLMODE")
            ),
        );
    }
    let sslrootcert = r.raw(&key("SSLROOTCERT")).map(PathBuf::from);
    if let Some(path) = &sslrootcert {
        if !path.is_file() {
            r.err(
                &key("SSLROOTCERT"),
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    DbConfig {
        host,
        port,
        dbname,
        user,
        password,
        password_file,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
    }
}

/// `*_SSLCERT` and `*_SSLKEY`: both or neither; the key private enough (libpq's rule); both readable, PEM, and
/// belonging together. An expired certificate is not refused here (the daemon starts, reports it and alerts;
/// replacing the files fixes it without a restart).
fn client_certificate(r: &mut Reader<'_>, prefix: &str, side: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let (cert_key, key_key) = (format!("{prefix}_SSLCERT"), format!("{prefix}_SSLKEY"));
    let cert = r.raw(&cert_key).map(PathBuf::from);
    let key = r.raw(&key_key).map(PathBuf::from);
    match (&cert, &key) {
        (None, None) => return (None, None),
        (Some(_), None) => {
            r.err(
                &key_key,
                format!("not set, but {cert_key} is: the {side} client certificate needs its private key (PEM)"),
            );
            return (None, None);
        }
        (None, Some(_)) => {
            r.err(
                &cert_key,
                format!("not set, but {key_key} is: the {side} client key needs its certificate (PEM)"),
            );
            return (None, None);
        }
        (Some(c), Some(k)) => {
            if let Err(msg) = crate::db::identity::load(c, k) {
                // Name the variable whose file is at fault.
                let culprit = if msg.starts_with("client key") {
                    &key_key
                } else {
                    &cert_key
                };
                r.err(culprit, msg);
                return (None, None);
            }
        }
    }
    (cert, key)
}

/// The password, and the file it came from (read again per connection). With a client certificate
/// (`with_cert`) neither is required: `cert` authentication needs no password.
fn password(r: &mut Reader<'_>, prefix: &str, side: &str, with_cert: bool) -> (Secret, Option<PathBuf>) {
    let key = format!("{prefix}_PASSWORD");
    let file_key = format!("{prefix}_PASSWORD_FILE");
    let direct = r.raw(&key).map(str::to_string);
    let file = r.raw(&file_key).map(str::to_string);
    match (direct, file) {
        (Some(_), Some(_)) => {
            r.err(&file_key, format!("set together with {key}: set only one of them"));
            (Secret::new(""), None)
        }
        (Some(p), None) => (Secret::new(p), None),
        (None, Some(path)) => match read_password_file(Path::new(&path)) {
            Ok(p) => (Secret::new(p), Some(PathBuf::from(path))),
            Err(msg) => {
                r.err(&file_key, msg);
                (Secret::new(""), None)
            }
        },
        (None, None) if with_cert => (Secret::new(""), None),
        (None, None) => {
            r.err(
                &key,
                format!(
                    "not set (the {side} database password; or set {file_key}, or {prefix}_SSLCERT and \
                     {prefix}_SSLKEY for certificate authentication)"
                ),
            );
            (Secret::new(""), None)
        }
    }
}

/// Reads a password file (first line, trailing newline removed). The error never contains the contents.
/// At most 64 KiB are read, so a wrong path such as /dev/zero cannot exhaust memory.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    const LIMIT: u64 = 64 * 1024;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > LIMIT {
        return Err(format!(
            "{} is larger than {LIMIT} bytes: not a password file",
            path.display()
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let first = text.lines().next().unwrap_or("").to_string();
    if first.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(first)
}

/// This machine's host name, the default SYNC_SOURCE_ID: gethostname(2) (the kernel's, which needs no /proc:
/// the unit's ProcSubset=pid hides /proc/sys), else /etc/hostname.
pub fn hostname() -> String {
    kernel_hostname()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

fn kernel_hostname() -> Option<String> {
    extern "C" {
        fn gethostname(name: *mut std::os::raw::c_char, len: usize) -> std::os::raw::c_int;
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for buf.len() bytes; glibc writes at most buf.len() - 1 of them (a longer
    // name fails or is cut), so the last byte stays 0 and the name below always ends.
    let rc = unsafe { gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

pub(super) fn shorten(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}
