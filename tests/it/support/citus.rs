//! A real Citus cluster as the central database: a coordinator and two workers, each a throwaway
//! PostgreSQL 15 from `sync_process::pgtemp` with `shared_preload_libraries = 'citus'`.
//!
//! Owns: starting the cluster once per test binary ([`CitusCluster::shared`]); a fresh database on all three
//! nodes with the citus extension and the nodes registered (paired with a local
//! database on [`PgServer::shared`], [`citus_pair`]); and the two central layouts of the README's "At fleet scale" section
//! ([`Layout`], [`apply_layout`]), applied after `migrate` as an operator would. Does not own: the daemon,
//! readings (readings.rs). Citus itself is built by `../shared/vendor/citus/build.sh` (run by `.ci/run`); a
//! missing build fails the test with one line saying so.

use std::sync::OnceLock;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::pg::{DbPair, PgServer, ServerOptions, TestDb, HOST};

/// The column of the remote meter_readings that receives SYNC_SOURCE_ID in [`Layout::BySite`]
/// (UPLOAD_SOURCE_COLUMN), as sql/citus/by-site.sql names it: not the ledger's `source_id`, so the daemon
/// must use the setting.
pub const SITE_COLUMN: &str = "site_id";

/// How the central's tables are spread over the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// (a) meter_readings distributed by meter_id; ledger, chain, meters and tenant are reference tables.
    ByMeter,
    /// (b) co-located by site: meter_readings carry [`SITE_COLUMN`] and are distributed by it, co-located
    /// with the ledger and the chain (distributed by source_id); meters and tenant are reference tables.
    BySite,
}

/// Coordinator and two workers, stopped and deleted on drop (the shared one by its reapers).
pub struct CitusCluster {
    pub coordinator: PgServer,
    pub workers: [PgServer; 2],
}

impl CitusCluster {
    /// The cluster shared by every Citus test of this binary (about 5 s to start).
    pub fn shared() -> &'static CitusCluster {
        static SHARED: OnceLock<CitusCluster> = OnceLock::new();
        SHARED.get_or_init(CitusCluster::start)
    }

    fn start() -> CitusCluster {
        let lib = super::pg::bin_dir().parent().map(|d| d.join("lib").join("citus.so"));
        if !lib.as_ref().is_some_and(|p| p.is_file()) {
            panic!(
                "Citus is not installed ({} missing): run ../shared/vendor/citus/build.sh (as .ci/run does)",
                lib.map_or_else(|| "citus.so".to_string(), |p| p.display().to_string())
            );
        }
        let opts = || ServerOptions {
            extra_conf: vec![
                "shared_preload_libraries = 'citus'".into(),
                "max_connections = 120".into(),
                "max_prepared_transactions = 120".into(),
                // One cached connection per worker and session is Citus's default; keep idle ones short.
                "citus.node_connection_timeout = 10000".into(),
            ],
            ..Default::default()
        };
        let (coordinator, w1, w2) = std::thread::scope(|s| {
            let c = s.spawn(|| PgServer::start_with(opts()));
            let a = s.spawn(|| PgServer::start_with(opts()));
            let b = s.spawn(|| PgServer::start_with(opts()));
            let join = |h: std::thread::ScopedJoinHandle<'_, PgServer>| h.join().expect("starting a Citus node");
            (join(c), join(a), join(b))
        });
        CitusCluster {
            coordinator,
            workers: [w1, w2],
        }
    }
}

/// The workers' copies of a Citus database, dropped on drop (drop it after the pair's [`DbPair`]).
pub struct CitusWorkers {
    workers: Vec<(u16, String)>,
}

/// A database pair whose remote is a fresh Citus database (same name on the three nodes, extension created,
/// coordinator and workers registered), its local on [`PgServer::shared`], and the workers' copies.
pub fn citus_pair() -> (DbPair, CitusWorkers) {
    {
        let cluster = CitusCluster::shared();
        let remote = TestDb::create(&cluster.coordinator);
        let name = remote.name().to_string();
        let mut workers = Vec::new();
        for w in &cluster.workers {
            w.admin_client()
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on Citus worker port {}: {e}", w.port()));
            workers.push((w.port(), name.clone()));
            connect(w.port(), &name)
                .batch_execute("CREATE EXTENSION citus")
                .unwrap_or_else(|e| panic!("CREATE EXTENSION citus on worker port {}: {e}", w.port()));
        }
        let mut c = remote.client();
        c.batch_execute("CREATE EXTENSION citus")
            .unwrap_or_else(|e| panic!("CREATE EXTENSION citus on the coordinator: {e}"));
        c.execute(
            "SELECT citus_set_coordinator_host($1, $2)",
            &[&HOST, &i32::from(cluster.coordinator.port())],
        )
        .unwrap_or_else(|e| panic!("citus_set_coordinator_host: {e}"));
        for w in &cluster.workers {
            c.execute("SELECT citus_add_node($1, $2)", &[&HOST, &i32::from(w.port())])
                .unwrap_or_else(|e| panic!("citus_add_node({HOST}, {}): {e}", w.port()));
        }
        let local = TestDb::create(PgServer::shared());
        (DbPair { local, remote }, CitusWorkers { workers })
    }
}

impl Drop for CitusWorkers {
    fn drop(&mut self) {
        for (port, name) in &self.workers {
            let mut config = sync_process::pgtemp::client_config(HOST, *port, "postgres");
            config.connect_timeout(Duration::from_secs(2));
            if let Ok(mut admin) = config.connect(NoTls) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

fn connect(port: u16, db: &str) -> Client {
    sync_process::pgtemp::client_config(HOST, port, db)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connecting to {db} on Citus node port {port}: {e}"))
}

/// The operator's scripts for the two layouts (README.md, "At fleet scale").
pub const BY_METER_SQL: &str = include_str!("../../../sql/citus/by-meter.sql");
pub const BY_SITE_SQL: &str = include_str!("../../../sql/citus/by-site.sql");

/// Distributes a migrated central database (superuser connection to the coordinator) as `layout` with the
/// operator's script (sql/citus/), and sets `citus.multi_shard_modify_mode = 'sequential'` as the README
/// tells operators to (here for the whole database rather than the daemon's role).
pub fn apply_layout(c: &mut Client, layout: Layout) {
    let script = match layout {
        Layout::ByMeter => BY_METER_SQL,
        Layout::BySite => BY_SITE_SQL,
    };
    c.batch_execute(script)
        .unwrap_or_else(|e| panic!("distributing the central as {layout:?}: {e}"));
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("current_database(): {e}"));
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET citus.multi_shard_modify_mode = 'sequential'"
    ))
    .unwrap_or_else(|e| panic!("setting citus.multi_shard_modify_mode: {e}"));
}

/// Names of the Citus distributed tables of the database, with their kind (`distributed`/`reference`).
pub fn table_kinds(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT table_name::text, citus_table_type FROM citus_tables ORDER BY 1",
        &[],
    )
    .unwrap_or_else(|e| panic!("reading citus_tables: {e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
