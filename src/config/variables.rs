//! The contract's variables: every one the program reads, with its one default and a line about it.
//!
//! Owns: [`VARIABLES`] (the only place a default is written; `sync-process.env` documents the same list and a
//! unit test keeps the two equal), [`default_of`], the order of the contract ([`contract_index`]: errors are
//! reported in it) and the typo guard ([`unknown_variable_warnings`]: a variable with one of our prefixes
//! that we do not know). Does not own: parsing values (read.rs).

use std::collections::BTreeMap;

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
    (
        "POSTGRES_SYNC_SSLCERT",
        None,
        "client certificate (PEM) for TLS client authentication on the local side; unset = none",
    ),
    (
        "POSTGRES_SYNC_SSLKEY",
        None,
        "private key (PEM) of POSTGRES_SYNC_SSLCERT; chmod 600 (or root-owned 0640)",
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
    (
        "POSTGRES_CLIENT_SSLCERT",
        None,
        "client certificate (PEM) for TLS client authentication on the remote side; unset = none",
    ),
    (
        "POSTGRES_CLIENT_SSLKEY",
        None,
        "private key (PEM) of POSTGRES_CLIENT_SSLCERT; chmod 600 (or root-owned 0640)",
    ),
    ("SYNC_INTERVAL_SECONDS", Some("60"), "seconds between sync cycles"),
    ("BATCH_SIZE", Some("100"), "readings per upload batch"),
    (
        "BATCH_SIZE_MAX",
        None,
        "batches grow from BATCH_SIZE up to this while a backlog remains (unset = BATCH_SIZE: off)",
    ),
    ("MAX_CONNECTION_RETRIES", Some("5"), "retries of a failed connection"),
    ("MAX_QUERY_RETRIES", Some("3"), "retries of a failed query"),
    (
        "RETRY_BASE_DELAY_MS",
        Some("2000"),
        "first backoff delay; doubles each retry",
    ),
    (
        "SYNC_JITTER_PERCENT",
        Some("10"),
        "each tick and retry wait is shortened by a random share of up to this",
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
        Some("127.0.0.1:17461"),
        "status HTTP address; empty = off",
    ),
    (
        "STATUS_ALLOWED_HOSTS",
        None,
        "more Host names the status server answers (comma-separated; DNS-rebinding guard)",
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
        "http(s) URL that receives alerts as POSTs (pagerduty: default https://events.pagerduty.com/v2/enqueue)",
    ),
    (
        "ALERT_WEBHOOK_FORMAT",
        Some("json"),
        "json|slack|pagerduty: the webhook body (pagerduty = Events API v2)",
    ),
    (
        "ALERT_WEBHOOK_ROUTING_KEY",
        None,
        "PagerDuty Events API v2 routing (integration) key; required for pagerduty; a secret",
    ),
    ("UPLOAD_MAX_ROWS_PER_SECOND", Some("0"), "upload pacing; 0 = unlimited"),
    (
        "UPLOAD_BATCHES_IN_FLIGHT",
        Some("1"),
        "batches uploading at once, on as many remote connections (1..=8)",
    ),
    (
        "UPLOAD_SOURCE_COLUMN",
        None,
        "a column of the remote meter_readings that receives SYNC_SOURCE_ID (unset or empty = none)",
    ),
    (
        "UPLOAD_CONFIRM_SECONDS",
        Some("0"),
        "keep an acknowledged batch this long, then ask the ledger again before deleting it (0 = delete at once)",
    ),
    (
        "UPLOAD_VALIDATE",
        None,
        "checks before upload (comma list: known-meter, meter-unit, finite-value, timestamp-window); a reading \
         that fails one is quarantined; empty = off",
    ),
    (
        "UPLOAD_TIMESTAMP_WINDOW",
        Some("-365d..+1h"),
        "timestamp-window's window around the local server's clock (units s, m, h, d)",
    ),
    (
        "DOWNLOAD_MAX_DELETE_RATIO",
        Some("0.5"),
        "refuse a download that would delete more than this share",
    ),
    (
        "DOWNLOAD_CONFLICT_POLICY",
        Some("remote-wins"),
        "remote-wins|keep-local: a mirrored row changed locally is overwritten, or kept; reported either way",
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

/// The default of `key` (None: required, optional without default, or not ours).
pub fn default_of(key: &str) -> Option<&'static str> {
    VARIABLES.iter().find(|(k, _, _)| *k == key).and_then(|(_, d, _)| *d)
}

/// The position of `key` in the contract (VARIABLES); unknown keys sort last.
pub fn contract_index(key: &str) -> usize {
    VARIABLES
        .iter()
        .position(|(k, _, _)| *k == key)
        .unwrap_or(VARIABLES.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_warned_with_a_suggestion() {
        let mut m = crate::config::tests::valid_map();
        m.insert("BATCH_SIZ".into(), "5".into());
        m.insert("PATH".into(), "/bin".into());
        let w = unknown_variable_warnings(&m);
        assert_eq!(
            w,
            vec!["unknown variable BATCH_SIZ ignored (did you mean BATCH_SIZE?)".to_string()]
        );
    }
}
