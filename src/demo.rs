//! `sync-process demo`: the whole system on one machine, for a person to watch.
//!
//! Owns: starting two throwaway PostgreSQL servers (pgtemp.rs) for the local (edge) and remote (central)
//! databases, migrating both, seeding the remote with meters and tenants, a feeder thread that inserts a few
//! hundred local readings per second (values as NUMERIC text with varied scales, varied metadata including
//! SQL NULL and JSON null) and now and then changes a remote meter, a printer thread that prints a status line
//! every few seconds by querying both databases directly, and the clean-up (or, with `--keep`, the hand-over:
//! servers left running, an env file and the commands to connect and stop printed).
//!
//! Does not own: the sync itself. The real daemon loop, `scheduler::run_daemon`, runs on this thread with the
//! demo's configuration (a 2 s interval, status HTTP on a free loopback port, logs on stderr only) and owns
//! the signals: it returns on SIGINT/SIGTERM, and then the demo stops its threads and removes the servers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;

use crate::config::Config;
use crate::db::ConnectionManager;
use crate::error::{Error, Result};
use crate::pgtemp::{self, Options, PgTemp, HOST, USER};
use crate::shutdown::Shutdown;
use crate::{migrate, scheduler};

/// Database names, as in the design document's example configuration.
pub const LOCAL_DB: &str = "meterit_sync";
pub const REMOTE_DB: &str = "meterit_client";
/// Handed to the daemon, which insists on a password; the throwaway servers trust loopback connections.
const PASSWORD: &str = "demo-not-secret";
const METERS: u32 = 200;
const TENANTS: u32 = 20;
/// The feeder inserts this many readings every FEED_EVERY: about 300 per second.
const FEED_ROWS: usize = 30;
const FEED_EVERY: Duration = Duration::from_millis(100);
/// A remote meter is changed this often, so that downloads have something to report.
const CHANGE_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(3);
/// (meter_type, unit), picked by meter number modulo 4; the seed SQL below uses the same table.
const KINDS: [(&str, &str); 4] = [("electricity", "kWh"), ("water", "m3"), ("gas", "m3"), ("heat", "MWh")];

/// Runs the demo until SIGINT/SIGTERM; see the module docs.
pub fn run(keep: bool) -> Result<()> {
    // Until the scheduler takes the signals over, a Ctrl-C during set-up is only noted (the servers are then
    // removed by Drop instead of by their reapers a second later).
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .map_err(|e| Error::io("registering the demo's signal handler", e))?;
    }

    say("sync-process demo: starting two throwaway PostgreSQL servers...");
    let local = PgTemp::start("sync-process-demo-local", &Options::default())?;
    let remote = PgTemp::start("sync-process-demo-remote", &Options::default())?;
    local.create_database(LOCAL_DB)?;
    remote.create_database(REMOTE_DB)?;
    let status_port = pgtemp::free_port()?;
    let vars = variables(&local, &remote, status_port);
    let cfg = Config::from_map(&vars)?;
    {
        let conns = ConnectionManager::new(&cfg, Shutdown::new())?;
        migrate::migrate(&conns.local, false)?;
        migrate::migrate(&conns.remote, false)?;
    }
    seed_remote(&remote)?;
    // The variables for other commands against the demo (status, quarantine, check-config, run); 0600.
    let env_file = local.data_dir().join(ENV_FILE_NAME);
    let env_note = match write_env_file(&env_file, &vars) {
        Ok(()) => format!(
            "Other commands against this demo, in another terminal while it runs:\n      \
             sync-process status --url http://{HOST}:{status_port}\n      \
             sync-process --env-file {f} quarantine list\n      \
             sync-process --env-file {f} check-config\n      \
             sync-process --env-file {f} mcp            (an MCP server on stdin/stdout, read-only)\n\
             ({f} holds the demo's variables; paste it into your own env file to try others.)\n",
            f = env_file.display()
        ),
        Err(e) => format!("(could not write the demo's env file: {e})\n"),
    };
    print_banner(&local, &remote, status_port, &env_note);

    let result = if interrupted.load(Ordering::SeqCst) {
        say("interrupted during set-up: not starting the sync loop");
        Ok(())
    } else {
        let stop = Shutdown::new();
        let fed = Arc::new(AtomicU64::new(0));
        let threads = [
            spawn("demo-feeder", {
                let (local, remote) = (local.config(LOCAL_DB), remote.config(REMOTE_DB));
                let (stop, fed) = (stop.clone(), Arc::clone(&fed));
                move || feed(local, remote, &stop, &fed)
            })?,
            spawn("demo-printer", {
                let (local, remote) = (local.config(LOCAL_DB), remote.config(REMOTE_DB));
                let (stop, fed) = (stop.clone(), Arc::clone(&fed));
                move || print_status_lines(local, remote, &stop, &fed)
            })?,
        ];
        let result = scheduler::run_daemon(&cfg);
        stop.request();
        for t in threads {
            let _ = t.join();
        }
        result
    };

    if keep {
        hand_over(local, remote, &vars);
    } else {
        let dirs = [local.data_dir().to_path_buf(), remote.data_dir().to_path_buf()];
        drop(local);
        drop(remote);
        say(&format!(
            "stopped both servers and removed {} and {}",
            dirs[0].display(),
            dirs[1].display()
        ));
    }
    result
}

/// Prints a line on stdout; a closed stdout is not an error worth dying for.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))
}

/// The daemon's configuration for the two servers, as the variables of the contract.
fn variables(local: &PgTemp, remote: &PgTemp, status_port: u16) -> BTreeMap<String, String> {
    let (local_port, remote_port) = (local.port().to_string(), remote.port().to_string());
    let status_bind = format!("{HOST}:{status_port}");
    [
        ("POSTGRES_SYNC_HOST", HOST),
        ("POSTGRES_SYNC_PORT", &local_port),
        ("POSTGRES_SYNC_DB", LOCAL_DB),
        ("POSTGRES_SYNC_USER", USER),
        ("POSTGRES_SYNC_PASSWORD", PASSWORD),
        ("POSTGRES_SYNC_SSLMODE", "disable"),
        ("POSTGRES_CLIENT_HOST", HOST),
        ("POSTGRES_CLIENT_PORT", &remote_port),
        ("POSTGRES_CLIENT_DB", REMOTE_DB),
        ("POSTGRES_CLIENT_USER", USER),
        ("POSTGRES_CLIENT_PASSWORD", PASSWORD),
        ("POSTGRES_CLIENT_SSLMODE", "disable"),
        ("SYNC_INTERVAL_SECONDS", "2"),
        ("RETRY_BASE_DELAY_MS", "500"),
        ("DB_POOL_MAX", "4"),
        ("STATUS_BIND", &status_bind),
        ("LOG_FILE", ""),
        ("LOG_LEVEL", "info"),
        ("SYNC_SOURCE_ID", "demo"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The demo's env file, in the local server's data dir (removed with it, kept with `--keep`).
const ENV_FILE_NAME: &str = "sync-process-demo.env";

fn print_banner(local: &PgTemp, remote: &PgTemp, status_port: u16, env_note: &str) {
    let server = |what: &str, s: &PgTemp, db: &str| {
        format!(
            "  {what} {HOST}:{} database {db}\n      data dir {}",
            s.port(),
            s.data_dir().display()
        )
    };
    say(&format!(
        "\nDashboard: http://{HOST}:{status_port}/   (open it in a browser; over ssh: ssh -L {status_port}:{HOST}:{status_port} <box>)\n\
         sync-process demo is running\n\
         {}\n{}\n\
         Connect (no password needed):\n      {}\n      {}\n\
         Status: http://{HOST}:{status_port}/status   (also /history, /metrics and /healthz)\n\
         {env_note}\
         The remote holds {METERS} meters and {TENANTS} tenants; about {} readings per second go into the local\n\
         queue; the daemon syncs every 2 s (its log is on stderr). Ctrl-C stops it and removes both servers.\n",
        server("local  (edge box, POSTGRES_SYNC_*):     ", local, LOCAL_DB),
        server("remote (central, POSTGRES_CLIENT_*):    ", remote, REMOTE_DB),
        local.psql_command(LOCAL_DB),
        remote.psql_command(REMOTE_DB),
        FEED_ROWS as u64 * 1000 / FEED_EVERY.as_millis() as u64,
    ));
}

/// `--keep`: leaves both servers running, writes an env file for `sync-process run` against them, and says
/// how to connect and how to stop them.
fn hand_over(local: PgTemp, remote: PgTemp, vars: &BTreeMap<String, String>) {
    let (psql_local, psql_remote) = (local.psql_command(LOCAL_DB), remote.psql_command(REMOTE_DB));
    let (stop_local, stop_remote) = (local.stop_command(), remote.stop_command());
    let local_dir = local.keep();
    let remote_dir = remote.keep();
    let env_file = local_dir.join(ENV_FILE_NAME);
    let run_hint = match write_env_file(&env_file, vars) {
        Ok(()) => format!(
            "  run the daemon against them: sync-process --env-file {} run\n",
            env_file.display()
        ),
        Err(e) => format!("  (could not write an env file for `sync-process run`: {e})\n"),
    };
    say(&format!(
        "\nkept both servers running (--keep):\n  connect:  {psql_local}\n            {psql_remote}\n{run_hint}\
         \x20 stop and remove them:\n    {stop_local} && rm -rf {}\n    {stop_remote} && rm -rf {}",
        pgtemp::sh_quote(&local_dir.to_string_lossy()),
        pgtemp::sh_quote(&remote_dir.to_string_lossy()),
    ));
}

fn write_env_file(path: &PathBuf, vars: &BTreeMap<String, String>) -> Result<()> {
    let mut text = String::from("# written by `sync-process demo`: the demo's two throwaway servers\n");
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod 600 {}", path.display()), e))
}

/// Seeds the remote with meters and tenants (idempotent).
fn seed_remote(remote: &PgTemp) -> Result<()> {
    let kinds: Vec<&str> = KINDS.iter().map(|(kind, _)| *kind).collect();
    let units: Vec<&str> = KINDS.iter().map(|(_, unit)| *unit).collect();
    let sql = format!(
        "INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
         SELECT format('T-%s', lpad(i::text, 3, '0')), format('Tenant %s', i),
                jsonb_build_object('billing_day', 1 + i % 28, 'currency', 'EUR'),
                CASE WHEN i % 5 = 0 THEN NULL ELSE jsonb_build_object('floor', i % 7) END,
                localtimestamp
         FROM generate_series(1, {TENANTS}) AS i
         ON CONFLICT (tenant_id) DO NOTHING;
         INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
         SELECT format('M-%s', lpad(i::text, 4, '0')), format('Meter %s', i),
                CASE WHEN i % 10 = 0 THEN NULL ELSE format('LOC-%s', lpad((1 + i % 40)::text, 3, '0')) END,
                (ARRAY['{}'])[1 + i % 4], (ARRAY['{}'])[1 + i % 4],
                jsonb_build_object('tenant_id', format('T-%s', lpad((1 + i % {TENANTS})::text, 3, '0')),
                                   'interval_s', 60),
                localtimestamp
         FROM generate_series(1, {METERS}) AS i
         ON CONFLICT (meter_id) DO NOTHING;",
        kinds.join("','"),
        units.join("','"),
    );
    remote.connect(REMOTE_DB)?.batch_execute(&sql).map_err(|e| {
        Error::Other(format!(
            "seeding the remote database {HOST}:{}/{REMOTE_DB}: {e}",
            remote.port()
        ))
    })
}

/// xorshift64*: enough randomness for demo data, no crate needed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One made-up reading: (meter_id, value as NUMERIC text, unit, metadata as JSON text or SQL NULL).
fn reading(rng: &mut Rng) -> (String, String, String, Option<String>) {
    let meter = 1 + rng.below(u64::from(METERS)) as usize;
    let unit = KINDS[meter % 4].1;
    // Scales 0..=4, trailing zeros kept (1.50 stays 1.50); now and then negative (energy fed back).
    let scale = rng.below(5) as usize;
    let whole = rng.below(100_000) as i64 * if rng.below(20) == 0 { -1 } else { 1 };
    let value = if scale == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{:0scale$}", rng.below(10u64.pow(scale as u32)))
    };
    let metadata = match rng.below(6) {
        0 => None,
        1 => Some("null".to_string()),
        2 => Some(r#"{"quality": "good"}"#.to_string()),
        3 => Some(format!(
            r#"{{"quality": "estimated", "source": "modbus", "register": {}}}"#,
            40001 + meter
        )),
        4 => Some(r#"{"tags": ["demo", "ünïcödé ✓"], "note": "line\nbreak"}"#.to_string()),
        _ => Some(format!(
            r#"{{"radio": {{"rssi": -{}, "battery": 3.{:02}}}}}"#,
            40 + rng.below(60),
            rng.below(100)
        )),
    };
    (format!("M-{meter:04}"), value, unit.to_string(), metadata)
}

const INSERT_READINGS: &str = "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
    SELECT m, clock_timestamp()::timestamp, v::numeric, u, md::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(m, v, u, md)";

const CHANGE_METER: &str = "UPDATE meters
    SET configuration = coalesce(configuration, '{}'::jsonb) || jsonb_build_object('interval_s', $2::int),
        updated_at = localtimestamp
    WHERE meter_id = $1";

/// The feeder thread: FEED_ROWS local readings every FEED_EVERY, and a remote meter change every CHANGE_EVERY,
/// until `stop`. Connection failures are reported and retried; they never end the demo.
fn feed(local: postgres::Config, remote: postgres::Config, stop: &Shutdown, fed: &AtomicU64) {
    let mut rng = Rng::new();
    let mut local_client: Option<Client> = None;
    let mut last_change = Instant::now();
    let mut last_complaint: Option<Instant> = None;
    while !stop.sleep(FEED_EVERY) {
        let rows: Vec<_> = (0..FEED_ROWS).map(|_| reading(&mut rng)).collect();
        let (mut m, mut v, mut u, mut md) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (meter, value, unit, metadata) in rows {
            m.push(meter);
            v.push(value);
            u.push(unit);
            md.push(metadata);
        }
        let outcome = connected(&mut local_client, &local).and_then(|c| {
            c.execute(INSERT_READINGS, &[&m, &v, &u, &md])
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(n) => {
                fed.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                local_client = None;
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    say(&format!("feeder: inserting local readings failed (will retry): {e}"));
                    last_complaint = Some(Instant::now());
                }
            }
        }
        if last_change.elapsed() >= CHANGE_EVERY {
            last_change = Instant::now();
            let meter = format!("M-{:04}", 1 + rng.below(u64::from(METERS)));
            let interval = [15, 30, 60, 300][rng.below(4) as usize];
            // One short-lived connection every 10 s; a failure is only reported.
            if let Err(e) = remote
                .connect(postgres::NoTls)
                .and_then(|mut c| c.execute(CHANGE_METER, &[&meter, &interval]))
            {
                say(&format!("feeder: changing remote meter {meter} failed: {e}"));
            }
        }
    }
}

/// The client in `slot`, connecting first if there is none.
fn connected<'a>(
    slot: &'a mut Option<Client>,
    config: &postgres::Config,
) -> std::result::Result<&'a mut Client, String> {
    if slot.is_none() {
        let mut config = config.clone();
        config.connect_timeout(Duration::from_secs(2));
        *slot = Some(config.connect(postgres::NoTls).map_err(|e| e.to_string())?);
    }
    slot.as_mut().ok_or_else(|| "no connection".to_string())
}

const COUNTS: &str =
    "SELECT (SELECT count(*) FROM meter_readings), (SELECT count(*) FROM meters), (SELECT count(*) FROM tenant)";

/// (readings, meters, tenants) of one database, or what went wrong.
fn counts(slot: &mut Option<Client>, config: &postgres::Config) -> std::result::Result<[i64; 3], String> {
    let result = connected(slot, config).and_then(|c| c.query_one(COUNTS, &[]).map_err(|e| e.to_string()));
    match result {
        Ok(row) => Ok([row.get(0), row.get(1), row.get(2)]),
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

/// The printer thread: a status line every STATUS_EVERY until `stop`, and a last one after it.
fn print_status_lines(local: postgres::Config, remote: postgres::Config, stop: &Shutdown, fed: &AtomicU64) {
    let started = Instant::now();
    let (mut local_client, mut remote_client) = (None, None);
    loop {
        let stopping = stop.sleep(STATUS_EVERY);
        let line = match (counts(&mut local_client, &local), counts(&mut remote_client, &remote)) {
            (Ok(l), Ok(r)) => status_line(started.elapsed(), fed.load(Ordering::Relaxed), l, r),
            (Err(e), _) => format!("[demo {:>4}s] local database: {e}", started.elapsed().as_secs()),
            (_, Err(e)) => format!("[demo {:>4}s] remote database: {e}", started.elapsed().as_secs()),
        };
        say(&line);
        if stopping {
            return;
        }
    }
}

/// `[demo   12s] fed 3600 | local queue 120 | uploaded (remote readings) 3480 | meters local/remote 200/200 |
/// tenants local/remote 20/20`
pub fn status_line(elapsed: Duration, fed: u64, local: [i64; 3], remote: [i64; 3]) -> String {
    format!(
        "[demo {:>4}s] fed {fed} | local queue {} | uploaded (remote readings) {} | meters local/remote {}/{} | \
         tenants local/remote {}/{}",
        elapsed.as_secs(),
        local[0],
        remote[0],
        local[1],
        remote[1],
        local[2],
        remote[2],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_have_exact_numeric_text_and_varied_metadata() {
        let mut rng = Rng(42);
        let mut saw_null = false;
        let mut saw_json_null = false;
        for _ in 0..2000 {
            let (meter, value, unit, metadata) = reading(&mut rng);
            let n: usize = meter[2..].parse().expect("meter number");
            assert!((1..=METERS as usize).contains(&n));
            assert_eq!(unit, KINDS[n % 4].1);
            let digits = value.trim_start_matches('-');
            assert!(digits.chars().all(|c| c.is_ascii_digit() || c == '.'), "{value}");
            assert!(digits.split('.').nth(1).map_or(0, str::len) <= 4, "{value}");
            saw_null |= metadata.is_none();
            saw_json_null |= metadata.as_deref() == Some("null");
            if let Some(m) = metadata {
                serde_json::from_str::<serde_json::Value>(&m).expect("metadata is JSON");
            }
        }
        assert!(saw_null && saw_json_null);
    }

    #[test]
    fn status_line_names_the_uploaded_count() {
        let line = status_line(Duration::from_secs(7), 10, [3, 200, 20], [7, 200, 20]);
        assert!(line.contains("uploaded (remote readings) 7"), "{line}");
        assert!(line.contains("local queue 3"), "{line}");
    }
}
