//! Integration tests: the connection manager against a remote that accepts TCP and never answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::error::{Error, Side};
use sync_process::shutdown::Shutdown;

use crate::support::pg::{env_map_with_remote, DbPair, HOST};
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
