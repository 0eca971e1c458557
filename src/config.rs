//! Configuration: the environment variables of the contract, parsed in two stages.
//!
//! Stage one gathers raw `KEY=VALUE` pairs: [`parse_env_file`] for `--env-file`, [`gather`] to lay the real
//! environment over it (the environment wins). Stage two, [`Config::from_map`], turns a map into a checked,
//! typed [`Config`], reporting *every* bad variable at once with what is accepted. The parser never reads
//! the process environment itself, so tests need no env juggling. Passwords live in [`Secret`], whose
//! `Debug` and `Display` redact them. Does not own: connecting (db.rs) or logging setup (logging.rs).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

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
    pub pool_max: u32,
    pub pool_idle_timeout: Duration,
    pub connection_timeout: Duration,
    pub statement_timeout: Duration,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    pub source_id: String,
    pub status_bind: Option<SocketAddr>,
    pub sync_log_retention_days: u32,
    pub queue_alert_threshold: u64,
    pub alert_after_failures: u32,
    pub alert_webhook_url: Option<String>,
    pub upload_max_rows_per_second: u32,
    /// Batches uploading at once (each on its own remote connection); 1 = one at a time.
    pub upload_batches_in_flight: u32,
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

/// Every variable the program reads, with its default (None: required or optional without default) and a
/// one-line description. sync-process.env documents the same list.
pub const VARIABLES: &[(&str, Option<&str>, &str)] = &[
    (
        "POSTGRES_SYNC_HOST",
        None,
        "local database host (the sync server on this box)",
    ),
    ("POSTGRES_SYNC_PORT", Some("5432"), "local database port"),
    ("POSTGRES_SYNC_DB", None, "local database name"),
    ("POSTGRES_SYNC_USER", None, "local database user"),
    ("POSTGRES_SYNC_PASSWORD", None, "local database password"),
    (
        "POSTGRES_SYNC_PASSWORD_FILE",
        None,
        "file holding the local password instead",
    ),
    ("POSTGRES_SYNC_SSLMODE", Some("prefer"), "local TLS mode"),
    (
        "POSTGRES_SYNC_SSLROOTCERT",
        None,
        "CA file for verify-ca/verify-full on the local side",
    ),
    ("POSTGRES_CLIENT_HOST", None, "remote (central) database host"),
    ("POSTGRES_CLIENT_PORT", Some("5432"), "remote database port"),
    ("POSTGRES_CLIENT_DB", None, "remote database name"),
    ("POSTGRES_CLIENT_USER", None, "remote database user"),
    ("POSTGRES_CLIENT_PASSWORD", None, "remote database password"),
    (
        "POSTGRES_CLIENT_PASSWORD_FILE",
        None,
        "file holding the remote password instead",
    ),
    ("POSTGRES_CLIENT_SSLMODE", Some("prefer"), "remote TLS mode"),
    (
        "POSTGRES_CLIENT_SSLROOTCERT",
        None,
        "CA file for verify-ca/verify-full on the remote side",
    ),
    ("SYNC_INTERVAL_SECONDS", Some("60"), "seconds between sync cycles"),
    ("BATCH_SIZE", Some("100"), "readings per upload batch"),
    ("MAX_CONNECTION_RETRIES", Some("5"), "retries of a failed connection"),
    ("MAX_QUERY_RETRIES", Some("3"), "retries of a failed query"),
    (
        "RETRY_BASE_DELAY_MS",
        Some("2000"),
        "first backoff delay; doubles each retry",
    ),
    ("DB_POOL_MAX", Some("10"), "connections per pool"),
    (
        "DB_POOL_IDLE_TIMEOUT_MS",
        Some("30000"),
        "idle connections close after this",
    ),
    (
        "DB_CONNECTION_TIMEOUT_MS",
        Some("5000"),
        "give up a connection attempt after this",
    ),
    (
        "DB_STATEMENT_TIMEOUT_MS",
        Some("60000"),
        "server-side statement_timeout of every session",
    ),
    ("LOG_LEVEL", Some("info"), "error|warn|info|debug|trace"),
    (
        "LOG_FILE",
        Some("logs/sync-process.log"),
        "log file, rotated daily or at 100 MB; empty = stderr only",
    ),
    (
        "SYNC_SOURCE_ID",
        None,
        "names this site in the remote upload ledger (default: hostname)",
    ),
    (
        "STATUS_BIND",
        Some("127.0.0.1:9187"),
        "status HTTP address; empty = off",
    ),
    (
        "SYNC_LOG_RETENTION_DAYS",
        Some("90"),
        "sync_logs rows older than this are pruned",
    ),
    (
        "QUEUE_ALERT_THRESHOLD",
        Some("10000"),
        "alert when the local queue is longer",
    ),
    (
        "ALERT_AFTER_FAILURES",
        Some("3"),
        "alert after this many failed cycles in a row",
    ),
    (
        "ALERT_WEBHOOK_URL",
        None,
        "http(s) URL that receives alerts as JSON POSTs",
    ),
    ("UPLOAD_MAX_ROWS_PER_SECOND", Some("0"), "upload pacing; 0 = unlimited"),
    (
        "UPLOAD_BATCHES_IN_FLIGHT",
        Some("1"),
        "batches uploading at once, on as many remote connections (1..=8)",
    ),
    (
        "DOWNLOAD_MAX_DELETE_RATIO",
        Some("0.5"),
        "refuse a download that would delete more than this share",
    ),
    ("MIGRATE_ON_START", Some("false"), "run migrations when `run` starts"),
];

/// Prefixes that mark a variable as ours; an unknown one with such a prefix is probably a typo.
const OUR_PREFIXES: &[&str] = &[
    "POSTGRES_SYNC_",
    "POSTGRES_CLIENT_",
    "SYNC_",
    "BATCH_",
    "MAX_",
    "RETRY_",
    "DB_",
    "LOG_",
    "STATUS_",
    "QUEUE_",
    "ALERT_",
    "UPLOAD_",
    "DOWNLOAD_",
    "MIGRATE_",
];

/// Parses an env file: `KEY=VALUE` lines, blank lines and `#` comments, an optional `export ` prefix,
/// values optionally in single or double quotes. Returns every bad line at once (`line N: ...`).
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut map = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("line {n}: expected KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if !is_valid_key(key) {
            errors.push(format!(
                "line {n}: {:?} is not a variable name (letters, digits, _)",
                shorten(key)
            ));
            continue;
        }
        match unquote(value.trim()) {
            Some(v) => {
                map.insert(key.to_string(), v);
            }
            None => errors.push(format!("line {n}: {key}: unterminated quote")),
        }
    }
    if errors.is_empty() {
        Ok(map)
    } else {
        Err(errors)
    }
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(v: &str) -> Option<String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            let inner = rest.strip_suffix(q)?;
            if q == '"' {
                // Double quotes allow \" and \\ escapes, as in shells and systemd.
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some(n) => out.push(n),
                            None => out.push('\\'),
                        }
                    } else {
                        out.push(c);
                    }
                }
                return Some(out);
            }
            return Some(inner.to_string());
        }
    }
    Some(v.to_string())
}

/// Lays `env` (the real environment) over `file` (from `--env-file`): a variable set in the environment wins.
pub fn gather(
    file: BTreeMap<String, String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut map = file;
    map.extend(env);
    map
}

/// Stage one for the program: the env file (if any) with the real environment laid over it, and warnings
/// about the file itself (readable by every user). The error names the file and every bad line.
pub fn load_variables(env_file: Option<&Path>) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    let file_map = match env_file {
        None => BTreeMap::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--env-file {}: cannot read: {e}", path.display()))?;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o004 != 0 {
                    warnings.push(format!(
                        "{} is readable by every user of this machine and may hold passwords: chmod o-r it",
                        path.display()
                    ));
                }
            }
            parse_env_file(&text).map_err(|errs| {
                format!(
                    "--env-file {}: {} bad line(s):\n  {}",
                    path.display(),
                    errs.len(),
                    errs.join("\n  ")
                )
            })?
        }
    };
    Ok((gather(file_map, process_env()), warnings))
}

/// The process environment as a map, for [`gather`]. Variables that are not valid UTF-8 are kept with a
/// lossy value so that validation names them rather than silently ignoring them.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect()
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Collects errors while reading typed values out of the map.
struct Reader<'a> {
    map: &'a BTreeMap<String, String>,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    fn err(&mut self, key: &str, message: String) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            message,
        });
    }

    fn default_of(key: &str) -> Option<&'static str> {
        VARIABLES.iter().find(|(k, _, _)| *k == key).and_then(|(_, d, _)| *d)
    }

    /// The raw value, or the default. A variable set to the empty string counts as unset.
    fn raw(&self, key: &str) -> Option<&'a str> {
        match self.map.get(key).map(|s| s.trim()) {
            Some(v) if !v.is_empty() => Some(v),
            _ => Self::default_of(key),
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
        let v = self.raw(key).unwrap_or("");
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

    fn millis(&mut self, key: &str) -> Duration {
        Duration::from_millis(self.int::<u64>(key, 1, 86_400_000))
    }
}

impl Config {
    /// Checks a map of variables. Returns the config, or every problem at once.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut r = Reader {
            map,
            errors: Vec::new(),
        };
        let local = read_db(&mut r, "POSTGRES_SYNC", "local");
        let remote = read_db(&mut r, "POSTGRES_CLIENT", "remote");
        let sync_interval = Duration::from_secs(r.int::<u64>("SYNC_INTERVAL_SECONDS", 1, 86_400));
        let batch_size = r.int::<u32>("BATCH_SIZE", 1, 100_000);
        let max_connection_retries = r.int::<u32>("MAX_CONNECTION_RETRIES", 0, 20);
        let max_query_retries = r.int::<u32>("MAX_QUERY_RETRIES", 0, 20);
        let retry_base_delay = Duration::from_millis(r.int::<u64>("RETRY_BASE_DELAY_MS", 1, 600_000));
        let pool_max = r.int::<u32>("DB_POOL_MAX", 1, 100);
        let pool_idle_timeout = r.millis("DB_POOL_IDLE_TIMEOUT_MS");
        let connection_timeout = r.millis("DB_CONNECTION_TIMEOUT_MS");
        let statement_timeout = r.millis("DB_STATEMENT_TIMEOUT_MS");

        let log_level = match r.raw("LOG_LEVEL").unwrap_or("info").to_ascii_lowercase().as_str() {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => {
                let msg = format!("{:?} is not a log level (error|warn|info|debug|trace)", shorten(other));
                r.err("LOG_LEVEL", msg);
                log::LevelFilter::Info
            }
        };
        // LOG_FILE and STATUS_BIND: set to empty means off, so they do not fall back to their default.
        let log_file = match map.get("LOG_FILE") {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(PathBuf::from(v.trim())),
            None => Reader::default_of("LOG_FILE").map(PathBuf::from),
        };
        let status_bind = match map.get("STATUS_BIND").map(|s| s.trim()) {
            Some("") => None,
            other => {
                let v = other.or(Reader::default_of("STATUS_BIND")).unwrap_or("");
                match v.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        let msg = format!(
                            "{:?} is not an address (IP:PORT, e.g. 127.0.0.1:9187; empty = off)",
                            shorten(v)
                        );
                        r.err("STATUS_BIND", msg);
                        None
                    }
                }
            }
        };
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
        let upload_max_rows_per_second = r.int::<u32>("UPLOAD_MAX_ROWS_PER_SECOND", 0, 100_000_000);
        let upload_batches_in_flight = r.int::<u32>("UPLOAD_BATCHES_IN_FLIGHT", 1, 8);
        let both_valid = !r
            .errors
            .iter()
            .any(|e| e.key == "DB_POOL_MAX" || e.key == "UPLOAD_BATCHES_IN_FLIGHT");
        if both_valid && upload_batches_in_flight >= pool_max {
            r.err(
                "UPLOAD_BATCHES_IN_FLIGHT",
                format!(
                    "{upload_batches_in_flight} needs DB_POOL_MAX of at least {} (one remote connection per batch in \
                     flight, plus one), DB_POOL_MAX is {pool_max}",
                    upload_batches_in_flight + 1
                ),
            );
        }
        let download_max_delete_ratio = {
            let v = r.raw("DOWNLOAD_MAX_DELETE_RATIO").unwrap_or("0.5");
            match v.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => x,
                _ => {
                    r.err(
                        "DOWNLOAD_MAX_DELETE_RATIO",
                        format!("{:?} is not a number in 0..=1", shorten(v)),
                    );
                    0.5
                }
            }
        };
        let migrate_on_start = match r
            .raw("MIGRATE_ON_START")
            .unwrap_or("false")
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            other => {
                r.err(
                    "MIGRATE_ON_START",
                    format!("{:?} is not a boolean (true|false)", shorten(other)),
                );
                false
            }
        };

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        Ok(Config {
            local,
            remote,
            sync_interval,
            batch_size,
            max_connection_retries,
            max_query_retries,
            retry_base_delay,
            pool_max,
            pool_idle_timeout,
            connection_timeout,
            statement_timeout,
            log_level,
            log_file,
            source_id,
            status_bind,
            sync_log_retention_days,
            queue_alert_threshold,
            alert_after_failures,
            alert_webhook_url,
            upload_max_rows_per_second,
            upload_batches_in_flight,
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
            "sync: interval={}s batch_size={} batches_in_flight={} source_id={} max_rows_per_second={}\n",
            self.sync_interval.as_secs(),
            self.batch_size,
            self.upload_batches_in_flight,
            self.source_id,
            if self.upload_max_rows_per_second == 0 {
                "unlimited".to_string()
            } else {
                self.upload_max_rows_per_second.to_string()
            }
        ));
        s.push_str(&format!(
            "retries: connection={} query={} base_delay={}ms\n",
            self.max_connection_retries,
            self.max_query_retries,
            self.retry_base_delay.as_millis()
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
            "status: {}\n",
            self.status_bind
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(off)".into())
        ));
        s.push_str(&format!(
            "alerts: after_failures={} queue_threshold={} webhook={}\n",
            self.alert_after_failures,
            self.queue_alert_threshold,
            if self.alert_webhook_url.is_some() {
                "set"
            } else {
                "(none)"
            }
        ));
        s.push_str(&format!(
            "download: max_delete_ratio={} | sync_logs retention: {} days | migrate_on_start={}",
            self.download_max_delete_ratio, self.sync_log_retention_days, self.migrate_on_start
        ));
        s
    }
}

fn read_db(r: &mut Reader<'_>, prefix: &str, side: &str) -> DbConfig {
    let key = |suffix: &str| format!("{prefix}_{suffix}");
    let host = r.required(&key("HOST"), &format!("{side} database host"));
    let port = r.int::<u16>(&key("PORT"), 1, 65535);
    let dbname = r.required(&key("DB"), &format!("{side} database name"));
    let user = r.required(&key("USER"), &format!("{side} database user"));
    let password = read_password(r, prefix, side);
    let sslmode = match r.raw(&key("SSLMODE")).unwrap_or("prefer").parse::<SslMode>() {
        Ok(m) => m,
        Err(()) => {
            let v = r.raw(&key("SSLMODE")).unwrap_or("").to_string();
            r.err(
                &key("SSLMODE"),
                format!("{:?} is not an sslmode ({})", shorten(&v), SslMode::ACCEPTED),
            );
            SslMode::Prefer
        }
    };
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
        sslmode,
        sslrootcert,
    }
}

fn read_password(r: &mut Reader<'_>, prefix: &str, side: &str) -> Secret {
    let key = format!("{prefix}_PASSWORD");
    let file_key = format!("{prefix}_PASSWORD_FILE");
    let direct = r.raw(&key).map(str::to_string);
    let file = r.raw(&file_key).map(str::to_string);
    match (direct, file) {
        (Some(_), Some(_)) => {
            r.err(&file_key, format!("set together with {key}: set only one of them"));
            Secret::new("")
        }
        (Some(p), None) => Secret::new(p),
        (None, Some(path)) => match read_password_file(Path::new(&path)) {
            Ok(p) => Secret::new(p),
            Err(msg) => {
                r.err(&file_key, msg);
                Secret::new("")
            }
        },
        (None, None) => {
            r.err(
                &key,
                format!("not set (the {side} database password; or set {file_key})"),
            );
            Secret::new("")
        }
    }
}

/// Reads a password file (first line, trailing newline removed). The error never contains the contents.
/// At most 64 KiB are read, so a wrong path such as /dev/zero cannot exhaust memory.
fn read_password_file(path: &Path) -> Result<String, String> {
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

/// Variables that look like ours but that we do not know: probably typos. Each warning names the closest
/// known variable when one is near.
pub fn unknown_variable_warnings(map: &BTreeMap<String, String>) -> Vec<String> {
    map.keys()
        .filter(|k| OUR_PREFIXES.iter().any(|p| k.starts_with(p)))
        .filter(|k| !VARIABLES.iter().any(|(v, _, _)| v == k))
        .map(|k| {
            let nearest = VARIABLES
                .iter()
                .map(|(v, _, _)| (edit_distance(k, v), *v))
                .min()
                .filter(|(d, _)| *d <= 3);
            match nearest {
                Some((_, v)) => format!("unknown variable {k} ignored (did you mean {v}?)"),
                None => format!("unknown variable {k} ignored"),
            }
        })
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// This machine's host name, the default SYNC_SOURCE_ID.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
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
        assert_eq!(c.status_bind, Some("127.0.0.1:9187".parse().expect("addr")));
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
    fn env_file_syntax() {
        let text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='single'\nE=\"a\\\"b\"\n";
        let m = parse_env_file(text).expect("valid file");
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "quoted # not a comment");
        assert_eq!(m["D"], "single");
        assert_eq!(m["E"], "a\"b");
        let errs = parse_env_file("GOOD=1\nno equals\n1BAD=2\nQ=\"open\n").expect_err("bad lines");
        assert_eq!(errs.len(), 3);
        assert!(errs[0].starts_with("line 2:"));
        assert!(errs[1].starts_with("line 3:"));
        assert!(errs[2].starts_with("line 4:"));
    }

    #[test]
    fn example_env_file_documents_every_variable_with_its_default() {
        let text = include_str!("../sync-process.env");
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

    #[test]
    fn environment_wins_over_file() {
        let file = parse_env_file("BATCH_SIZE=10\nLOG_LEVEL=debug").expect("valid");
        let m = gather(file, vec![("BATCH_SIZE".to_string(), "20".to_string())]);
        assert_eq!(m["BATCH_SIZE"], "20");
        assert_eq!(m["LOG_LEVEL"], "debug");
    }

    #[test]
    fn typos_are_warned_with_a_suggestion() {
        let mut m = valid_map();
        m.insert("BATCH_SIZ".into(), "5".into());
        m.insert("PATH".into(), "/bin".into());
        let w = unknown_variable_warnings(&m);
        assert_eq!(
            w,
            vec!["unknown variable BATCH_SIZ ignored (did you mean BATCH_SIZE?)".to_string()]
        );
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

    fn prop_env_file_parser_never_panics(bytes: Vec<u8>) -> bool {
        let text = String::from_utf8_lossy(&bytes);
        match parse_env_file(&text) {
            Ok(map) => map.keys().all(|k| is_valid_key(k)),
            Err(errs) => !errs.is_empty(),
        }
    }

    #[test]
    fn env_file_parser_property() {
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop_env_file_parser_never_panics as fn(Vec<u8>) -> bool);
    }
}
