//! The advisory locks of this program: the keys, and the RAII guard for the session-level ones.
//!
//! Owns: [`LockKey`] (the three keys: migrate, drain, cycle) and [`AdvisoryLock`], which owns the pooled
//! connection that holds a session lock (drain, cycle) and releases the lock when dropped, also when a panic
//! unwinds. Does not own: when each lock is taken (upload/session.rs, scheduler.rs; migrate.rs takes its key as
//! a transaction-level lock, which ends with its transaction), the connections (db.rs).

use std::ops::{Deref, DerefMut};

use postgres::types::Type;

use super::{Conn, Target};
use crate::error::{Error, Result};

/// The session advisory locks of this program. Each key is the pair ("sync" in ASCII, n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKey {
    /// Held while migrating one database (waited for: migrations queue up).
    Migrate,
    /// Held on the local database by the connection of an upload drain: one drain claims at a time.
    Drain,
    /// Held on the local database for a whole cycle, on a dedicated connection: one cycle at a time.
    Cycle,
}

impl LockKey {
    /// The first half of every key: "sync" in ASCII.
    pub const CLASS: i32 = 0x7379_6e63;

    /// The `(classid, objid)` pair passed to `pg_advisory_lock(int4, int4)`.
    pub const fn pair(self) -> (i32, i32) {
        (
            LockKey::CLASS,
            match self {
                LockKey::Migrate => 1,
                LockKey::Drain => 2,
                LockKey::Cycle => 3,
            },
        )
    }

    /// The lock's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            LockKey::Migrate => "migration lock",
            LockKey::Drain => "upload lock",
            LockKey::Cycle => "cycle lock",
        }
    }
}

const LOCK_SQL: &str = "SELECT pg_advisory_lock($1, $2)";
const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, $2)";
const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1, $2)";

/// A session advisory lock held by the connection it owns (which it derefs to). Dropping it releases the lock
/// before the connection goes back to the pool, also when a panic unwinds (as `postgres::Transaction` rolls
/// back on drop), so a pooled connection never keeps a lock for a later, unrelated user. If the release
/// fails the connection is broken: the pool discards it and the server ends the lock with the session.
pub struct AdvisoryLock {
    conn: Conn,
    key: LockKey,
    target: Target,
}

impl AdvisoryLock {
    /// Waits until the lock is free and takes it.
    pub fn acquire(mut conn: Conn, key: LockKey, target: &Target) -> Result<AdvisoryLock> {
        Self::lock_query(&mut conn, LOCK_SQL, key, target)?;
        Ok(AdvisoryLock {
            conn,
            key,
            target: target.clone(),
        })
    }

    /// Takes the lock if it is free; [`Error::Busy`] when another session holds it.
    pub fn try_acquire(mut conn: Conn, key: LockKey, target: &Target) -> Result<AdvisoryLock> {
        let taken: bool = Self::lock_query(&mut conn, TRY_LOCK_SQL, key, target)?
            .try_get(0)
            .map_err(|e| target.err(format!("taking the {}", key.name()), e))?;
        if !taken {
            return Err(Error::Busy {
                lock: key,
                target: target.clone(),
            });
        }
        Ok(AdvisoryLock {
            conn,
            key,
            target: target.clone(),
        })
    }

    fn lock_query(conn: &mut Conn, sql: &str, key: LockKey, target: &Target) -> Result<postgres::Row> {
        let (class, id) = key.pair();
        conn.query_typed_one(sql, &[(&class, Type::INT4), (&id, Type::INT4)])
            .map_err(|e| target.err(format!("taking the {}", key.name()), e))
    }

    pub fn key(&self) -> LockKey {
        self.key
    }
}

impl Deref for AdvisoryLock {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.conn
    }
}

impl DerefMut for AdvisoryLock {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.conn
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if self.conn.is_closed() {
            return;
        }
        let (class, id) = self.key.pair();
        let released = self
            .conn
            .query_typed_one(UNLOCK_SQL, &[(&class, Type::INT4), (&id, Type::INT4)])
            .and_then(|row| row.try_get::<_, bool>(0));
        match released {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "the {} on the {} was not held when released",
                self.key.name(),
                self.target
            ),
            Err(e) => log::warn!(
                "releasing the {} on the {} failed (it is released when that session ends): {}",
                self.key.name(),
                self.target,
                crate::error::describe_pg_error(&e)
            ),
        }
    }
}
