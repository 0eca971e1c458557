//! Sync Scheduler: the daemon's main loop and the sync cycle.
//!
//! Owns: the main loop ([`run_daemon`]: `enum Event { Tick, Shutdown }`, a crossbeam tick every
//! SYNC_INTERVAL_SECONDS selected together with the shutdown channel; the next cycle starts at once while the
//! upload reports a backlog), one cycle ([`run_once`], [`Service::cycle`]: upload, meters, tenants, each
//! isolated from the others' failures and panics), the cycle's mutual exclusion (in the process:
//! [`CycleGuard`], the only way to run the parts; across processes on one local database: a PostgreSQL session
//! advisory lock on a dedicated connection), the `sync_logs` rows and their daily pruning, MIGRATE_ON_START,
//! and the status snapshot and alert observations after each cycle. Does not own: what a part does
//! (upload.rs, download.rs), the cycle's report and log lines (report.rs), the signal thread (signals.rs),
//! systemd notifications and memory release (systemd.rs), the HTTP server (status/), alert conditions
//! (alerts.rs).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver};

mod measure;

use crate::alerts::{Alerts, Observation};
use crate::config::Config;
use crate::db::{AdvisoryLock, ConnectionManager, Database, LockKey};
use crate::download::{DownloadSyncManager, MeterSyncResult, TenantSyncResult};
use crate::error::{Error, Result, Side};
use crate::migrate;
use crate::report::{
    cycle_result_lines, cycle_start_line, duration_ms, first_error, not_run, part_summaries, SyncCycleResult,
};
use crate::shutdown::Shutdown;
use crate::signals::SignalThread;
use crate::status::{self, CycleEntry, History, SharedHistory, SharedSnapshot, Snapshot, StatusListener, StatusServer};
use crate::systemd::{release_free_memory, sd_notify, systemd_status, watchdog_period};
use crate::upload::validate::Check;
use crate::upload::{UploadSyncManager, UploadSyncResult};
use measure::{measure, Measurement};

/// What wakes the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time for a cycle (the interval passed, or the upload left a backlog).
    Tick,
    /// SIGTERM/SIGINT: finish nothing new, leave the loop.
    Shutdown,
    /// SIGHUP: close the idle connections (the next ones read the password and certificate files again).
    Reload,
}

/// The upload drain budget of `once` (drain the whole queue): a century, which still fits an `Instant`.
pub const UNLIMITED_BUDGET: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Key of the cross-process cycle lock ([`LockKey::Cycle`]).
pub const CYCLE_LOCK_KEY: (i32, i32) = LockKey::Cycle.pair();
/// The error of a part not run because a stop was requested.
const STOPPING: &str = "not run: shutting down";
/// sync_logs pruning period.
const SYNC_LOGS_PRUNE_EVERY: Duration = Duration::from_secs(86_400);
/// Longest error text stored in sync_logs.
const MAX_LOGGED_ERROR: usize = 2000;

// ---------------------------------------------------------------------------------------------------------
// Mutual exclusion in the process.

/// The process's one cycle slot. [`CycleSlot::try_enter`] hands out at most one [`CycleGuard`] at a time, and
/// the parts of a cycle can only be run with a guard in hand, so two cycles cannot overlap in this process
/// whatever the calling code does.
#[derive(Debug, Default)]
pub struct CycleSlot {
    busy: AtomicBool,
}

/// Proof that the holder runs the only cycle of the process; frees the slot on drop (also on panic).
#[derive(Debug)]
pub struct CycleGuard {
    slot: Arc<CycleSlot>,
}

impl CycleSlot {
    pub fn new() -> Arc<CycleSlot> {
        Arc::new(CycleSlot::default())
    }

    /// The guard, or None while another guard is alive.
    pub fn try_enter(self: &Arc<Self>) -> Option<CycleGuard> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| CycleGuard { slot: self.clone() })
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

impl Drop for CycleGuard {
    fn drop(&mut self) {
        self.slot.busy.store(false, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Mutual exclusion across processes.

/// The cross-process cycle lock: a session advisory lock ([`LockKey::Cycle`]) held by a dedicated local
/// connection for the cycle, released on drop. A failed release is harmless: the dedicated pool holds one
/// connection, and acquiring first drops every advisory lock that session still holds.
type CycleLock = AdvisoryLock;

enum LockAttempt {
    Held(Box<CycleLock>),
    /// Another process holds it (`Error::Busy`).
    Busy(Error),
    Failed(Error),
}

fn acquire_cycle_lock(lock_db: &Database, conns: &ConnectionManager) -> LockAttempt {
    let what = format!(
        "connecting to the local database {} for the cycle lock",
        lock_db.target()
    );
    let conn = crate::retry::retry(&what, conns.connection_retry, &conns.shutdown, || lock_db.try_get());
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return LockAttempt::Failed(e),
    };
    if let Err(e) = conn.simple_query("SELECT pg_advisory_unlock_all()") {
        return LockAttempt::Failed(lock_db.err("taking the cycle lock", e));
    }
    match AdvisoryLock::try_acquire(conn, LockKey::Cycle, lock_db.name()) {
        Ok(lock) => LockAttempt::Held(Box::new(lock)),
        Err(e @ Error::Busy { .. }) => LockAttempt::Busy(e),
        Err(e) => LockAttempt::Failed(e),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Runs `f`, turning a panic into an error message (logged at error level).
fn run_isolated<T>(part: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        log::error!("{part} panicked: {msg}; it counts as failed and the cycle goes on");
        format!("panic in {part}: {msg}")
    })
}

// ---------------------------------------------------------------------------------------------------------
// The service: one per process, runs cycles.

/// What [`Service::cycle`] did.
// One value per cycle, moved once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CycleOutcome {
    Ran {
        result: SyncCycleResult,
        backlog_remains: bool,
    },
    /// Another cycle holds the lock (in this process or another one on the same local database).
    Skipped(String),
}

/// Both databases, the cycle locks, the status snapshot and the alerts of one process.
pub struct Service {
    cfg: Config,
    conns: ConnectionManager,
    /// One-connection pool on the local database, only for the cycle lock.
    lock_db: Database,
    slot: Arc<CycleSlot>,
    snapshot: SharedSnapshot,
    /// The recent cycles (GET /history).
    history: SharedHistory,
    /// None for `once`: no measuring, no alerts.
    alerts: Option<Alerts>,
    unmigrated: Vec<Side>,
    last_prune: Option<Instant>,
    cycles: u64,
}

impl Service {
    /// Builds the pools (without connecting). `daemon`: measure and alert after each cycle.
    pub fn new(cfg: &Config, shutdown: Shutdown, daemon: bool) -> Result<Service> {
        let conns = ConnectionManager::new(cfg, shutdown)?;
        let lock_cfg = Config {
            pool_max: 1,
            ..cfg.clone()
        };
        let lock_db = Database::new(Side::Local, &cfg.local, &lock_cfg)?;
        let snapshot = Snapshot {
            started_unix: status::unix_now(),
            interval_secs: cfg.sync_interval.as_secs(),
            source_id: cfg.source_id.clone(),
            ..Default::default()
        };
        let service = Service {
            conns,
            lock_db,
            slot: CycleSlot::new(),
            snapshot: Arc::new(std::sync::Mutex::new(snapshot)),
            history: History::shared(),
            alerts: daemon.then(|| Alerts::new(cfg)),
            unmigrated: if cfg.migrate_on_start {
                vec![Side::Local, Side::Remote]
            } else {
                Vec::new()
            },
            last_prune: None,
            cycles: 0,
            cfg: cfg.clone(),
        };
        service.show_certificates();
        Ok(service)
    }

    /// The client certificates of both databases (as last read from their files), into the status.
    fn show_certificates(&self) {
        let certs: Vec<status::CertificateStatus> = [&self.conns.local, &self.conns.remote]
            .into_iter()
            .filter_map(|db| {
                db.client_certificate().map(|c| status::CertificateStatus {
                    database: db.side().to_string(),
                    file: c.file.display().to_string(),
                    subject: c.subject_cn,
                    not_after: crate::db::unix_rfc3339(c.not_after_unix),
                    not_after_unix: c.not_after_unix,
                })
            })
            .collect();
        status::lock(&self.snapshot).status.client_certificates = certs;
    }

    /// For the certificate alert: (the database as errors name it, the file, notAfter) of each certificate.
    fn certificate_expiries(conns: &ConnectionManager) -> Vec<(String, String, i64)> {
        [&conns.local, &conns.remote]
            .into_iter()
            .filter_map(|db| {
                db.client_certificate()
                    .map(|c| (db.name().to_string(), c.file.display().to_string(), c.not_after_unix))
            })
            .collect()
    }

    pub fn snapshot(&self) -> SharedSnapshot {
        self.snapshot.clone()
    }

    pub fn history(&self) -> SharedHistory {
        self.history.clone()
    }

    /// SIGHUP: closes every idle connection of the loop's pools, so that the next connection reads the
    /// password file and the TLS files again (they are also read whenever a new connection is made), and shows
    /// the client certificates as they are on disk now.
    pub fn reload(&mut self) {
        let closed = self.conns.local.close_idle() + self.conns.remote.close_idle() + self.lock_db.close_idle();
        for db in [&self.conns.local, &self.conns.remote] {
            db.refresh_tls();
        }
        self.show_certificates();
        log::info!("reload: closed {closed} idle connection(s); the next connections use the current files");
    }

    pub fn set_running(&self, running: bool) {
        status::lock(&self.snapshot).status.is_running = running;
    }

    /// One cycle, unless another one holds the slot or the cross-process lock.
    pub fn cycle(&mut self, budget: Duration) -> CycleOutcome {
        let Some(guard) = self.slot.try_enter() else {
            return CycleOutcome::Skipped("a cycle is already running in this process".into());
        };
        let started = Instant::now();
        let timestamp = now_rfc3339();
        // A database found down in the last cycle gets its full backoff again in this one.
        self.conns.begin_cycle();
        let lock = match acquire_cycle_lock(&self.lock_db, &self.conns) {
            LockAttempt::Held(lock) => lock,
            LockAttempt::Busy(busy) => {
                let why = busy.to_string();
                log::info!("{why}");
                return CycleOutcome::Skipped(why);
            }
            // A stop requested while the local database is down is not a failed cycle.
            LockAttempt::Failed(Error::Shutdown) => {
                log::info!("sync cycle not run: shutting down");
                return CycleOutcome::Skipped("not run: a signal asked this process to stop".into());
            }
            LockAttempt::Failed(e) => {
                self.cycles += 1;
                let why = format!("the cycle lock could not be taken: {e}");
                log::error!("sync cycle {} not run ({} error): {why}", self.cycles, e.kind());
                let result = not_run(&why, timestamp, started.elapsed());
                self.after_cycle(&result, started.elapsed(), false);
                return CycleOutcome::Ran {
                    result,
                    backlog_remains: false,
                };
            }
        };
        self.cycles += 1;
        status::lock(&self.snapshot).status.cycle_in_progress = true;
        self.migrate_pending();
        let (result, backlog_remains) = self.run_parts(&guard, budget, timestamp, started);
        self.write_sync_logs(&result);
        self.prune_if_due();
        drop(lock);
        self.after_cycle(&result, started.elapsed(), true);
        if !backlog_remains {
            // Nothing held on the central between cycles (a fleet's thousands of idle sessions would count
            // against its max_connections or its pooler's pool); the local pools stay warm.
            let closed = self.conns.remote.close_idle();
            log::trace!("closed {closed} idle remote connection(s) until the next cycle");
        }
        drop(guard);
        CycleOutcome::Ran {
            result,
            backlog_remains,
        }
    }

    /// The parts, in order, each isolated; only callable with the cycle guard.
    fn run_parts(
        &self,
        _guard: &CycleGuard,
        budget: Duration,
        timestamp: String,
        started: Instant,
    ) -> (SyncCycleResult, bool) {
        let n = self.cycles;
        let upload = UploadSyncManager::new(&self.conns, &self.cfg);
        let queue = run_isolated("counting the queue", || upload.queue_size())
            .and_then(|r| r.map(|q| u64::try_from(q).unwrap_or(0)).map_err(|e| e.to_string()));
        log::info!("{}", cycle_start_line(n, &queue));

        let failed_upload = |error: String| UploadSyncResult {
            error: Some(error),
            ..Default::default()
        };
        let upload_result = run_isolated("the upload", || upload.sync_readings(budget)).unwrap_or_else(failed_upload);
        let download = DownloadSyncManager::new(&self.conns, &self.cfg);
        // After a stop request no part starts (the batch in flight was the upload's to finish).
        let stopping = || self.conns.shutdown.is_requested().then(|| STOPPING.to_string());
        let meter_result = match stopping() {
            Some(error) => Err(error),
            None => run_isolated("the meter download", || download.sync_meter_configurations()),
        }
        .unwrap_or_else(|error| MeterSyncResult {
            error: Some(error),
            ..Default::default()
        });
        // After every successful meter download, not only one that brought new meters: a re-queue that failed
        // once is tried again, and a meter another program added locally counts too.
        if meter_result.success && self.cfg.upload_validate.contains(&Check::KnownMeter) {
            match run_isolated("re-queueing known-meter readings", || {
                crate::quarantine::requeue_known_meters(&self.conns.local)
            }) {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => log::info!(
                    "{n} quarantined reading(s) held by the known-meter check went back into the queue: their \
                     meters arrived with this download"
                ),
                Ok(Err(e)) => log::warn!("{e}"),
                Err(e) => log::warn!("{e}"),
            }
        }
        let tenant_result = match stopping() {
            Some(error) => Err(error),
            None => run_isolated("the tenant download", || download.sync_tenant_data()),
        }
        .unwrap_or_else(|error| TenantSyncResult {
            error: Some(error),
            ..Default::default()
        });

        let backlog = upload_result.backlog_remains;
        let result = SyncCycleResult {
            success: upload_result.success && meter_result.success && tenant_result.success,
            upload_result,
            meter_download_result: meter_result,
            tenant_download_result: tenant_result,
            total_duration: duration_ms(started.elapsed()),
            timestamp,
        };
        // A stop requested during the cycle is no failure to alarm about: what it cut short is reported at
        // info (a part's own error line, logged by the part, keeps its level).
        let stopping = self.conns.shutdown.is_requested();
        for (level, line) in cycle_result_lines(n, &result) {
            let level = if stopping { level.max(log::Level::Info) } else { level };
            log::log!(level, "{line}");
        }
        (result, backlog)
    }

    /// MIGRATE_ON_START: the sides not migrated yet (each failure is retried at the next cycle).
    fn migrate_pending(&mut self) {
        let conns = &self.conns;
        self.unmigrated.retain(|side| match migrate::migrate(conns.db(*side), false) {
            Ok(done) => {
                if done.is_empty() {
                    log::info!("MIGRATE_ON_START: {side} database {} is up to date", conns.db(*side).target());
                } else {
                    log::info!("MIGRATE_ON_START: {side} database {}: applied {}", conns.db(*side).target(), done.join(", "));
                }
                false
            }
            Err(e) => {
                log::warn!("MIGRATE_ON_START: migrating the {side} database failed ({} error): {e}; trying again next cycle", e.kind());
                true
            }
        });
    }

    /// A sync_logs row per part, in one statement on one attempt; a failure is only a warning.
    fn write_sync_logs(&self, r: &SyncCycleResult) {
        let rows = part_summaries(r);
        let params: Vec<(String, bool, i32, Option<String>, i32)> = rows
            .iter()
            .map(|p| {
                (
                    p.sync_type.to_string(),
                    p.success,
                    i32::try_from(p.records).unwrap_or(i32::MAX),
                    p.error.as_ref().map(|e| e.chars().take(MAX_LOGGED_ERROR).collect()),
                    i32::try_from(p.duration_ms).unwrap_or(i32::MAX),
                )
            })
            .collect();
        type Param<'a> = &'a (dyn postgres::types::ToSql + Sync);
        let mut refs: Vec<Param<'_>> = Vec::new();
        for (t, s, n, e, d) in &params {
            refs.extend::<[Param<'_>; 5]>([t, s, n, e, d]);
        }
        let written = self.conns.local.try_get().and_then(|mut conn| {
            conn.execute(
                "INSERT INTO sync_logs (sync_type, success, records_processed, error_message, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10), ($11, $12, $13, $14, $15)",
                &refs,
            )
            .map_err(|e| self.conns.local.err("writing sync_logs", e))
        });
        if let Err(e) = written {
            log::warn!(
                "sync_logs: this cycle's rows were not written ({} error): {e}",
                e.kind()
            );
        }
    }

    /// Deletes sync_logs rows older than SYNC_LOG_RETENTION_DAYS: at the first cycle, then every 24 h.
    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < SYNC_LOGS_PRUNE_EVERY) {
            return;
        }
        let days = i32::try_from(self.cfg.sync_log_retention_days).unwrap_or(i32::MAX);
        let pruned = self.conns.local.try_get().and_then(|mut conn| {
            conn.execute(
                "DELETE FROM sync_logs WHERE timestamp < LOCALTIMESTAMP - make_interval(days => $1)",
                &[&days],
            )
            .map_err(|e| self.conns.local.err("pruning sync_logs", e))
        });
        match pruned {
            Ok(n) => {
                log::info!("sync_logs: pruned {n} rows older than {days} days");
                self.last_prune = Some(Instant::now());
            }
            Err(e) => log::warn!(
                "sync_logs: pruning failed ({} error): {e}; trying again next cycle",
                e.kind()
            ),
        }
    }

    /// Measures, updates the status snapshot and feeds the alerts (daemon only). `ran`: the parts ran (their
    /// durations are observed), rather than the cycle failing before them.
    fn after_cycle(&mut self, result: &SyncCycleResult, took: Duration, ran: bool) {
        let Some(alerts) = self.alerts.as_mut() else {
            return;
        };
        let (conns, cfg) = (&self.conns, &self.cfg);
        let mut transitions = Vec::new();
        let m = if conns.shutdown.is_requested() {
            // Exiting: no measuring (a down database would delay the exit) and no alerts; the counters below
            // still count the cycle, and the last measured values stay.
            let st = &status::lock(&self.snapshot).status;
            Measurement {
                local_up: st.local_db_connected,
                remote_up: st.remote_db_connected,
                ..Default::default()
            }
        } else {
            let m = run_isolated("measuring the status", || measure(conns, cfg)).unwrap_or_default();
            // Files replaced since the last connection show (and alert) now, not at the next connection.
            conns.local.refresh_tls();
            conns.remote.refresh_tls();
            let now = i64::try_from(status::unix_now()).unwrap_or(i64::MAX);
            let certificate_expiring = Some(crate::alerts::certificates_expiring(
                &Service::certificate_expiries(conns),
                now,
            ));
            transitions = alerts.observe(&Observation {
                certificate_expiring,
                cycle_success: result.success,
                last_error: first_error(result),
                local_up: m.local_up,
                remote_up: m.remote_up,
                queue_size: m.queue_size,
                central_fault: if result.upload_result.success {
                    Some(None)
                } else {
                    result.upload_result.central_fault.clone().map(Some)
                },
            });
            m
        };
        let failures = alerts.consecutive_failures();
        let mut snap = status::lock(&self.snapshot);
        snap.cycles_total += 1;
        if !result.success {
            snap.cycle_failures_total += 1;
        } else {
            snap.last_success_unix = Some(status::unix_now());
        }
        snap.records_quarantined_total += result.upload_result.records_quarantined;
        snap.batches_resent_total = crate::upload::resent_batches();
        snap.download_conflicts_total[0] += result.meter_download_result.conflict_meter_ids.len() as u64;
        snap.download_conflicts_total[1] += result.tenant_download_result.conflict_tenant_ids.len() as u64;
        snap.upload_batches_total = crate::upload::uploaded_batches();
        snap.upload_chain_breaks_total = crate::upload::chain_breaks();
        snap.readings_invalid_total = crate::upload::validate::invalid_readings().map(|(_, n)| n);
        snap.last_cycle_duration_ms = Some(duration_ms(took));
        for (stats, part) in snap.parts.iter_mut().zip(part_summaries(result)) {
            stats.failures_total += u64::from(!part.success);
            if ran {
                stats.observe_run(part.duration_ms);
            }
        }
        let st = &mut snap.status;
        st.cycle_in_progress = false;
        st.last_sync_time = Some(result.timestamp.clone());
        st.last_sync_success = result.success;
        st.last_sync_error = first_error(result);
        st.total_records_synced += result.upload_result.records_uploaded;
        st.consecutive_failures = failures;
        st.local_db_connected = m.local_up;
        st.remote_db_connected = m.remote_up;
        let keep = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        for t in transitions {
            st.active_alerts.retain(|a| a != t.name.as_str());
            if t.state == crate::alerts::AlertState::Raised {
                st.active_alerts.push(t.name.as_str().to_string());
            }
        }
        st.active_alerts.sort();
        keep(&mut st.queue_size, m.queue_size);
        keep(&mut st.quarantined_count, m.quarantined);
        keep(&mut st.local_meter_count, m.local_meters);
        keep(&mut st.remote_meter_count, m.remote_meters);
        keep(&mut st.local_tenant_count, m.local_tenants);
        keep(&mut st.remote_tenant_count, m.remote_tenants);
        if let Some(w) = m.warnings {
            st.warnings = w;
        }
        if let Some(age) = m.oldest_pending_age {
            st.oldest_pending_age = age.map(|d| d.as_secs());
        }
        if let Some((n, age)) = m.awaiting {
            st.awaiting_confirmation = n;
            st.oldest_awaiting_confirmation_age = age;
        }
        st.last_cycle_result = Some(result.clone());
        let queue_after = st.queue_size;
        if m.queue_size.is_some() {
            snap.queue_measured_at = Some(Instant::now());
        }
        drop(snap);
        status::lock_history(&self.history).push(CycleEntry {
            started_unix_ms: status::unix_ms_of(&result.timestamp),
            records_uploaded: result.upload_result.records_uploaded,
            queue_size: queue_after,
            duration_ms: duration_ms(took),
            success: result.success,
        });
        self.show_certificates();
    }
}

/// Blocks until the next event: shutdown first, then a pending immediate cycle, then whichever of the
/// shutdown channel and the tick comes first (answering watchdog ticks on the way).
fn next_event(
    shutdown: &Shutdown,
    run_now: bool,
    events: &Receiver<Event>,
    tick: &Receiver<Instant>,
    watchdog: &Receiver<Instant>,
) -> Event {
    loop {
        if shutdown.is_requested() {
            return Event::Shutdown;
        }
        if run_now {
            return Event::Tick;
        }
        select! {
            recv(events) -> ev => return ev.unwrap_or(Event::Shutdown),
            recv(tick) -> _ => return Event::Tick,
            recv(watchdog) -> _ => sd_notify("WATCHDOG=1"),
        }
    }
}

/// `sync-process run`: cycles every SYNC_INTERVAL_SECONDS until SIGTERM/SIGINT. Returns Ok after a signal;
/// a database being down is never a reason to return.
pub fn run_daemon(cfg: &Config) -> Result<()> {
    let shutdown = Shutdown::new();
    let (events_tx, events) = crossbeam_channel::bounded::<Event>(4);
    // Signals first: before any other thread (pools, status server, webhook) starts.
    let (wake, reload) = (events_tx.clone(), events_tx.clone());
    let signals = SignalThread::start(
        shutdown.clone(),
        move || {
            let _ = wake.try_send(Event::Shutdown);
        },
        move || {
            let _ = reload.try_send(Event::Reload);
        },
    )?;
    let mut service = Service::new(cfg, shutdown.clone(), true)?;
    service.set_running(true);
    // A taken STATUS_BIND is tried again each interval; under systemd (Type=notify) a status server that never
    // binds ends the daemon (see StatusListener).
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let (snapshot, history) = (service.snapshot(), service.history());
    let mut status_server = cfg.status_bind.map(|bind| {
        StatusListener::new(bind, under_systemd, move || {
            StatusServer::start(bind, snapshot.clone(), history.clone(), Some(cfg))
        })
    });
    let mut ticker = crate::jitter::Ticker::new(cfg.sync_interval, cfg.jitter_percent);
    let mut tick = ticker.channel();
    let watchdog = watchdog_period()
        .map(crossbeam_channel::tick)
        .unwrap_or_else(crossbeam_channel::never);
    // The drain gives way to the downloads at least once per interval; the next cycle then continues it.
    let budget = cfg.sync_interval.max(Duration::from_secs(1));
    sd_notify("READY=1\nSTATUS=running: first cycle");
    log::info!(
        "sync-process running: a cycle every {}s; SIGTERM or SIGINT stops it",
        cfg.sync_interval.as_secs()
    );
    let mut run_now = false;
    let mut failure = None;
    loop {
        match next_event(&shutdown, run_now, &events, &tick, &watchdog) {
            Event::Shutdown => break,
            Event::Reload => service.reload(),
            Event::Tick => {
                if !run_now {
                    ticker.advance();
                    tick = ticker.channel();
                }
                run_now = match service.cycle(budget) {
                    CycleOutcome::Ran {
                        backlog_remains,
                        result,
                    } => {
                        let mut line = systemd_status(service.cycles, &result);
                        if let Some(why) = status_server.as_ref().and_then(|s| s.problem()) {
                            line.push_str(&format!("; no status server ({why})"));
                        }
                        sd_notify(&line);
                        backlog_remains
                    }
                    CycleOutcome::Skipped(_) => false,
                };
                if let Some(Err(e)) = status_server.as_mut().map(|s| s.retry(cfg.sync_interval)) {
                    failure = Some(e);
                    break;
                }
                if !run_now {
                    release_free_memory();
                }
                if watchdog_period().is_some() {
                    sd_notify("WATCHDOG=1");
                }
            }
        }
    }
    sd_notify("STOPPING=1\nSTATUS=stopping");
    service.set_running(false);
    drop(status_server);
    drop(signals);
    drop(events_tx);
    match failure {
        Some(e) => Err(e),
        None => {
            log::info!("sync-process stopped");
            Ok(())
        }
    }
}

/// `sync-process once`: one cycle whose upload drains the whole queue. Fails when another process holds the
/// cycle lock on the local database.
pub fn run_once(cfg: &Config) -> Result<SyncCycleResult> {
    let shutdown = Shutdown::new();
    // Nothing waits for events in `once`: the first signal only requests shutdown.
    let _signals = SignalThread::start(shutdown.clone(), || {}, || {})?;
    let mut service = Service::new(cfg, shutdown, false)?;
    match service.cycle(UNLIMITED_BUDGET) {
        CycleOutcome::Ran { result, .. } => Ok(result),
        CycleOutcome::Skipped(why) => Err(Error::Other(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_exclusive_and_released_on_drop() {
        let slot = CycleSlot::new();
        let g = slot.try_enter().expect("free");
        assert!(slot.try_enter().is_none());
        drop(g);
        assert!(slot.try_enter().is_some());
    }

    #[test]
    fn panics_become_errors() {
        let r: std::result::Result<(), String> = run_isolated("the test part", || panic!("boom"));
        assert_eq!(r, Err("panic in the test part: boom".to_string()));
    }
}
