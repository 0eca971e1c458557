//! Migrations: the numbered SQL files of sql/local and sql/remote, applied idempotently.
//!
//! Owns: the list of migrations (embedded in the binary from sql/), the `sync_schema_migrations` table on each
//! side, and [`migrate`]. Each pending file runs in its own transaction with its version recorded in the same
//! transaction, under the migration lock ([`LockKey::Migrate`]) taken as a transaction-level advisory lock in
//! that same transaction, so two processes cannot migrate one database at once, the lock ends with the
//! transaction whatever happens, and it holds through a pooler in transaction mode (PgBouncer).
//! Files only add (IF NOT EXISTS), so a database that already holds the seed tables keeps every row.
//! Does not own: connections (db.rs).

use crate::db::{Database, LockKey, Side};
use crate::error::Result;

/// One migration file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const LOCAL: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_seed_schema.sql",
        sql: include_str!("../sql/local/0001_seed_schema.sql"),
    },
    Migration {
        version: 2,
        name: "0002_upload_bookkeeping.sql",
        sql: include_str!("../sql/local/0002_upload_bookkeeping.sql"),
    },
    Migration {
        version: 3,
        name: "0003_upload_confirmation.sql",
        sql: include_str!("../sql/local/0003_upload_confirmation.sql"),
    },
    Migration {
        version: 4,
        name: "0004_mirror_digest.sql",
        sql: include_str!("../sql/local/0004_mirror_digest.sql"),
    },
];

pub const REMOTE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_seed_schema.sql",
        sql: include_str!("../sql/remote/0001_seed_schema.sql"),
    },
    Migration {
        version: 2,
        name: "0002_upload_ledger.sql",
        sql: include_str!("../sql/remote/0002_upload_ledger.sql"),
    },
    Migration {
        version: 3,
        name: "0003_upload_chain.sql",
        sql: include_str!("../sql/remote/0003_upload_chain.sql"),
    },
    Migration {
        version: 4,
        name: "0004_upload_turn.sql",
        sql: include_str!("../sql/remote/0004_upload_turn.sql"),
    },
];

pub fn migrations(side: Side) -> &'static [Migration] {
    match side {
        Side::Local => LOCAL,
        Side::Remote => REMOTE,
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS sync_schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// Applies the pending migrations of `db`'s side (or, with `dry_run`, only lists them). Returns the names of
/// the files applied (or that would be).
pub fn migrate(db: &Database, dry_run: bool) -> Result<Vec<&'static str>> {
    migrate_with(db, dry_run, &mut |_| {})
}

/// [`migrate`], calling `after_each` after each file is applied (or listed), with the lock still held: tests
/// use it to stop or fail in between.
pub fn migrate_with(db: &Database, dry_run: bool, after_each: &mut dyn FnMut(&Migration)) -> Result<Vec<&'static str>> {
    let side = db.side();
    let mut conn = db.try_get()?;
    if dry_run {
        let exists: bool = conn
            .query_one("SELECT to_regclass('sync_schema_migrations') IS NOT NULL", &[])
            .map_err(|e| db.err("reading applied migrations", e))?
            .get(0);
        let applied = if exists { versions(&mut *conn, db)? } else { Vec::new() };
        let pending: Vec<&'static str> = migrations(side)
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| m.name)
            .collect();
        for name in &pending {
            log::info!("migrate --dry-run: {side} {} would apply {name}", db.target());
        }
        return Ok(pending);
    }
    // The table of applied versions, created under the lock (two concurrent CREATE TABLE IF NOT EXISTS can
    // collide).
    let mut tx = locked_transaction(&mut conn, db, "creating sync_schema_migrations")?;
    tx.batch_execute(CREATE_TABLE)
        .map_err(|e| db.err("creating sync_schema_migrations", e))?;
    let applied = versions(&mut tx, db)?;
    tx.commit()
        .map_err(|e| db.err("committing sync_schema_migrations", e))?;
    let mut done = Vec::new();
    for m in migrations(side).iter().filter(|m| !applied.contains(&m.version)) {
        let mut tx = locked_transaction(&mut conn, db, &format!("beginning {}", m.name))?;
        // Another process may have applied it while this one waited for the lock.
        if versions(&mut tx, db)?.contains(&m.version) {
            continue;
        }
        tx.batch_execute(m.sql)
            .map_err(|e| db.err(format!("applying {}", m.name), e))?;
        tx.execute(
            "INSERT INTO sync_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .map_err(|e| db.err(format!("recording {}", m.name), e))?;
        tx.commit().map_err(|e| db.err(format!("committing {}", m.name), e))?;
        log::info!("migrate: {side} {} applied {}", db.target(), m.name);
        after_each(m);
        done.push(m.name);
    }
    Ok(done)
}

/// A transaction holding the migration lock as a transaction-level advisory lock: it ends with the
/// transaction (commit, rollback, a dropped connection, a panic that drops the transaction), so it also holds
/// through a pooler in transaction mode, where a session lock would stay on a server connection that another
/// client gets next. Waits while another process migrates.
fn locked_transaction<'c>(
    conn: &'c mut postgres::Client,
    db: &Database,
    context: &str,
) -> Result<postgres::Transaction<'c>> {
    let mut tx = conn.transaction().map_err(|e| db.err(context, e))?;
    let (class, id) = LockKey::Migrate.pair();
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&class, &id])
        .map_err(|e| db.err(format!("{context}: taking the migration lock"), e))?;
    Ok(tx)
}

fn versions(conn: &mut impl postgres::GenericClient, db: &Database) -> Result<Vec<i32>> {
    Ok(conn
        .query("SELECT version FROM sync_schema_migrations", &[])
        .map_err(|e| db.err("reading applied migrations", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `sync-process migrate [--dry-run] [--local] [--remote]`: migrates the chosen sides (local first) and prints
/// what was applied, or what would be with `dry_run`, per side.
pub fn command(cfg: &crate::config::Config, dry_run: bool, local: bool, remote: bool) -> Result<()> {
    let conns = crate::db::ConnectionManager::new(cfg, crate::shutdown::Shutdown::new())?;
    let sides = [(local, Side::Local), (remote, Side::Remote)];
    for side in sides.iter().filter(|(on, _)| *on).map(|(_, s)| *s) {
        let database = conns.db(side);
        let done = migrate(database, dry_run)?;
        let verb = if dry_run { "would apply" } else { "applied" };
        if done.is_empty() {
            crate::output::println(&format!("{side} {}: up to date", database.target()))?;
        } else {
            crate::output::println(&format!("{side} {}: {verb} {}", database.target(), done.join(", ")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_in_order_and_match_file_names() {
        for side in [Side::Local, Side::Remote] {
            for (i, m) in migrations(side).iter().enumerate() {
                assert_eq!(m.version as usize, i + 1);
                assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
            }
        }
    }
}
