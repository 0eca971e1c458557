//! Integration tests: the connection manager against a remote that accepts TCP and never answers, and the
//! RAII advisory lock guard.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sync_process::config::Config;
use sync_process::db::{AdvisoryLock, ConnectionManager, Database, LockKey};
use sync_process::error::{Error, Side};
use sync_process::shutdown::Shutdown;

use crate::support::pg::{env_map, env_map_with_remote, DbPair, HOST};
use crate::support::proxy::FaultProxy;

fn through_proxy(pair: &DbPair) -> (FaultProxy, ConnectionManager) {
    let target: SocketAddr = format!("{HOST}:{}", pair.remote.port()).parse().expect("addr");
    let proxy = FaultProxy::start(target);
    let mut vars = env_map_with_remote(pair, HOST, proxy.port());
    vars.insert("DB_CONNECTION_TIMEOUT_MS".into(), "300".into());
    vars.insert("DB_STATEMENT_TIMEOUT_MS".into(), "500".into());
    vars.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    let cfg = Config::from_map(&vars).expect("config");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    (proxy, conns)
}

#[test]
fn a_black_holed_remote_fails_within_a_bound_and_recovers() {
    let pair = DbPair::new();
    let (proxy, conns) = through_proxy(&pair);
    conns.test(Side::Remote).expect("reachable through the proxy");

    proxy.set_blackhole(true);
    // Take the idle connection and ask for a second one: that new connection's startup never completes, so
    // the pool gives up after its timeout. Then the idle one goes back, and the call below runs on it: a
    // query on an established connection that is never answered.
    let mut fresh = Vec::new();
    while conns.remote.open_connections() > 0 {
        match conns.remote.try_get() {
            Ok(c) => fresh.push(c),
            Err(_) => break,
        }
    }
    drop(fresh);
    let started = Instant::now();
    let r = conns.call_bounded(Side::Remote, "a query", |c| {
        c.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| Error::db(Side::Remote, "test", "select", e))
    });
    assert!(r.is_err(), "no answer through a black hole");
    assert!(
        r.as_ref().err().is_some_and(Error::is_transient),
        "a stall is transient: {r:?}"
    );
    // Generous bound (the deadline is 0.8 s): only proves the call does not hang.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    proxy.set_blackhole(false);
    let ok = crate::support::wait_until(Duration::from_secs(20), || conns.test(Side::Remote).is_ok());
    assert!(ok, "the remote is usable again after the black hole ends");
}

#[test]
fn a_remote_that_stalls_mid_operation_makes_call_bounded_return() {
    let pair = DbPair::new();
    let (proxy, conns) = through_proxy(&pair);
    let r = conns.call_bounded(Side::Remote, "warm-up", |c| {
        c.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| Error::db(Side::Remote, "test", "select", e))
    });
    r.expect("a call through a healthy proxy succeeds");
    proxy.set_blackhole(true);
    let r = conns.call_bounded(Side::Remote, "stalled query", |c| {
        c.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| Error::db(Side::Remote, "test", "select", e))
    });
    assert!(
        matches!(r, Err(Error::Stalled { .. }) | Err(Error::Connect { .. })),
        "{r:?}"
    );
    proxy.set_blackhole(false);
}

#[test]
fn shutdown_abandons_a_stalled_remote_call_after_a_short_grace() {
    let pair = DbPair::new();
    let target: SocketAddr = format!("{HOST}:{}", pair.remote.port()).parse().expect("addr");
    let proxy = FaultProxy::start(target);
    let mut vars = env_map_with_remote(&pair, HOST, proxy.port());
    // A deadline far beyond the test: only the shutdown request can end the wait.
    vars.insert("DB_STATEMENT_TIMEOUT_MS".into(), "600000".into());
    let cfg = Config::from_map(&vars).expect("config");
    let shutdown = Shutdown::new();
    let conns = ConnectionManager::new(&cfg, shutdown.clone()).expect("pools");
    conns.test(Side::Remote).expect("reachable through the proxy");
    proxy.set_blackhole(true);
    let stopper = {
        let s = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            s.request();
        })
    };
    let r = conns.call_bounded(Side::Remote, "a stalled query", |c| {
        c.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| Error::db(Side::Remote, "test", "select", e))
    });
    stopper.join().expect("stopper");
    assert!(matches!(r, Err(Error::Shutdown)), "{r:?}");
    proxy.set_blackhole(false);
}

// ----- The advisory lock guard -----

/// Whether a session other than ours could take `key` now (taken and given back at once).
fn free_elsewhere(pair: &DbPair, key: LockKey) -> bool {
    let (class, id) = key.pair();
    let mut other = pair.local.client();
    let taken: bool = other
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &id])
        .expect("try lock")
        .get(0);
    if taken {
        other
            .execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &id])
            .expect("unlock");
    }
    taken
}

/// Advisory locks the session of `c` holds.
fn locks_held(c: &mut postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        &[],
    )
    .expect("pg_locks")
    .get(0)
}

/// The local database of `pair` behind a pool of a single connection (as the scheduler's cycle lock has
/// it), so that what comes back to the pool is the connection the next user gets.
pub fn one_connection_pool(pair: &DbPair) -> Database {
    let cfg = Config::from_map(&env_map(pair)).expect("config");
    let cfg = Config { pool_max: 1, ..cfg };
    Database::new(Side::Local, &cfg.local, &cfg).expect("pool")
}

#[test]
fn an_advisory_lock_is_exclusive_and_released_on_drop() {
    let pair = DbPair::new();
    let conns =
        ConnectionManager::new(&Config::from_map(&env_map(&pair)).expect("config"), Shutdown::new()).expect("pools");
    let db = &conns.local;
    assert_eq!(LockKey::Migrate.pair(), (0x7379_6e63, 1));
    assert_eq!(LockKey::Drain.pair(), (0x7379_6e63, 2));
    assert_eq!(LockKey::Cycle.pair(), (0x7379_6e63, 3));

    let held = AdvisoryLock::try_acquire(db.try_get().expect("conn"), LockKey::Drain, db.name()).expect("free");
    assert_eq!(held.key(), LockKey::Drain);
    assert!(!free_elsewhere(&pair, LockKey::Drain), "held by the guard's session");
    // Another session of ours is refused, and told which lock and which database.
    match AdvisoryLock::try_acquire(db.try_get().expect("conn"), LockKey::Drain, db.name()) {
        Err(
            e @ Error::Busy {
                lock: LockKey::Drain, ..
            },
        ) => {
            assert_eq!(e.side(), Some(Side::Local));
            let text = e.to_string();
            assert!(
                text.contains(&format!("local database {}", db.target())) && text.contains("another sync-process"),
                "{text}"
            );
        }
        other => panic!("expected Busy, got {:?}", other.map(|l| l.key())),
    }
    // The keys are independent.
    let cycle = AdvisoryLock::try_acquire(db.try_get().expect("conn"), LockKey::Cycle, db.name()).expect("cycle");
    drop(cycle);
    assert!(free_elsewhere(&pair, LockKey::Cycle));

    drop(held);
    assert!(free_elsewhere(&pair, LockKey::Drain), "released on drop");
}

#[test]
fn an_advisory_lock_is_released_when_a_panic_unwinds() {
    let pair = DbPair::new();
    let db = &one_connection_pool(&pair);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lock = AdvisoryLock::acquire(db.try_get().expect("conn"), LockKey::Cycle, db.name()).expect("lock");
        assert_eq!(locks_held(&mut lock), 1);
        panic!("injected panic while the lock is held");
    }));
    assert!(r.is_err(), "the closure panicked");
    assert!(free_elsewhere(&pair, LockKey::Cycle), "released while unwinding");
    let mut back = db.try_get().expect("the pool's one connection");
    assert_eq!(
        locks_held(&mut back),
        0,
        "the pooled connection came back without the lock"
    );
}
