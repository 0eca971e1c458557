//! The remote side of a drain: the upload connections on their own threads, and the other remote statements.
//!
//! Owns: [`Uplink`] (UPLOAD_BATCHES_IN_FLIGHT remote connections, each on a thread, sending the upload
//! statements unnamed: nothing is kept on the server between statements, so a pooler in transaction mode
//! may hand each to another server connection), [`Order`] (plain, chain head, or after the batch before), the jobs and their bounded waits,
//! the upload statement itself ([`upload`]: readings and ledger row, one round trip), and the one-shot remote
//! statements of recovery and pruning (ledger lookup, prune). Does not own: the statement texts (sql.rs),
//! when to send what (drain.rs), bounding a wait in time (db.rs: `await_bounded`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::types::{ToSql, Type};
use postgres::Client;

use super::batch::{ClaimedBatch, Columns, UploadOutcome};
use super::fault::is_ledger_conflict;
use super::sql;
use crate::db::{ConnectionManager, Side, Target};
use crate::error::{Error, Result};

/// The drain's remote connections (UPLOAD_BATCHES_IN_FLIGHT of them, one by default), each kept on its own
/// thread, so that uploads run while the drain works on the local database. Batches are sent to the
/// connections in turn; one connection runs its uploads serially. Every wait is bounded like [`ConnectionManager::call_bounded`]: a silent remote, a shutdown past
/// its grace, or a broken connection abandons that thread (it ends with the link) and the next send on it
/// starts a fresh one.
pub(super) struct Uplink<'a> {
    conns: &'a ConnectionManager,
    target: Arc<Target>,
    source_id: Arc<str>,
    texts: Arc<Texts>,
    lanes: Vec<Option<crossbeam_channel::Sender<Job>>>,
    turn: usize,
    /// The slowest recent upload (decaying): how long a batch in flight waits for the one before it to arrive.
    recent: Duration,
}

/// How an upload is ordered against the others in flight (see sql/remote/0003_upload_chain.sql and
/// 0004_upload_turn.sql).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Order {
    /// One batch at a time (UPLOAD_BATCHES_IN_FLIGHT = 1, or the drain's width is down to one and nothing is
    /// in flight): the plain statement, the chain untouched.
    Serial,
    /// Several may overlap and none older is in flight: this batch becomes the site's chain head.
    Lead,
    /// Inserted only once the batch with this id is in, and after it.
    After(String),
}

struct Job {
    batch: Arc<ClaimedBatch>,
    order: Order,
    /// For [`Order::After`]: how long the server waits for the batch before it to arrive (milliseconds).
    turn_wait_ms: i32,
    reply: crossbeam_channel::Sender<Result<UploadOutcome>>,
}

/// An upload sent to the uplink, not yet waited for.
pub(super) struct InFlight {
    lane: usize,
    what: String,
    started: Instant,
    reply: crossbeam_channel::Receiver<Result<UploadOutcome>>,
}

impl<'a> Uplink<'a> {
    /// `source_column`: UPLOAD_SOURCE_COLUMN, the remote column that receives `source_id` with each reading.
    pub fn new(conns: &'a ConnectionManager, source_id: &str, source_column: Option<&str>, width: u32) -> Uplink<'a> {
        Uplink {
            conns,
            target: Arc::new(conns.remote.name().clone()),
            source_id: Arc::from(source_id),
            texts: Arc::new(Texts::new(source_column)),
            lanes: (0..width.max(1)).map(|_| None).collect(),
            turn: 0,
            recent: Duration::ZERO,
        }
    }

    /// How many uploads may be in flight at once.
    pub fn width(&self) -> usize {
        self.lanes.len()
    }

    /// The order of an upload with nothing older in flight.
    pub fn alone(&self) -> Order {
        if self.width() == 1 {
            Order::Serial
        } else {
            Order::Lead
        }
    }

    /// Sends `batch` to be uploaded on the next connection in turn among the first `width` (the drain's width
    /// now: at one, every batch goes on the same connection, and no other is opened); takes a remote
    /// connection (with MAX_CONNECTION_RETRIES) if that one has none.
    pub fn send(&mut self, batch: Arc<ClaimedBatch>, order: Order, width: usize) -> Result<InFlight> {
        let what = format!("uploading batch {} ({} readings)", batch.batch_id, batch.len());
        let lane = self.turn % width.clamp(1, self.lanes.len());
        self.turn = self.turn.wrapping_add(1);
        log::trace!(
            "upload: sending batch {} on connection {lane} ({order:?})",
            batch.batch_id
        );
        let (reply, rx) = crossbeam_channel::bounded(1);
        let turn_wait_ms = i32::try_from(self.turn_wait().as_millis()).unwrap_or(i32::MAX);
        let mut job = Job {
            batch,
            order,
            turn_wait_ms,
            reply,
        };
        // A thread that ended (its connection broke after the last job) gives the job back: start a fresh one.
        for _ in 0..2 {
            if self.lanes[lane].is_none() {
                self.lanes[lane] = Some(self.start()?);
            }
            let Some(jobs) = &self.lanes[lane] else {
                continue;
            };
            match jobs.send(job) {
                Ok(()) => {
                    return Ok(InFlight {
                        lane,
                        what,
                        started: Instant::now(),
                        reply: rx,
                    })
                }
                Err(crossbeam_channel::SendError(back)) => {
                    job = back;
                    self.lanes[lane] = None;
                }
            }
        }
        Err(Error::WorkerLost {
            target: (*self.target).clone(),
            what,
            how: "the upload thread ended at once twice",
        })
    }

    /// How long a batch sent after another waits on the server for that one to arrive, if it reached the
    /// server first: a second plus four times the slowest recent upload (statements sent a moment apart on
    /// different connections arrive within that, also over a slow or capped link), at most a quarter of the
    /// remote call's bound. Only a batch before it that failed, or was never sent, costs this wait.
    fn turn_wait(&self) -> Duration {
        (Duration::from_secs(1) + self.recent * 4).min(self.conns.call_deadline / 4)
    }

    /// Gives up every connection (their threads end with their links); the next sends start fresh ones.
    pub fn abandon(&mut self) {
        self.lanes.iter_mut().for_each(|lane| *lane = None);
    }

    /// Waits for the outcome of an upload sent by [`Uplink::send`]. After a stall, shutdown, a lost thread or
    /// a transient error the connection is given up (a half-broken one is never reused).
    pub fn wait(&mut self, sent: InFlight) -> Result<UploadOutcome> {
        let r = self
            .conns
            .await_bounded(Side::Remote, &sent.what, &sent.reply, sent.started);
        self.recent = sent.started.elapsed().max(self.recent * 3 / 4);
        if matches!(&r, Err(e) if e.is_transient() || matches!(e, Error::Shutdown | Error::WorkerLost { .. })) {
            self.lanes[sent.lane] = None;
        }
        r
    }

    /// Takes a remote connection and starts its thread. The connection is made here, before anything is
    /// sent: a batch sent on a fresh connection must not reach the server later than one sent after it on a
    /// connection that is ready (with several in flight that would break the chain).
    fn start(&self) -> Result<crossbeam_channel::Sender<Job>> {
        let mut conn = self.conns.get(Side::Remote)?;
        let (tx, jobs) = crossbeam_channel::unbounded::<Job>();
        let (target, source_id, texts) = (
            Arc::clone(&self.target),
            Arc::clone(&self.source_id),
            Arc::clone(&self.texts),
        );
        std::thread::Builder::new()
            .name("upload-remote".into())
            .spawn(move || {
                for job in jobs {
                    let r = upload(&mut conn, &texts, &target, &source_id, &job);
                    let _ = job.reply.send(r);
                    if conn.is_closed() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the upload thread", e))?;
        Ok(tx)
    }
}

/// The upload statement for `order`, one round trip: the readings and the ledger row (and with several in
/// flight, the move of the chain head), all or nothing.
/// The upload statements' texts, with UPLOAD_SOURCE_COLUMN written in when it is set.
struct Texts {
    serial: String,
    lead: String,
    after: String,
}

impl Texts {
    fn new(source_column: Option<&str>) -> Texts {
        Texts {
            serial: sql::with_source_column(sql::UPLOAD, source_column, "$1"),
            lead: sql::with_source_column(sql::UPLOAD_LEAD, source_column, "$1"),
            after: sql::with_source_column(sql::UPLOAD_AFTER, source_column, "$1"),
        }
    }
}

fn upload(c: &mut Client, texts: &Texts, db: &Target, source_id: &str, job: &Job) -> Result<UploadOutcome> {
    let (batch, order) = (&*job.batch, &job.order);
    let context = || format!("uploading batch {} ({} readings)", batch.batch_id, batch.len());
    let (text, n_params) = match order {
        Order::Serial => (texts.serial.as_str(), 8),
        Order::Lead => (texts.lead.as_str(), 8),
        Order::After(_) => (texts.after.as_str(), 10),
    };
    let n = i32::try_from(batch.len()).unwrap_or(i32::MAX);
    let cols = Columns::of(&batch.readings);
    let before = match order {
        Order::After(id) => id.as_str(),
        Order::Serial | Order::Lead => "",
    };
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&source_id, Type::TEXT),
        (&batch.batch_id, Type::TEXT),
        (&n, Type::INT4),
        (&cols.meter, Type::TEXT_ARRAY),
        (&cols.ts, Type::TIMESTAMP_ARRAY),
        (&cols.value, Type::NUMERIC_ARRAY),
        (&cols.unit, Type::TEXT_ARRAY),
        (&cols.metadata, Type::JSONB_ARRAY),
        (&before, Type::TEXT),
        (&job.turn_wait_ms, Type::INT4),
    ];
    // Unnamed (parse, bind, execute in one round trip): nothing is kept on the server between statements, so
    // a pooler in transaction mode may hand each statement to another server connection.
    match c.execute_typed(text, &params[..n_params]) {
        Ok(rows) => Ok(UploadOutcome::of(batch, rows)),
        Err(e) if is_ledger_conflict(&e) => Ok(UploadOutcome::AlreadyPresent),
        Err(e) => Err(db.err(context(), e)),
    }
}

/// The ids among `ids` that the remote ledger holds for `source_id`.
pub(super) fn ledger_lookup(c: &mut Client, db: &Target, source_id: &str, ids: &[String]) -> Result<HashSet<String>> {
    let rows = c
        .query_typed(
            sql::LEDGER_LOOKUP,
            &[(&source_id, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
        )
        .map_err(|e| {
            db.err(
                format!("looking up {} claimed batch(es) in the upload ledger", ids.len()),
                e,
            )
        })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes the ledger rows of `source_id` older than `secs` seconds, except `keep`. Returns how many.
pub(super) fn prune(c: &mut Client, db: &Target, source_id: &str, secs: i64, keep: &[String]) -> Result<u64> {
    let rows = c
        .query_typed(
            sql::PRUNE,
            &[(&source_id, Type::TEXT), (&secs, Type::INT8), (&keep, Type::TEXT_ARRAY)],
        )
        .map_err(|e| db.err("pruning the upload ledger", e))?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
}
