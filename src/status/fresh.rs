//! Status values measured at the moment they are asked for (Property 12), without ever blocking the asker.
//!
//! Owns: [`Fresh`] (a measuring thread with its own one-connection pool on the local database: never the sync
//! loop's pools, so neither waits for the other), [`FRESH_SQL`] (queueSize, oldestPendingAge, quarantinedCount,
//! awaitingConfirmation and oldestAwaitingConfirmationAge in one statement), [`Answer`] and [`apply`] (pure: a request's answer laid over the
//! snapshot, `stale` when it had to fall back on the last measured values). Does not own: when to ask (the
//! server asks for /status, /metrics and /), the queue's definition (the upload's: `is_synchronized IS NOT
//! TRUE`, the predicate of the claim index, which leaves out the readings awaiting confirmation: they are
//! marked), what awaits confirmation (the upload's: batch rows with `acknowledged_at` set).
//!
//! One statement per request, at most one in flight: requests that arrive while a measurement runs wait for
//! the next one (which starts after theirs arrived), so concurrent requests share it. A request waits at most
//! [`FRESH_DEADLINE`]; a database that does not answer in time (hung, stopped, or slow) gets the request the
//! last measured values with `stale: true`, and the measuring thread carries on alone (its connection attempt
//! is bounded by DB_CONNECTION_TIMEOUT_MS, its statement by a server-side statement_timeout of at most 5 s).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::Database;
use crate::error::{Error, Result, Side};

use super::Snapshot;

/// How long a request waits for its measurement before it is answered with the last measured values.
pub const FRESH_DEADLINE: Duration = Duration::from_millis(500);
/// The server-side statement_timeout of the status session (or DB_STATEMENT_TIMEOUT_MS when shorter).
const STATUS_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue (the upload's definition: readings not marked `is_synchronized`, so not those awaiting
/// confirmation), the age of its oldest reading by `created_at` (as the scheduler's measurement), the
/// quarantine, and the readings awaiting confirmation with the age of their oldest batch's first
/// acknowledgement (as the upload's `AWAITING_CONFIRMATION`; a partial index keeps it to the batches in the
/// window), in one statement. Ages, not readings: float seconds are fine here.
pub const FRESH_SQL: &str = "SELECT q.n, q.age, (SELECT count(*) FROM sync_quarantine)::int8, a.n, a.age \
     FROM (SELECT count(*)::int8 AS n, extract(epoch FROM localtimestamp - min(created_at))::float8 AS age \
           FROM meter_readings WHERE is_synchronized IS NOT TRUE) q \
     CROSS JOIN (SELECT coalesce(sum(cardinality(reading_ids)), 0)::int8 AS n, \
                 extract(epoch FROM now() - min(uploaded_at))::float8 AS age \
                 FROM sync_upload_batches WHERE acknowledged_at IS NOT NULL) a";

/// One measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    pub queue_size: u64,
    /// Seconds; None when the queue is empty.
    pub oldest_pending_age: Option<u64>,
    pub quarantined_count: u64,
    /// Readings uploaded and kept for UPLOAD_CONFIRM_SECONDS (not in `queue_size`).
    pub awaiting_confirmation: u64,
    /// Seconds since the oldest batch awaiting confirmation was first acknowledged; None when none.
    pub oldest_awaiting_confirmation_age: Option<u64>,
}

/// What one request got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Measured for this request (None: the database did not answer in time, or failed).
    pub now: Option<Measured>,
    /// The local database answered this request (also true when it answered with an error, e.g. before the
    /// migrations ran).
    pub connected: bool,
    /// The last successful measurement of this thread, and when.
    pub last: Option<(Instant, Measured)>,
}

/// Lays `a` over the snapshot: fresh values and `localDbConnected` as measured now; without fresh values, the
/// newer of the snapshot's (from the last cycle) and this thread's last measurement, with `stale: true`.
pub fn apply(s: &mut Snapshot, a: &Answer) {
    let st = &mut s.status;
    st.local_db_connected = a.connected;
    let values = match a.now {
        Some(m) => {
            st.stale = false;
            Some(m)
        }
        None => {
            st.stale = true;
            a.last
                .filter(|(at, _)| s.queue_measured_at.is_none_or(|t| *at > t))
                .map(|(_, m)| m)
        }
    };
    if let Some(m) = values {
        st.queue_size = m.queue_size;
        st.oldest_pending_age = m.oldest_pending_age;
        st.quarantined_count = m.quarantined_count;
        st.awaiting_confirmation = m.awaiting_confirmation;
        st.oldest_awaiting_confirmation_age = m.oldest_awaiting_confirmation_age;
    }
}

/// Why a measurement failed.
#[derive(Clone, Debug)]
struct Failure {
    /// The server answered (with an error), so it is up.
    answered: bool,
    message: String,
}

#[derive(Default)]
struct State {
    /// Requests numbered as they arrive.
    wanted: u64,
    /// The highest request number whose measurement has finished.
    finished: u64,
    /// The outcome of the measurement that finished last.
    outcome: Option<std::result::Result<Measured, Failure>>,
    last_ok: Option<(Instant, Measured)>,
    stop: bool,
}

struct Inner {
    state: Mutex<State>,
    /// The measuring thread waits here for requests.
    wake: Condvar,
    /// Requests wait here for a finished measurement.
    done: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The measuring thread and its pool; the thread ends after drop, once its statement (if any) returns.
pub struct Fresh {
    inner: Arc<Inner>,
    deadline: Duration,
}

impl Fresh {
    /// Builds the one-connection pool (without connecting) and starts the measuring thread.
    pub fn start(cfg: &Config) -> Result<Fresh> {
        let own = Config {
            pool_max: 1,
            statement_timeout: cfg.statement_timeout.min(STATUS_STATEMENT_TIMEOUT),
            ..cfg.clone()
        };
        let db = Database::new(Side::Local, &cfg.local, &own)?;
        Fresh::with_database(db, FRESH_DEADLINE)
    }

    /// As [`Fresh::start`], on a given database and deadline (benchmarks, tests).
    pub fn with_database(db: Database, deadline: Duration) -> Result<Fresh> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        thread::Builder::new()
            .name("status-db".into())
            .spawn(move || measuring_thread(&worker, &db))
            .map_err(|e| Error::io("starting the status measuring thread", e))?;
        Ok(Fresh { inner, deadline })
    }

    /// Measures now, waiting at most the deadline.
    pub fn ask(&self) -> Answer {
        let until = Instant::now() + self.deadline;
        let mut st = self.inner.lock();
        st.wanted += 1;
        let ticket = st.wanted;
        self.inner.wake.notify_one();
        while st.finished < ticket {
            let now = Instant::now();
            if now >= until {
                return Answer {
                    now: None,
                    connected: false,
                    last: st.last_ok,
                };
            }
            st = self
                .inner
                .done
                .wait_timeout(st, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let (now, connected) = match &st.outcome {
            Some(Ok(m)) => (Some(*m), true),
            Some(Err(f)) => (None, f.answered),
            None => (None, false),
        };
        Answer {
            now,
            connected,
            last: st.last_ok,
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.wake.notify_all();
    }
}

fn measuring_thread(inner: &Inner, db: &Database) {
    loop {
        let target = {
            let mut st = inner.lock();
            while st.wanted == st.finished && !st.stop {
                st = inner.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return;
            }
            st.wanted
        };
        let outcome = measure(db);
        if let Err(f) = &outcome {
            log::debug!("status: measuring the queue failed: {}", f.message);
        }
        let mut st = inner.lock();
        st.finished = target;
        if let Ok(m) = &outcome {
            st.last_ok = Some((Instant::now(), *m));
        }
        st.outcome = Some(outcome);
        inner.done.notify_all();
    }
}

/// One statement on the status connection; once more on a fresh connection when the pooled one turns out
/// closed (the server restarted since the last request).
fn measure(db: &Database) -> std::result::Result<Measured, Failure> {
    match measure_once(db) {
        Err((_, true)) => measure_once(db).map_err(|(f, _)| f),
        other => other.map_err(|(f, _)| f),
    }
}

/// The measurement, or why not and whether the connection was found closed.
fn measure_once(db: &Database) -> std::result::Result<Measured, (Failure, bool)> {
    let mut conn = db.try_get().map_err(|e| {
        (
            Failure {
                answered: false,
                message: e.to_string(),
            },
            false,
        )
    })?;
    let row = conn.query_typed_one(FRESH_SQL, &[]).map_err(|e| {
        // Classes 08 (connection) and 57 (operator intervention: shutting down, cannot connect now) mean the
        // server is not there for us; any other answer (e.g. a missing table before the migrations) means it is.
        let answered = e
            .code()
            .is_some_and(|c| !c.code().starts_with("08") && !c.code().starts_with("57"));
        let failure = Failure {
            answered,
            message: db.err("measuring the queue for the status", e).to_string(),
        };
        (failure, conn.is_closed())
    })?;
    let count = |i: usize| -> u64 { u64::try_from(row.get::<_, i64>(i)).unwrap_or(0) };
    let secs = |i: usize| -> Option<u64> {
        let age: Option<f64> = row.get(i);
        age.map(|s| if s.is_finite() { s.max(0.0) as u64 } else { 0 })
    };
    Ok(Measured {
        queue_size: count(0),
        oldest_pending_age: secs(1),
        quarantined_count: count(2),
        awaiting_confirmation: count(3),
        oldest_awaiting_confirmation_age: secs(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(q: u64) -> Measured {
        Measured {
            queue_size: q,
            oldest_pending_age: Some(q * 2),
            quarantined_count: q + 1,
            awaiting_confirmation: q + 3,
            oldest_awaiting_confirmation_age: Some(q * 4),
        }
    }

    #[test]
    fn fresh_values_win_and_are_not_stale() {
        let mut s = Snapshot::default();
        s.status.queue_size = 5;
        s.status.stale = true;
        apply(
            &mut s,
            &Answer {
                now: Some(m(137)),
                connected: true,
                last: None,
            },
        );
        assert_eq!((s.status.queue_size, s.status.quarantined_count), (137, 138));
        assert_eq!(s.status.oldest_pending_age, Some(274));
        assert_eq!(
            (
                s.status.awaiting_confirmation,
                s.status.oldest_awaiting_confirmation_age
            ),
            (140, Some(548))
        );
        assert!(!s.status.stale && s.status.local_db_connected);
    }

    #[test]
    fn without_an_answer_the_newer_of_the_last_values_is_served_stale() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut s = Snapshot {
            queue_measured_at: Some(t1),
            ..Default::default()
        };
        s.status.queue_size = 0;
        s.status.local_db_connected = true;
        // The cycle measured after this thread did: the cycle's values stay.
        apply(
            &mut s,
            &Answer {
                now: None,
                connected: false,
                last: Some((t0, m(137))),
            },
        );
        assert_eq!(s.status.queue_size, 0);
        assert!(s.status.stale && !s.status.local_db_connected);
        // This thread measured last: its values.
        let mut s2 = Snapshot {
            queue_measured_at: Some(t0),
            ..Default::default()
        };
        apply(
            &mut s2,
            &Answer {
                now: None,
                connected: true,
                last: Some((t1, m(9))),
            },
        );
        assert_eq!(s2.status.queue_size, 9);
        assert!(s2.status.stale && s2.status.local_db_connected);
    }
}
