//! Per-site roles with row-level security on the central (sql/per-site-remote-roles.sql): two sites, each with
//! its own role, against one central database. Each sees and deletes only its own ledger rows, cannot forge
//! the other's source id, runs its whole cycle exactly once, and revoking one role stops only that site.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use postgres::Client;
use serde_json::Value;
use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::migrate;
use sync_process::shutdown::Shutdown;

use super::*;
use crate::support::env::once_json;
use crate::support::pg::{env_map_for, psql_script, TestDb};
use crate::support::proxy::FaultProxy;

const PER_SITE_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/per-site-remote-roles.sql");

/// One site: its own local database, its own central role (password auth) mapped to its source id.
pub(super) struct Site {
    pub(super) local: TestDb,
    pub(super) role: String,
    pub(super) password: String,
    pub(super) source_id: String,
    pub(super) env: BTreeMap<String, String>,
}

impl Site {
    /// A migrated local database with `readings` queued readings, and the site's role on `central` made by the
    /// per-site script.
    pub(super) fn new(central: &TestDb, name: &str, readings: u32) -> Site {
        let s = fleet_server();
        let local = TestDb::create(&s.pg);
        let role = unique_role(&format!("site_{name}"));
        let password = format!("site-{name}-Pw-3d9a");
        let source_id = format!("{name}-{}", std::process::id());
        let admin = env_map_for(&local, central.name(), HOST, central.port());
        let cfg = Config::from_map(&admin).expect("admin configuration");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
        migrate::migrate(&conns.local, false).expect("migrating local");
        let printed = psql_script(
            central,
            PER_SITE_SQL,
            &[("role", &role), ("source_id", &source_id), ("password", &password)],
        );
        assert!(!printed.contains(&password), "psql printed the password:\n{printed}");
        central
            .client()
            .batch_execute(&format!("GRANT {SCRAM_GROUP} TO {role}"))
            .expect("password authentication for the role");
        let mut env = admin;
        for (k, v) in [
            ("POSTGRES_CLIENT_USER", role.as_str()),
            ("POSTGRES_CLIENT_PASSWORD", password.as_str()),
            ("SYNC_SOURCE_ID", source_id.as_str()),
            ("DB_CONNECTION_TIMEOUT_MS", "8000"),
            ("MAX_CONNECTION_RETRIES", "0"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        let site = Site {
            local,
            role,
            password,
            source_id,
            env,
        };
        site.queue(readings, 0);
        site
    }

    /// Queues `n` readings, their timestamps `offset` minutes on from the first.
    pub(super) fn queue(&self, n: u32, offset: u32) {
        self.local
            .client()
            .execute(
                "INSERT INTO meter_readings (meter_id, timestamp, value, unit)
                 SELECT 'm-' || g, timestamp '2024-03-01' + (g + $2) * interval '1 minute', g, 'kWh'
                 FROM generate_series(1, $1) g",
                &[&i32::try_from(n).unwrap_or(0), &i32::try_from(offset).unwrap_or(0)],
            )
            .expect("queueing readings");
    }

    /// A direct connection to the central as this site's role.
    pub(super) fn central_as_role(&self, central: &TestDb) -> Client {
        let mut cfg = central.config();
        cfg.user(&self.role).password(&self.password);
        cfg.connect(postgres::NoTls).expect("the site's role logs in")
    }

    pub(super) fn once(&self) -> (Option<i32>, Value, String) {
        once_with(&self.env)
    }
}

pub(super) fn once_with(env: &BTreeMap<String, String>) -> (Option<i32>, Value, String) {
    let (out, json) = once_json(env);
    (out.status.code(), json, out.stderr)
}

/// A migrated central database on the fleet server.
pub(super) fn central() -> TestDb {
    let s = fleet_server();
    let central = TestDb::create(&s.pg);
    let local = TestDb::create(&s.pg);
    let cfg = Config::from_map(&env_map_for(&local, central.name(), HOST, central.port())).expect("config");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    migrate::migrate(&conns.remote, false).expect("migrating the central");
    central
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// SQLSTATE of a refused statement.
fn refused(c: &mut Client, sql: &str) -> String {
    let e = c.batch_execute(sql).expect_err(sql);
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    format!(
        "{} {message}",
        e.code().map(|s| s.code().to_string()).unwrap_or_default()
    )
}

#[test]
fn per_site_roles_see_and_delete_only_their_own_rows_and_cannot_forge_another_site() {
    let central = central();
    let (a, b) = (Site::new(&central, "a", 5), Site::new(&central, "b", 7));
    for (site, n) in [(&a, 5), (&b, 7)] {
        let (code, json, stderr) = site.once();
        assert_eq!(code, Some(0), "{}: {json:#}\n{stderr}", site.role);
        assert_eq!(json["uploadResult"]["recordsUploaded"], n, "{json:#}");
    }
    assert_eq!(central.count("SELECT count(*) FROM meter_readings"), 12);
    assert_eq!(
        central.count("SELECT count(*) FROM sync_upload_ledger"),
        2,
        "one batch per site"
    );

    // As site A's role: only A's ledger row is visible; B's cannot be read, deleted or written.
    let mut ca = a.central_as_role(&central);
    let b_rows = format!("FROM sync_upload_ledger WHERE source_id = '{}'", b.source_id);
    assert_eq!(count(&mut ca, "SELECT count(*) FROM sync_upload_ledger"), 1);
    assert_eq!(
        count(
            &mut ca,
            &format!(
                "SELECT count(*) FROM sync_upload_ledger WHERE source_id = '{}'",
                a.source_id
            )
        ),
        1
    );
    assert_eq!(
        count(&mut ca, &format!("SELECT count(*) {b_rows}")),
        0,
        "B's rows are invisible to A"
    );
    let deleted = ca
        .execute(&format!("DELETE {b_rows}"), &[])
        .expect("a DELETE that matches nothing");
    assert_eq!(deleted, 0, "A deletes none of B's rows");
    let own = ca
        .execute("DELETE FROM sync_upload_ledger", &[])
        .expect("A deletes what it sees");
    assert_eq!(own, 1, "an unqualified DELETE reaches only A's own row");
    let forged = refused(
        &mut ca,
        &format!(
            "INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) VALUES ('{}', gen_random_uuid(), 1)",
            b.source_id
        ),
    );
    assert!(
        forged.starts_with("42501") && forged.contains("row-level security"),
        "{forged}"
    );
    let forged_chain = refused(
        &mut ca,
        &format!(
            "INSERT INTO sync_upload_chain (source_id, head) VALUES ('{}', gen_random_uuid())",
            b.source_id
        ),
    );
    assert!(forged_chain.starts_with("42501"), "{forged_chain}");
    assert_eq!(
        count(&mut ca, "SELECT count(*) FROM sync_site_role"),
        1,
        "A reads only its own mapping"
    );
    drop(ca);
    assert_eq!(
        central.count(&format!("SELECT count(*) {b_rows}")),
        1,
        "B's ledger row is intact"
    );
    // (A's own row was deleted above: its batch is gone locally, so nothing is uploaded again.)

    // The daemon of box A configured with B's source id: refused, nothing inserted, the readings stay queued.
    a.queue(3, 100);
    let mut forging = a.env.clone();
    forging.insert("SYNC_SOURCE_ID".into(), b.source_id.clone());
    let (code, json, stderr) = once_with(&forging);
    assert_eq!(code, Some(1), "{json:#}\n{stderr}");
    let error = json["uploadResult"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("row-level security") && error.contains("SYNC_SOURCE_ID") && error.contains(&a.role),
        "{error}"
    );
    assert!(
        !error.contains(&a.password) && !stderr.contains(&a.password),
        "no password"
    );
    assert_eq!(
        a.local.count("SELECT count(*) FROM meter_readings"),
        3,
        "queued, not quarantined"
    );
    assert_eq!(a.local.count("SELECT count(*) FROM sync_quarantine"), 0);
    assert_eq!(central.count("SELECT count(*) FROM meter_readings"), 12);

    // With its own source id again: uploaded exactly once (the forged attempt's batch is recovered).
    let (code, json, stderr) = a.once();
    assert_eq!(code, Some(0), "{json:#}\n{stderr}");
    assert_eq!(a.local.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(central.count("SELECT count(*) FROM meter_readings"), 15);

    // Several batches in flight use the chain row, under the same policies.
    b.queue(9, 200);
    // Through a 2 ms round trip: the drain waits for the central, so it keeps several in flight (on loopback
    // it stays at one).
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], central.port())));
    proxy.set_latency(Duration::from_millis(1));
    let mut wide = b.env.clone();
    wide.insert("POSTGRES_CLIENT_PORT".into(), proxy.port().to_string());
    wide.insert("UPLOAD_BATCHES_IN_FLIGHT".into(), "3".into());
    wide.insert("BATCH_SIZE".into(), "2".into());
    let (code, json, stderr) = once_with(&wide);
    assert_eq!(code, Some(0), "{json:#}\n{stderr}");
    assert_eq!(json["uploadResult"]["recordsUploaded"], 9, "{json:#}");
    assert_eq!(
        central.count("SELECT count(*) FROM meter_readings"),
        24,
        "every reading exactly once"
    );
    assert_eq!(
        central.count(&format!(
            "SELECT count(*) FROM sync_upload_chain WHERE source_id = '{}'",
            b.source_id
        )),
        1
    );

    // The daemon's prune, run by A, deletes A's old ledger rows and none of B's.
    central
        .client()
        .batch_execute("UPDATE sync_upload_ledger SET uploaded_at = now() - interval '30 days'")
        .expect("ageing the ledger");
    let a_rows_before = central.count(&format!(
        "SELECT count(*) FROM sync_upload_ledger WHERE source_id = '{}'",
        a.source_id
    ));
    assert!(a_rows_before > 0);
    let b_rows_before = central.count(&format!("SELECT count(*) {b_rows}"));
    let cfg = Config::from_map(&a.env).expect("A's configuration");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    let pruned = sync_process::upload::UploadSyncManager::new(&conns, &cfg)
        .prune_ledger(std::time::Duration::from_secs(7 * 86_400))
        .expect("A's prune runs under row-level security");
    assert_eq!(pruned, u64::try_from(a_rows_before).unwrap_or(0));
    assert_eq!(
        central.count(&format!("SELECT count(*) {b_rows}")),
        b_rows_before,
        "B's rows stay"
    );

    // Re-running the script changes nothing.
    psql_script(
        &central,
        PER_SITE_SQL,
        &[
            ("role", &a.role),
            ("source_id", &a.source_id),
            ("password", &a.password),
        ],
    );
    a.queue(2, 300);
    let (code, json, _) = a.once();
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(central.count("SELECT count(*) FROM meter_readings"), 26);
}

#[test]
fn revoking_one_site_role_stops_only_that_site_and_its_error_says_so() {
    let central = central();
    let (a, b) = (Site::new(&central, "a", 4), Site::new(&central, "b", 4));
    for site in [&a, &b] {
        let (code, json, stderr) = site.once();
        assert_eq!(code, Some(0), "{json:#}\n{stderr}");
    }
    let target = format!("remote database {HOST}:{}/{}", central.port(), central.name());

    // NOLOGIN for A: A stops, B goes on.
    central
        .client()
        .batch_execute(&format!("ALTER ROLE {} NOLOGIN", a.role))
        .expect("revoking A");
    a.queue(3, 100);
    b.queue(3, 100);
    let (code, json, stderr) = a.once();
    assert_eq!(code, Some(1), "{json:#}\n{stderr}");
    let error = json["uploadResult"]["error"].as_str().unwrap_or_default();
    for needle in [
        target.as_str(),
        &a.role,
        "not permitted to log in",
        "NOLOGIN",
        "revoked",
    ] {
        assert!(error.contains(needle), "no {needle:?} in: {error}");
    }
    assert!(
        !error.contains(&a.password) && !stderr.contains(&a.password),
        "no password"
    );
    let (code, json, stderr) = b.once();
    assert_eq!(code, Some(0), "B is not affected: {json:#}\n{stderr}");

    // REVOKE CONNECT for B (with CONNECT no longer granted to PUBLIC): B stops; A readmitted goes on.
    central
        .client()
        .batch_execute(&format!(
            "ALTER ROLE {} LOGIN; REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; REVOKE CONNECT ON DATABASE {db} FROM {}",
            a.role,
            b.role,
            db = central.name()
        ))
        .expect("readmitting A, revoking B");
    b.queue(2, 200);
    let (code, json, stderr) = b.once();
    assert_eq!(code, Some(1), "{json:#}\n{stderr}");
    let error = json["uploadResult"]["error"].as_str().unwrap_or_default();
    for needle in [
        target.as_str(),
        &b.role,
        "permission denied for database",
        "CONNECT",
        "revoked",
    ] {
        assert!(error.contains(needle), "no {needle:?} in: {error}");
    }
    let (code, json, stderr) = a.once();
    assert_eq!(code, Some(0), "A readmitted: {json:#}\n{stderr}");
    assert_eq!(a.local.count("SELECT count(*) FROM meter_readings"), 0);

    // Readmitted, B uploads what waited, exactly once.
    central
        .client()
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO {}", central.name(), b.role))
        .expect("readmitting B");
    let (code, json, stderr) = b.once();
    assert_eq!(code, Some(0), "{json:#}\n{stderr}");
    assert_eq!(b.local.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(central.count("SELECT count(*) FROM meter_readings"), 4 + 4 + 3 + 3 + 2);
}
