//! `cargo bench --bench download`: one download cycle (meters, then tenants) with 100,000 meters and 10,000
//! tenants on the remote, on two throwaway servers, the remote reached through a byte-counting relay: the
//! cycle's time and the bytes the remote sends, when nothing changed and when 1% changed (BENCHMARKS.md,
//! "Download").
//!
//! The cycle runs in-process through the library (`DownloadSyncManager`, pooled connections already open, as
//! in a running daemon); one `sync-process once` through the same relay is measured too (process start and
//! connects included). The first download (local tables empty, every row new) is run by `sync-process once`
//! twice, for its peak RSS (VmHWM polled from /proc): with MALLOC_ARENA_MAX=2 as the systemd unit sets it
//! (`Servers::env`), and with glibc's default malloc arenas (the local tables are emptied in between).
//! ROUNDS (5) sets how many "nothing changed" cycles are timed; METERS and TENANTS (100000, 10000) the sizes
//! (e.g. METERS=200000 to see that the first download's peak does not grow with the rows beyond the keys).
//! Does not own: the download (src/download.rs).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{thousands, Report, Servers, Verdict};
use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::download::DownloadSyncManager;
use sync_process::shutdown::Shutdown as DaemonShutdown;

/// The first download's peak RSS target: the systemd unit's MemoryMax before the first download needed more.
const FIRST_DOWNLOAD_RSS_TARGET_KB: u64 = 64 * 1024;

fn main() {
    let rounds = common::env_or("ROUNDS", 5usize).max(1);
    let meters: i64 = common::env_or("METERS", 100_000i64).max(100);
    let tenants: i64 = common::env_or("TENANTS", 10_000i64).max(100);
    let started = Instant::now();
    println!("download bench: starting two throwaway PostgreSQL servers ...");
    let servers = Servers::start();
    let mut local = servers.local_client();
    let mut remote = servers.remote_client();
    let machine = common::machine(&mut local);
    println!("{machine}");
    let t0 = Instant::now();
    remote
        .batch_execute(&format!(
            "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
             SELECT 'meter-' || g, 'Meter number ' || g, 'loc-' || (g % 100), 'electric', 'kWh',
                    jsonb_build_object('interval', 60, 'multiplier', g % 7, 'tags', jsonb_build_array('a', 'b')),
                    timestamp '2024-01-01' + g * interval '1 second'
             FROM generate_series(1, {meters}) g;
             INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
             SELECT 'tenant-' || g, 'Tenant ' || g, '{{\"plan\": \"basic\", \"limits\": {{\"meters\": 100}}}}',
                    jsonb_build_object('contact', 'ops' || g || '@example.com'), timestamp '2024-01-01'
             FROM generate_series(1, {tenants}) g;"
        ))
        .expect("seeding the remote");
    remote.batch_execute("VACUUM ANALYZE meters").expect("vacuum");
    remote.batch_execute("VACUUM ANALYZE tenant").expect("vacuum");
    println!(
        "  seeded {} meters and {} tenants in {:.1} s",
        thousands(meters as f64),
        thousands(tenants as f64),
        t0.elapsed().as_secs_f64()
    );

    let relay = Relay::start(servers.remote.port());
    // The first download (all new) by the binary, for its memory: `once` with both tables empty locally.
    let first = common::spawn(&["once"], &servers.env(relay.port, 100)).wait();
    let (first_from, first_to) = relay.take();
    assert_eq!(first.code, Some(0), "first once failed:\n{}", first.stderr_tail);
    println!(
        "  first download by `once` (all new): {:.0} ms wall, remote sent {} B, peak RSS (VmHWM) {} kB, RssAnon {} kB",
        first.wall.as_secs_f64() * 1e3,
        first_from,
        first.peaks.vm_hwm_kb,
        first.peaks.rss_anon_kb
    );
    let local_meters: i64 = local
        .query_one("SELECT count(*) FROM meters", &[])
        .expect("count")
        .get(0);
    assert_eq!(local_meters, meters, "the first `once` did not download every meter");
    // Again into empty local tables, with glibc's default malloc arenas (one per thread that allocates).
    local
        .batch_execute("TRUNCATE meters, tenant")
        .expect("emptying the local tables");
    let mut env = servers.env(relay.port, 100);
    env.remove("MALLOC_ARENA_MAX");
    let first2 = common::spawn(&["once"], &env).wait();
    relay.take();
    assert_eq!(
        first2.code,
        Some(0),
        "second first once failed:\n{}",
        first2.stderr_tail
    );
    println!(
        "  first download by `once` again, default malloc arenas: {:.0} ms wall, peak RSS (VmHWM) {} kB, RssAnon {} kB",
        first2.wall.as_secs_f64() * 1e3,
        first2.peaks.vm_hwm_kb,
        first2.peaks.rss_anon_kb
    );
    let local_meters: i64 = local
        .query_one("SELECT count(*) FROM meters", &[])
        .expect("count")
        .get(0);
    assert_eq!(
        local_meters, meters,
        "the second first `once` did not download every meter"
    );
    let cfg = Config::from_map(&servers.env(relay.port, 100)).expect("configuration");
    let conns = ConnectionManager::new(&cfg, DaemonShutdown::new()).expect("connection manager");
    let manager = DownloadSyncManager::new(&conns, &cfg);
    let cycle = |label: &str| -> Cycle {
        relay.take();
        let t0 = Instant::now();
        let m = manager.sync_meter_configurations();
        let meters_time = t0.elapsed();
        let (meters_bytes, meters_up) = relay.take();
        let t1 = Instant::now();
        let t = manager.sync_tenant_data();
        let tenants_time = t1.elapsed();
        let (tenants_bytes, tenants_up) = relay.take();
        assert!(m.success && t.success, "download failed: {:?} / {:?}", m.error, t.error);
        let c = Cycle {
            time: meters_time + tenants_time,
            from_remote: meters_bytes + tenants_bytes,
            to_remote: meters_up + tenants_up,
            changed: (
                m.new_meters + m.updated_meters + m.deleted_meters,
                t.new_tenants + t.updated_tenants + t.deleted_tenants,
            ),
        };
        println!(
            "  {label:<26} meters {:>7.1} ms {:>10} B | tenants {:>6.1} ms {:>9} B | cycle {:>7.1} ms, remote sent {} B, \
             client sent {} B; changed meters {} tenants {}",
            meters_time.as_secs_f64() * 1e3,
            meters_bytes,
            tenants_time.as_secs_f64() * 1e3,
            tenants_bytes,
            c.time.as_secs_f64() * 1e3,
            c.from_remote,
            c.to_remote,
            c.changed.0,
            c.changed.1
        );
        c
    };

    cycle("warm-up (pool connects)");
    local.batch_execute("VACUUM ANALYZE meters").expect("vacuum");
    local.batch_execute("VACUUM ANALYZE tenant").expect("vacuum");
    let mut unchanged: Vec<Cycle> = (1..=rounds).map(|i| cycle(&format!("nothing changed #{i}"))).collect();
    remote
        .batch_execute(
            "UPDATE meters SET configuration = configuration || '{\"v\": 2}' WHERE (substr(meter_id, 7)::int % 100) = 0;
             UPDATE tenant SET name = name || '!' WHERE (substr(tenant_id, 8)::int % 100) = 0;",
        )
        .expect("changing 1%");
    let changed = cycle("1% changed");
    assert_eq!(
        changed.changed,
        (meters as u64 / 100, tenants as u64 / 100),
        "1% changed"
    );
    let after = cycle("nothing changed after");
    assert_eq!(after.changed, (0, 0));
    unchanged.push(after);
    let equal: bool = {
        let q = "SELECT md5(string_agg(m::text, ',' ORDER BY meter_id)) FROM (SELECT meter_id, name, location_id, \
                 meter_type, unit, configuration, updated_at FROM meters) m";
        let a: Option<String> = local.query_one(q, &[]).expect("digest").get(0);
        let b: Option<String> = remote.query_one(q, &[]).expect("digest").get(0);
        a == b
    };
    assert!(equal, "local meters differ from the remote ones after the download");

    // The whole `once` (process start, connects, empty upload, the download, sync_logs) through the relay.
    relay.take();
    let f = common::spawn(&["once"], &servers.env(relay.port, 100)).wait();
    let (once_from, once_to) = relay.take();
    assert_eq!(f.code, Some(0), "once failed:\n{}", f.stderr_tail);

    let report = Report::default();
    unchanged.sort_by_key(|c| c.time);
    let med = &unchanged[unchanged.len() / 2];
    let worst = unchanged.last().expect("a cycle");
    let max_bytes = unchanged.iter().map(|c| c.from_remote).max().unwrap_or(0);
    report.row(
        &format!(
            "{} meters + {} tenants, nothing changed: one download cycle, loopback",
            thousands(meters as f64),
            thousands(tenants as f64)
        ),
        "≤ 300 ms",
        format!(
            "{:.0} ms median of {} (slowest {:.0} ms)",
            med.time.as_secs_f64() * 1e3,
            unchanged.len(),
            worst.time.as_secs_f64() * 1e3
        ),
        format!("{:.2} × target", med.time.as_secs_f64() * 1e3 / 300.0),
        Verdict::of(med.time <= Duration::from_millis(300)),
    );
    report.row(
        "same: bytes sent by the remote",
        "≤ 1 MB",
        format!(
            "{} B (client sent {} B)",
            thousands(max_bytes as f64),
            thousands(med.to_remote as f64)
        ),
        format!("{:.3} × target", max_bytes as f64 / 1_048_576.0),
        Verdict::of(max_bytes <= 1_048_576),
    );
    report.row(
        "same, 1% changed (1,000 meters, 100 tenants updated)",
        "-",
        format!(
            "{:.0} ms, remote sent {} B",
            changed.time.as_secs_f64() * 1e3,
            thousands(changed.from_remote as f64)
        ),
        "-".into(),
        Verdict::Info,
    );
    report.row(
        &format!(
            "first download into empty local tables ({} + {} inserted) by `sync-process once`: peak RSS \
             (MALLOC_ARENA_MAX=2, as the systemd unit)",
            thousands(meters as f64),
            thousands(tenants as f64)
        ),
        "≤ 64 MB",
        format!(
            "{} kB (VmHWM), RssAnon {} kB; {:.0} ms wall, remote sent {} B, client sent {} B",
            thousands(first.peaks.vm_hwm_kb as f64),
            thousands(first.peaks.rss_anon_kb as f64),
            first.wall.as_secs_f64() * 1e3,
            thousands(first_from as f64),
            thousands(first_to as f64)
        ),
        format!(
            "{:.2} × target",
            first.peaks.vm_hwm_kb as f64 / FIRST_DOWNLOAD_RSS_TARGET_KB as f64
        ),
        Verdict::of(first.peaks.vm_hwm_kb <= FIRST_DOWNLOAD_RSS_TARGET_KB),
    );
    report.row(
        "same, glibc's default malloc arenas",
        "≤ 64 MB",
        format!(
            "{} kB (VmHWM), RssAnon {} kB; {:.0} ms wall",
            thousands(first2.peaks.vm_hwm_kb as f64),
            thousands(first2.peaks.rss_anon_kb as f64),
            first2.wall.as_secs_f64() * 1e3
        ),
        format!(
            "{:.2} × target",
            first2.peaks.vm_hwm_kb as f64 / FIRST_DOWNLOAD_RSS_TARGET_KB as f64
        ),
        Verdict::of(first2.peaks.vm_hwm_kb <= FIRST_DOWNLOAD_RSS_TARGET_KB),
    );
    report.row(
        "`sync-process once`, nothing changed, empty queue (process start + connects + cycle)",
        "-",
        format!(
            "{:.0} ms wall, remote sent {} B, client sent {} B; peak RSS {} kB (VmHWM), RssAnon {} kB",
            f.wall.as_secs_f64() * 1e3,
            thousands(once_from as f64),
            thousands(once_to as f64),
            f.peaks.vm_hwm_kb,
            f.peaks.rss_anon_kb
        ),
        "-".into(),
        Verdict::Info,
    );
    for (what, run) in [("nothing changed", &f), ("first download", &first)] {
        let groups: Vec<String> = run
            .peaks
            .smaps
            .iter()
            .take(8)
            .map(|(g, kb)| format!("{g} {kb} kB"))
            .collect();
        report.note(format!(
            "`once` ({what}) RSS by mapping near its peak: {}",
            groups.join(", ")
        ));
    }
    let times: Vec<String> = unchanged
        .iter()
        .map(|c| format!("{:.0}", c.time.as_secs_f64() * 1e3))
        .collect();
    report.note(format!("nothing-changed cycles, sorted (ms): {}", times.join(", ")));
    report.print("Download: results");
    println!("\n{machine}");
    println!(
        "Command: `cargo bench --bench download` (ROUNDS={rounds}); took {:.0} s.",
        started.elapsed().as_secs_f64()
    );
}

struct Cycle {
    time: Duration,
    from_remote: u64,
    to_remote: u64,
    /// (meters, tenants) inserted + updated + deleted.
    changed: (u64, u64),
}

/// A plain TCP relay on a free 127.0.0.1 port to the remote server, counting the bytes each way.
struct Relay {
    port: u16,
    from_server: Arc<AtomicU64>,
    to_server: Arc<AtomicU64>,
}

impl Relay {
    fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("relay: bind");
        let port = listener.local_addr().expect("relay: local_addr").port();
        let (from_server, to_server) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (fs, ts) = (from_server.clone(), to_server.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pump(c2, s2, ts.clone());
                pump(server, client, fs.clone());
            }
        });
        Relay {
            port,
            from_server,
            to_server,
        }
    }

    /// (bytes from the server, bytes to the server) since the last call.
    fn take(&self) -> (u64, u64) {
        (
            self.from_server.swap(0, Ordering::SeqCst),
            self.to_server.swap(0, Ordering::SeqCst),
        )
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
