//! Tests of the test harness itself: servers, databases, the fault proxy, the
//! daemon wrapper and running as root.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::support::daemon::Daemon;
use crate::support::pg::{self, DbPair, PgServer, ServerOptions, TestDb};
use crate::support::proxy::{Bucket, FaultProxy, Way, BURST_BYTES};

fn one_plus_one(client: &mut Client) -> i32 {
    client.query_one("SELECT 1 + 1", &[]).expect("SELECT 1 + 1").get(0)
}

fn proxy_to(db: &TestDb) -> FaultProxy {
    FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], db.port())))
}

fn connect_via(db: &TestDb, proxy: &FaultProxy) -> Client {
    db.config_via(pg::HOST, proxy.port())
        .connect(NoTls)
        .expect("connecting through the proxy")
}

#[test]
fn two_servers_start_and_answer() {
    let a = PgServer::start();
    let b = PgServer::start_with(ServerOptions {
        extra_conf: vec!["timezone = 'Asia/Tokyo'".into()],
        ..Default::default()
    });
    assert_ne!(a.port(), b.port());
    assert!(a.is_running() && b.is_running());
    assert_eq!(one_plus_one(&mut a.admin_client()), 2);
    let tz: String = b
        .admin_client()
        .query_one("SHOW timezone", &[])
        .expect("SHOW timezone")
        .get(0);
    assert_eq!(tz, "Asia/Tokyo");
}

#[test]
fn test_db_is_created_and_dropped_even_with_open_clients() {
    let server = PgServer::shared();
    let db = TestDb::create(server);
    let name = db.name().to_owned();
    let mut client = db.client();
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .expect("create table");
    drop(db);
    let count: i64 = server
        .admin_client()
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .expect("query pg_database")
        .get(0);
    assert_eq!(count, 0, "database {name} still exists");
    assert!(
        client.simple_query("SELECT 1").is_err(),
        "client of a dropped database still works"
    );
}

#[test]
fn stopped_server_keeps_rows_when_started_again() {
    let server = PgServer::start();
    let db = TestDb::create(&server);
    db.client()
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10)")
        .expect("fill table");
    server.stop();
    assert!(!server.is_running());
    server.start_again();
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM t", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 10);
    server.kill();
    assert!(!server.is_running());
    server.start_again(); // crash recovery
    assert_eq!(one_plus_one(&mut db.client()), 2);
}

#[test]
fn db_pair_and_env_map() {
    let pair = DbPair::new();
    assert_ne!(pair.local.name(), pair.remote.name());
    let env = pg::env_map(&pair);
    assert_eq!(env["POSTGRES_SYNC_DB"], pair.local.name());
    assert_eq!(env["POSTGRES_CLIENT_DB"], pair.remote.name());
    assert_eq!(env["POSTGRES_CLIENT_PORT"], pair.remote.port().to_string());
    assert!(!env["POSTGRES_SYNC_PASSWORD"].is_empty());
    let proxied = pg::env_map_with_remote(&pair, "127.0.0.1", 1);
    assert_eq!(proxied["POSTGRES_CLIENT_PORT"], "1");
    assert_eq!(proxied["POSTGRES_SYNC_PORT"], pair.local.port().to_string());
}

#[test]
fn proxy_forwards_and_cut_all_breaks_only_live_connections() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    let mut before = connect_via(&db, &proxy);
    assert_eq!(one_plus_one(&mut before), 2);
    assert_eq!(proxy.connections_opened(), 1);
    proxy.cut_all();
    assert!(
        before.simple_query("SELECT 1").is_err(),
        "query on a cut connection succeeded"
    );
    let mut after = connect_via(&db, &proxy);
    assert_eq!(one_plus_one(&mut after), 2);
    assert_eq!(proxy.connections_opened(), 2);
}

/// Echoes every byte back, for one connection.
fn echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binding an echo server");
    let addr = listener.local_addr().expect("echo server address");
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            if let Ok(mut back) = conn.try_clone() {
                let _ = std::io::copy(&mut conn, &mut back);
            }
        }
    });
    addr
}

#[test]
fn proxy_counts_the_bytes_each_way_and_a_capped_link_delivers_them_intact() {
    use std::io::{Read, Write};
    let proxy = FaultProxy::start(echo_server());
    proxy.set_bandwidth(Some(2_000_000));
    proxy.set_latency(Duration::from_millis(1));
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut conn = std::net::TcpStream::connect(proxy.addr()).expect("connecting through the proxy");
    let mut writer = conn.try_clone().expect("cloning the socket");
    let payload = sent.clone();
    let sender = std::thread::spawn(move || writer.write_all(&payload));
    let mut got = vec![0u8; sent.len()];
    conn.read_exact(&mut got).expect("reading the echo");
    assert!(
        sender.join().is_ok_and(|r| r.is_ok()),
        "writing through the proxy failed"
    );
    assert!(got == sent, "the bytes came back changed");
    assert_eq!(proxy.bytes(Way::Up), 200_000);
    assert_eq!(proxy.bytes(Way::Down), 200_000);
    proxy.set_bandwidth(None);
}

#[test]
fn the_proxy_bucket_lets_a_burst_through_then_paces_at_the_rate() {
    let t0 = Instant::now();
    let mut b = Bucket::full(t0);
    // 1,000 bytes/s: the first 16 KiB go at once, the next 1,000 bytes owe one second.
    assert_eq!(b.take(1_000, BURST_BYTES, t0), Duration::ZERO);
    assert_eq!(b.take(1_000, 1_000, t0), Duration::from_secs(1));
    // Half a second later the debt is half paid: 500 more bytes owe 1 s from then.
    assert_eq!(
        b.take(1_000, 500, t0 + Duration::from_millis(500)),
        Duration::from_secs(1)
    );
    // A long idle spell refills the bucket only up to its depth.
    assert_eq!(
        b.take(1_000, BURST_BYTES, t0 + Duration::from_secs(1000)),
        Duration::ZERO
    );
    assert!(b.take(1_000, 1, t0 + Duration::from_secs(1000)) > Duration::ZERO);
}

#[test]
fn proxy_refuse_closes_new_connections() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    proxy.set_refuse(true);
    let mut config = db.config_via(pg::HOST, proxy.port());
    config.connect_timeout(Duration::from_secs(1));
    assert!(
        config.connect(NoTls).is_err(),
        "connect through a refusing proxy succeeded"
    );
    assert_eq!(proxy.connections_opened(), 1);
    proxy.set_refuse(false);
    assert_eq!(one_plus_one(&mut connect_via(&db, &proxy)), 2);
}

#[test]
fn proxy_blackhole_never_answers() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    let mut existing = connect_via(&db, &proxy);
    proxy.set_blackhole(true);

    let (query_tx, query_rx) = mpsc::channel();
    thread::spawn(move || query_tx.send(existing.simple_query("SELECT 1").map(drop)));
    let mut config = db.config_via(pg::HOST, proxy.port());
    config.connect_timeout(Duration::from_secs(1));
    let (connect_tx, connect_rx) = mpsc::channel();
    thread::spawn(move || connect_tx.send(config.connect(NoTls).map(drop)));

    // Neither the query on the existing connection nor a new connect with a 1 s
    // connect_timeout succeeds. The connect does not fail quickly either:
    // connect_timeout only bounds the TCP connect, which the proxy accepts, and
    // the startup handshake then waits until cut_all.
    thread::sleep(Duration::from_secs(2));
    assert!(
        !matches!(query_rx.try_recv(), Ok(Ok(()))),
        "query answered through a black hole"
    );
    assert!(
        !matches!(connect_rx.try_recv(), Ok(Ok(()))),
        "connect through a black hole succeeded"
    );
    proxy.cut_all();
    let wait = Duration::from_secs(5);
    assert!(query_rx
        .recv_timeout(wait)
        .expect("query still hanging after cut_all")
        .is_err());
    assert!(connect_rx
        .recv_timeout(wait)
        .expect("connect still hanging after cut_all")
        .is_err());

    proxy.set_blackhole(false);
    assert_eq!(one_plus_one(&mut connect_via(&db, &proxy)), 2);
}

#[test]
fn proxy_blackhole_end_delivers_held_data() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    let mut client = connect_via(&db, &proxy);
    proxy.set_blackhole(true);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(one_plus_one(&mut client)));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "query answered through a black hole"
    );
    proxy.set_blackhole(false);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5))
            .expect("query not answered after the black hole"),
        2
    );
}

#[test]
fn proxy_latency_applies_each_way() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    let mut client = connect_via(&db, &proxy);
    proxy.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    client.simple_query("SELECT 1").expect("query through a slow proxy");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100), "round trip took only {took:?}");
    // Bulk transfer still works (many chunks in flight).
    let rows = client
        .query("SELECT repeat('x', 1000) FROM generate_series(1, 2000)", &[])
        .expect("bulk rows through the proxy");
    assert_eq!(rows.len(), 2000);
}

#[test]
fn root_runs_servers_as_postgres() {
    let server = PgServer::shared();
    assert_eq!(one_plus_one(&mut server.admin_client()), 2);
    if !pg::is_root() {
        return;
    }
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("running id -u postgres");
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid of postgres");
    let meta = std::fs::metadata(server.data_dir()).expect("stat of the data dir");
    assert_eq!(meta.uid(), uid, "data dir not owned by postgres");
}

#[test]
fn daemon_child_is_killed_and_reaped() {
    let mut daemon = Daemon::spawn(&[], &Default::default());
    assert!(daemon.pid() > 0);
    let _ = daemon.wait_timeout(Duration::from_millis(200));
    let status = daemon.kill();
    assert!(daemon.wait_timeout(Duration::ZERO) == Some(status));
    let _ = (daemon.stdout_text(), daemon.stderr_text());
}

#[test]
fn proxy_connect_during_blackhole_completes_after_it() {
    let db = TestDb::create(PgServer::shared());
    let proxy = proxy_to(&db);
    proxy.set_blackhole(true);
    let config = db.config_via(pg::HOST, proxy.port());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(config.connect(NoTls).map(drop)));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "connected through a black hole"
    );
    proxy.set_blackhole(false);
    let connected = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("connect still hanging after the black hole");
    assert!(connected.is_ok(), "{connected:?}");
}
