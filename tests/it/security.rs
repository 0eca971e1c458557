//! Integration tests: security (issue 8). TLS per sslmode on both sides, the least-privilege remote role of
//! sql/least-privilege-remote-role.sql, and secrets (passwords never shown, env-file permission warning).
//!
//! Owns: one security server for this module ([`sec_server`]): ssl=on with a certificate from a throwaway CA
//! made here with the openssl CLI, a pg_hba.conf that requires TLS for the TLS test role and a password
//! (scram) for every member of the `scram_users` role. Does not own: the harness (support/), nor the daemon's
//! upload/download behaviour beyond what least privilege and secrets need.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::error::{Error, Side};
use sync_process::migrate;
use sync_process::shutdown::Shutdown;

use crate::support::daemon::{run_command, Daemon};
use crate::support::env::{closed_port, once_json};
use crate::support::pg::{env_map, psql_script, DbPair, PgServer, ServerOptions, TestDb, HOST};
use crate::support::{openssl, unique_temp_dir};

/// Role of the TLS tests: pg_hba.conf lets it in only over TLS.
const TLS_USER: &str = "tls_client";
/// Group role: its members authenticate with scram-sha-256 passwords.
const SCRAM_GROUP: &str = "scram_users";

/// The security server and the CA files the tests hand to the daemon.
struct SecServer {
    pg: PgServer,
    /// The CA that signed the server's certificate (SAN IP:127.0.0.1, DNS:localhost).
    ca: PathBuf,
    /// A CA unrelated to the server's certificate.
    wrong_ca: PathBuf,
}

/// The throwaway certificates, as PEM.
struct Certs {
    ca: Vec<u8>,
    wrong_ca: Vec<u8>,
    server_crt: Vec<u8>,
    server_key: Vec<u8>,
}

/// A CA, a server certificate signed by it for 127.0.0.1 and localhost, and a second unrelated CA.
fn make_certs() -> Certs {
    let dir = unique_temp_dir("sync-process-certs");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (name, cn) in [("ca", "sync-process test CA"), ("wrong-ca", "unrelated test CA")] {
        let (key, crt, subj) = (format!("{name}.key"), format!("{name}.crt"), format!("/CN={cn}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-days", "3", "-subj", &subj]);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &args);
    }
    let mut args = vec!["req", "-new"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(&dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .expect("writing server.ext");
    let sign =
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 3 -extfile server.ext -out server.crt";
    openssl(&dir, &sign.split(' ').collect::<Vec<_>>());
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let certs = Certs {
        ca: read("ca.crt"),
        wrong_ca: read("wrong-ca.crt"),
        server_crt: read("server.crt"),
        server_key: read("server.key"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    certs
}

/// The one server of this module, started on first use (ssl=on, listening on 127.0.0.1 and 127.0.0.2).
fn sec_server() -> &'static SecServer {
    static SERVER: OnceLock<SecServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let certs = make_certs();
        let pg = PgServer::start_with(ServerOptions {
            extra_conf: vec![
                // A second loopback address whose IP is not in the certificate: the host name check.
                "listen_addresses = '127.0.0.1,127.0.0.2'".into(),
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
                "password_encryption = 'scram-sha-256'".into(),
            ],
            hba_lines: Some(vec![
                "local all all trust".into(),
                // The harness's superuser (readiness check, CREATE DATABASE, migrations), with or without TLS.
                "host all postgres 127.0.0.1/32 trust".into(),
                // The TLS tests' role: TLS only (no line lets it in without TLS).
                format!("hostssl all {TLS_USER} 127.0.0.0/8 trust"),
                // Roles of the least-privilege and secrets tests: a real password check.
                format!("host all +{SCRAM_GROUP} 127.0.0.1/32 scram-sha-256"),
            ]),
            files: vec![
                ("server.crt".into(), certs.server_crt),
                ("server.key".into(), certs.server_key),
                ("ca.crt".into(), certs.ca),
                ("wrong-ca.crt".into(), certs.wrong_ca),
            ],
        });
        pg.admin_client()
            .batch_execute(&format!(
                "CREATE ROLE {TLS_USER} LOGIN; CREATE ROLE {SCRAM_GROUP} NOLOGIN;"
            ))
            .expect("creating the test roles");
        let (ca, wrong_ca) = (pg.data_dir().join("ca.crt"), pg.data_dir().join("wrong-ca.crt"));
        SecServer { pg, ca, wrong_ca }
    })
}

/// `<prefix>_<pid>_<n>`: a role name no other test (or test process) uses. Roles are global to a server.
fn unique_role(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database pair on the security server (local and remote), both reachable by the superuser.
fn sec_pair() -> DbPair {
    let s = sec_server();
    DbPair::on(&s.pg, &s.pg)
}

// ---------------------------------------------------------------------------------------------------------
// TLS: ConnectionManager::test-like checks of both sides, through the daemon's own pools and TLS connector.

/// The daemon's variables for both sides pointing at the security server's `postgres` database through
/// `host`, as [`TLS_USER`], with this sslmode and CA file.
fn tls_vars(host: &str, sslmode: &str, ca: Option<&Path>) -> BTreeMap<String, String> {
    let port = sec_server().pg.port().to_string();
    let mut m = BTreeMap::new();
    for prefix in ["POSTGRES_SYNC", "POSTGRES_CLIENT"] {
        m.insert(format!("{prefix}_HOST"), host.to_string());
        m.insert(format!("{prefix}_PORT"), port.clone());
        m.insert(format!("{prefix}_DB"), "postgres".to_string());
        m.insert(format!("{prefix}_USER"), TLS_USER.to_string());
        m.insert(format!("{prefix}_PASSWORD"), "unused-trust-auth".to_string());
        m.insert(format!("{prefix}_SSLMODE"), sslmode.to_string());
        if let Some(ca) = ca {
            m.insert(format!("{prefix}_SSLROOTCERT"), ca.display().to_string());
        }
    }
    for (k, v) in [
        ("MAX_CONNECTION_RETRIES", "0"),
        // A failed handshake makes the pool wait this long before it reports the error: keep it short.
        ("DB_CONNECTION_TIMEOUT_MS", "2000"),
        ("LOG_FILE", ""),
        ("STATUS_BIND", ""),
    ] {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

/// Connects both sides (in parallel) with these TLS settings, as `ConnectionManager::test` does, and asks
/// each server whether the session is encrypted. Returns (local, remote): `Ok(ssl_in_use)` or the error.
fn connect_both(host: &str, sslmode: &str, ca: Option<&Path>) -> [Result<bool, Error>; 2] {
    let cfg = Config::from_map(&tls_vars(host, sslmode, ca)).expect("valid TLS configuration");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    let probe = |side: Side| -> Result<bool, Error> {
        conns.test(side)?;
        let db = conns.db(side);
        let mut c = db.try_get()?;
        let row = c
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .map_err(|e| db.err("reading pg_stat_ssl", e))?;
        Ok(row.get(0))
    };
    std::thread::scope(|s| {
        let local = s.spawn(|| probe(Side::Local));
        let remote = s.spawn(|| probe(Side::Remote));
        [
            local.join().expect("local thread"),
            remote.join().expect("remote thread"),
        ]
    })
}

/// Both sides connected, over TLS.
fn assert_encrypted(results: [Result<bool, Error>; 2], case: &str) {
    for (side, r) in ["local", "remote"].iter().zip(results) {
        match r {
            Ok(ssl) => assert!(ssl, "{case}: the {side} session is not encrypted"),
            Err(e) => panic!("{case}: the {side} side failed: {e}"),
        }
    }
}

/// Both sides failed; each message names the side, the database (host:port/db) and contains every `cause`.
fn assert_refused(results: [Result<bool, Error>; 2], host: &str, causes: &[&str], case: &str) {
    let target = format!("{host}:{}/postgres", sec_server().pg.port());
    for (side, r) in ["local", "remote"].iter().zip(results) {
        let e = match r {
            Ok(_) => panic!("{case}: the {side} side connected but must not"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(
            text.contains(&format!("{side} database {target}")),
            "{case}: {side}: {text}"
        );
        for cause in causes {
            assert!(text.contains(cause), "{case}: {side}: no {cause:?} in: {text}");
        }
    }
}

#[test]
fn tls_verify_full_connects_with_the_right_ca_and_host_name() {
    let s = sec_server();
    // The certificate names both: a DNS name and an IP address.
    assert_encrypted(
        connect_both("localhost", "verify-full", Some(&s.ca)),
        "verify-full localhost",
    );
    assert_encrypted(
        connect_both("127.0.0.1", "verify-full", Some(&s.ca)),
        "verify-full 127.0.0.1",
    );
}

#[test]
fn tls_verify_full_refuses_a_certificate_from_another_ca() {
    let s = sec_server();
    let unknown_ca = ["certificate verify failed", "unable to get local issuer certificate"];
    assert_refused(
        connect_both("127.0.0.1", "verify-full", Some(&s.wrong_ca)),
        "127.0.0.1",
        &unknown_ca,
        "wrong CA",
    );
    // verify-ca checks the chain just the same.
    assert_refused(
        connect_both("localhost", "verify-ca", Some(&s.wrong_ca)),
        "localhost",
        &unknown_ca,
        "verify-ca wrong CA",
    );
}

#[test]
fn tls_verify_full_without_a_ca_file_trusts_only_the_system_roots() {
    let causes = ["certificate verify failed", "unable to get local issuer certificate"];
    assert_refused(
        connect_both("localhost", "verify-full", None),
        "localhost",
        &causes,
        "verify-full, no CA file",
    );
}

#[test]
fn tls_verify_full_checks_an_ip_address_host_against_the_certificate() {
    // 127.0.0.2 reaches the same server, whose certificate names only 127.0.0.1 and localhost: native-tls
    // (OpenSSL) checks IP hosts against the IP entries of the subjectAltName.
    let s = sec_server();
    let causes = ["certificate verify failed", "IP address mismatch"];
    assert_refused(
        connect_both("127.0.0.2", "verify-full", Some(&s.ca)),
        "127.0.0.2",
        &causes,
        "IP not in SAN",
    );
}

#[test]
fn tls_verify_full_checks_a_dns_host_name_against_the_certificate() {
    // A DNS name that reaches the server but is not in the certificate: this machine's host name, when it
    // resolves to a loopback address the server listens on (as in most containers and VMs).
    let name = sync_process::config::hostname();
    let reaches = (name.as_str(), 0u16)
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| ["127.0.0.1", "127.0.0.2"].contains(&a.ip().to_string().as_str())))
        .unwrap_or(false);
    if !reaches || name == "localhost" {
        eprintln!("skipped: the host name {name:?} does not resolve to 127.0.0.1 or 127.0.0.2 here");
        return;
    }
    let s = sec_server();
    let causes = ["certificate verify failed", "hostname mismatch"];
    assert_refused(
        connect_both(&name, "verify-full", Some(&s.ca)),
        &name,
        &causes,
        "host name not in SAN",
    );
    // verify-ca does not check the name.
    assert_encrypted(
        connect_both(&name, "verify-ca", Some(&s.ca)),
        "verify-ca, host name not in SAN",
    );
}

#[test]
fn tls_verify_ca_accepts_a_host_name_that_does_not_match() {
    let s = sec_server();
    assert_encrypted(
        connect_both("127.0.0.2", "verify-ca", Some(&s.ca)),
        "verify-ca 127.0.0.2",
    );
}

#[test]
fn tls_require_and_prefer_encrypt_without_a_ca() {
    assert_encrypted(connect_both("127.0.0.2", "require", None), "require");
    assert_encrypted(connect_both("127.0.0.1", "prefer", None), "prefer");
}

#[test]
fn tls_disable_against_a_hostssl_only_server_names_pg_hba() {
    let results = connect_both("127.0.0.1", "disable", None);
    for (side, r) in ["local", "remote"].iter().zip(&results) {
        let text = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        // PostgreSQL 14+ says "no encryption"; older servers "SSL off".
        assert!(
            text.contains("no encryption") || text.contains("SSL off"),
            "{side}: {text}"
        );
    }
    assert_refused(
        results,
        "127.0.0.1",
        &["no pg_hba.conf entry", TLS_USER, "SQLSTATE 28000"],
        "disable",
    );
}

// ---------------------------------------------------------------------------------------------------------
// Least privilege: sql/least-privilege-remote-role.sql, and the daemon's whole cycle with that role.

const LEAST_PRIVILEGE_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/least-privilege-remote-role.sql");

/// Runs the script with psql against `db` as the superuser, creating `role` with `password`; then makes the
/// role a member of [`SCRAM_GROUP`] so that pg_hba.conf checks its password.
fn apply_least_privilege_script(db: &TestDb, role: &str, password: &str) {
    let text = psql_script(db, LEAST_PRIVILEGE_SQL, &[("role", role), ("password", password)]);
    assert!(!text.contains(password), "psql printed the password:\n{text}");
    db.client()
        .batch_execute(&format!("GRANT {SCRAM_GROUP} TO {role}"))
        .expect("granting the scram group");
}

/// A migrated pair on the security server with a least-privilege remote role, a few local readings and a few
/// remote meters and tenants; returns the daemon's environment using that role for the remote.
fn least_privilege_setup(pair: &DbPair, role: &str, password: &str) -> BTreeMap<String, String> {
    let admin_env = env_map(pair);
    let cfg = Config::from_map(&admin_env).expect("config");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    // Migrations run as an owner (here the superuser), never as the restricted role.
    migrate::migrate(&conns.local, false).expect("migrating local");
    migrate::migrate(&conns.remote, false).expect("migrating remote");
    apply_least_privilege_script(&pair.remote, role, password);

    pair.local
        .client()
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata) VALUES
               ('m-1', '2024-01-01 00:00:00', 1.50, 'kWh', '{\"q\": 1}'),
               ('m-1', '2024-01-01 00:15:00', 2.25, 'kWh', NULL),
               ('m-2', '2024-01-01 00:00:00', 0.000001, 'm3', '{}'),
               ('m-2', '2024-01-01 00:15:00', 123456789.123456789, 'm3', NULL),
               ('m-3', '2024-01-01 00:00:00', -4, 'kWh', '[1, 2]')",
        )
        .expect("seeding local readings");
    pair.remote
        .client()
        .batch_execute(
            "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration) VALUES
               ('m-1', 'Main', 'loc-1', 'electric', 'kWh', '{\"phase\": 3}'),
               ('m-2', 'Water', NULL, 'water', 'm3', NULL),
               ('m-3', 'Aux', 'loc-2', 'electric', 'kWh', '{}');
             INSERT INTO tenant (tenant_id, name, configuration, metadata) VALUES
               ('t-1', 'Tenant one', '{\"a\": 1}', NULL),
               ('t-2', 'Tenant two', NULL, '{\"b\": [1]}');",
        )
        .expect("seeding remote meters and tenants");

    let mut env = admin_env;
    env.insert("POSTGRES_CLIENT_USER".into(), role.to_string());
    env.insert("POSTGRES_CLIENT_PASSWORD".into(), password.to_string());
    env
}

/// Runs `once` and parses its JSON.
fn once(env: &BTreeMap<String, String>) -> (Option<i32>, serde_json::Value, String) {
    let (out, json) = once_json(env);
    (out.status.code(), json, out.stderr)
}

/// As the role itself (logging in with its password), everything beyond the script's grants is refused, and
/// the role has no dangerous attribute.
fn assert_role_can_do_nothing_else(remote: &TestDb, role: &str, password: &str) {
    let mut cfg = remote.config();
    cfg.user(role).password(password);
    let mut c = cfg
        .connect(postgres::NoTls)
        .expect("the role logs in with its password");
    for sql in [
        "SELECT * FROM meter_readings",
        "UPDATE meter_readings SET value = 0",
        "DELETE FROM meter_readings",
        "TRUNCATE meter_readings",
        "UPDATE sync_upload_ledger SET row_count = 0",
        "INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('x', 'x', 'x', 'x')",
        "UPDATE meters SET name = 'x'",
        "DELETE FROM tenant",
        "SELECT * FROM sync_schema_migrations",
        "CREATE TABLE evil (id int)",
        "ALTER TABLE meter_readings ADD COLUMN evil int",
        "DROP TABLE meters",
        "CREATE ROLE evil",
        "CREATE DATABASE evil",
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        let state = e.code().map(|s| s.code().to_string()).unwrap_or_default();
        assert_eq!(state, "42501", "{sql}: expected insufficient_privilege, got {e}");
    }
    let attrs = c
        .query_one("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
        .expect("role attributes");
    for i in 0..5 {
        assert!(!attrs.get::<_, bool>(i), "attribute {i} of the role must be off");
    }
}

#[test]
fn least_privilege_role_runs_the_whole_cycle_and_can_do_nothing_else() {
    let pair = sec_pair();
    let (role, password) = (unique_role("sync_remote"), "lp-Pa55word-4e1b");
    let env = least_privilege_setup(&pair, &role, password);
    assert_role_can_do_nothing_else(&pair.remote, &role, password);

    let (code, json, stderr) = once(&env);
    assert_eq!(
        code,
        Some(0),
        "the cycle succeeds with the restricted role:\n{json:#}\nstderr: {stderr}"
    );
    assert_eq!(json["uploadResult"]["recordsUploaded"], 5, "{json:#}");
    assert_eq!(json["meterDownloadResult"]["totalMeters"], 3, "{json:#}");
    assert_eq!(json["tenantDownloadResult"]["totalTenants"], 2, "{json:#}");
    assert_eq!(
        pair.local.count("SELECT count(*) FROM meter_readings"),
        0,
        "uploaded readings are deleted locally"
    );
    assert_eq!(pair.remote.count("SELECT count(*) FROM meter_readings"), 5);
    assert_eq!(
        pair.remote.count("SELECT count(*) FROM sync_upload_ledger"),
        1,
        "one batch, one ledger row"
    );
    assert_eq!(pair.local.count("SELECT count(*) FROM meters"), 3);
    assert_eq!(pair.local.count("SELECT count(*) FROM tenant"), 2);
    // A second cycle (ledger lookups, nothing to upload) is just as fine.
    let (code, json, _) = once(&env);
    assert_eq!(code, Some(0), "{json:#}");

    // Idempotent: running the script again changes nothing and fails nothing.
    apply_least_privilege_script(&pair.remote, &role, password);
    assert_role_can_do_nothing_else(&pair.remote, &role, password);
    let (code, json, _) = once(&env);
    assert_eq!(code, Some(0), "{json:#}");

    // Several batches in flight need the chain row too, and nothing more.
    pair.local
        .client()
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit) \
             SELECT 'm' || g, timestamp '2024-02-01' + g * interval '1 minute', g, 'kWh' FROM generate_series(1, 9) g",
        )
        .expect("more readings");
    let mut wide = env.clone();
    wide.insert("UPLOAD_BATCHES_IN_FLIGHT".into(), "3".into());
    wide.insert("BATCH_SIZE".into(), "2".into());
    let (code, json, stderr) = once(&wide);
    assert_eq!(code, Some(0), "{json:#}\nstderr: {stderr}");
    assert_eq!(json["uploadResult"]["recordsUploaded"], 9, "{json:#}");
    assert_eq!(pair.remote.count("SELECT count(*) FROM meter_readings"), 14);
}

#[test]
fn least_privilege_missing_grant_fails_the_upload_clearly_and_keeps_the_readings() {
    let pair = sec_pair();
    let (role, password) = (unique_role("sync_remote"), "lp-Pa55word-90c2");
    let env = least_privilege_setup(&pair, &role, password);
    pair.remote
        .client()
        .batch_execute(&format!("REVOKE INSERT ON meter_readings FROM {role}"))
        .expect("revoke");

    let (code, json, stderr) = once(&env);
    assert_eq!(
        code,
        Some(1),
        "a cycle with a failed upload exits 1:\n{json:#}\nstderr: {stderr}"
    );
    assert_eq!(json["success"], false, "{json:#}");
    assert_eq!(json["uploadResult"]["success"], false, "{json:#}");
    let error = json["uploadResult"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("permission denied for table meter_readings"),
        "names the permission problem: {error}"
    );
    assert!(
        error.contains(&format!("{HOST}:{}/{}", pair.remote.port(), pair.remote.name())),
        "names the database: {error}"
    );
    assert!(
        !error.contains(password) && !stderr.contains(password),
        "no password in: {error}\n{stderr}"
    );
    assert_eq!(json["uploadResult"]["recordsUploaded"], 0, "{json:#}");
    assert_eq!(
        pair.local.count("SELECT count(*) FROM meter_readings"),
        5,
        "the readings stay local"
    );
    assert_eq!(pair.remote.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(
        pair.remote.count("SELECT count(*) FROM sync_upload_ledger"),
        0,
        "the ledger row rolled back with the readings"
    );
    // The other parts are not held up by the upload's failure.
    assert_eq!(json["meterDownloadResult"]["success"], true, "{json:#}");
    assert_eq!(pair.local.count("SELECT count(*) FROM meters"), 3);

    // Granting it back: the next cycle uploads them all, once.
    pair.remote
        .client()
        .batch_execute(&format!("GRANT INSERT ON meter_readings TO {role}"))
        .expect("grant");
    let (code, json, _) = once(&env);
    assert_eq!(code, Some(0), "{json:#}");
    assert_eq!(pair.local.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(pair.remote.count("SELECT count(*) FROM meter_readings"), 5);
}

// ---------------------------------------------------------------------------------------------------------
// Secrets: no command ever shows a password; a world-readable env file is warned about.

/// The password of the secrets tests' role: it must never appear in any output, log or table.
const SECRET: &str = "S3cret-pw-never-shown-5d8e";
/// A wrong password tried once: it must not appear either.
const WRONG_SECRET: &str = "Wr0ng-pw-never-shown-a91f";

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        TempDir(unique_temp_dir(prefix))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_private(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every row of every table of the `public` schema of `db`, as text.
fn dump_tables(db: &TestDb) -> String {
    let mut c = db.client();
    let tables: Vec<String> = c
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .expect("listing tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = String::new();
    for t in tables {
        let rows: String = c
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {t} t"),
                &[],
            )
            .expect("dumping a table")
            .get(0);
        out.push_str(&format!("--- {t}\n{rows}\n"));
    }
    out
}

/// Every file under `dir`, as text (lossy).
fn read_all_files(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&read_all_files(&path));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()));
        }
    }
    out
}

#[test]
fn secrets_no_command_shows_a_password_in_output_logs_or_tables() {
    let pair = sec_pair();
    let role = unique_role("sp_owner");
    // A role with a real password (scram-sha-256 per pg_hba.conf) that owns both databases: a password that
    // is actually used, so a success proves it travelled to the server and nowhere else.
    sec_server()
        .pg
        .admin_client()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{SECRET}' IN ROLE {SCRAM_GROUP};
             ALTER DATABASE {} OWNER TO {role}; ALTER DATABASE {} OWNER TO {role};",
            pair.local.name(),
            pair.remote.name()
        ))
        .expect("creating the password role");
    let dir = TempDir::new("sync-process-secrets");
    let log_dir = dir.0.join("logs");
    let mut env = env_map(&pair);
    for (k, v) in [
        ("POSTGRES_SYNC_USER", role.as_str()),
        ("POSTGRES_CLIENT_USER", role.as_str()),
        ("POSTGRES_SYNC_PASSWORD", SECRET),
        ("POSTGRES_CLIENT_PASSWORD", SECRET),
        ("LOG_LEVEL", "trace"),
        // Generous: these cases succeed (a wait ends at the connection), and TLS + SCRAM on a loaded machine
        // can take well over a second.
        ("DB_CONNECTION_TIMEOUT_MS", "10000"),
    ] {
        env.insert(k.into(), v.into());
    }
    env.insert(
        "LOG_FILE".into(),
        log_dir.join("sync-process.log").display().to_string(),
    );
    env.insert("STATUS_BIND".into(), format!("{HOST}:{}", closed_port()));
    // The same, with the passwords in a file each (the systemd credentials convention).
    let pw_file = dir.0.join("password");
    write_private(&pw_file, &format!("{SECRET}\n"), 0o600);
    let mut file_env = env.clone();
    for side in ["SYNC", "CLIENT"] {
        file_env.remove(&format!("POSTGRES_{side}_PASSWORD"));
        file_env.insert(format!("POSTGRES_{side}_PASSWORD_FILE"), pw_file.display().to_string());
    }
    // The same, from an env file (0600).
    let env_file = dir.0.join("sync.env");
    let env_text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    write_private(&env_file, &env_text, 0o600);
    let env_file_arg = env_file.display().to_string();
    let with = |base: &BTreeMap<String, String>, k: &str, v: &str| {
        let mut m = base.clone();
        m.insert(k.to_string(), v.to_string());
        m
    };
    let no_env = BTreeMap::new();
    let bad_port = closed_port().to_string();

    // Failure cases: one attempt. The wrong port fails at once (nothing listens: the pool's TCP probe sees the
    // refusal). The wrong password is refused by the server, but the pool keeps retrying until
    // DB_CONNECTION_TIMEOUT_MS and then reports the last error: at least one TLS + SCRAM exchange must finish
    // within it, or the command reports a timeout instead of "password authentication failed". 300 ms was not
    // enough under CPU load; 5 s is (the two wrong-password cases run in parallel, so this costs ~5 s once).
    let mut fast_fail = env.clone();
    for (k, v) in [
        ("MAX_CONNECTION_RETRIES", "0"),
        ("MAX_QUERY_RETRIES", "0"),
        ("DB_CONNECTION_TIMEOUT_MS", "5000"),
    ] {
        fast_fail.insert(k.into(), v.into());
    }
    let wrong_port = with(&fast_fail, "POSTGRES_CLIENT_PORT", &bad_port);
    let wrong_pw = with(&fast_fail, "POSTGRES_CLIENT_PASSWORD", WRONG_SECRET);
    let bad_config = with(&env, "BATCH_SIZE", "abc");

    type Case<'a> = (
        &'a str,
        Vec<&'a str>,
        &'a BTreeMap<String, String>,
        Option<i32>,
        &'a str,
    );
    let run = |(label, args, env, expect, needle): Case<'_>| -> (String, String) {
        let out = run_command(&args, env);
        let text = format!("{}\n{}", out.stdout, out.stderr);
        if let Some(code) = expect {
            assert_eq!(out.status.code(), Some(code), "{label}: exit status\n{text}");
        }
        assert!(text.contains(needle), "{label}: expected {needle:?} in:\n{text}");
        (label.to_string(), text)
    };
    // In order: the schema first, then the commands that use it.
    let sequential: Vec<Case<'_>> = vec![
        (
            "migrate --dry-run",
            vec!["migrate", "--dry-run"],
            &env,
            Some(0),
            "would apply",
        ),
        ("migrate", vec!["migrate"], &env, Some(0), "applied"),
        ("check-config", vec!["check-config"], &env, Some(0), "connected"),
        (
            "check-config (password files)",
            vec!["check-config"],
            &file_env,
            Some(0),
            "connected",
        ),
        (
            "check-config (env file)",
            vec!["--env-file", &env_file_arg, "check-config"],
            &no_env,
            Some(0),
            "connected",
        ),
        ("quarantine list", vec!["quarantine", "list"], &env, Some(0), ""),
        ("once", vec!["once"], &env, None, "uploadResult"),
        ("once (password files)", vec!["once"], &file_env, None, "uploadResult"),
    ];
    // Independent of each other and of the schema: in parallel, to keep the test short.
    let parallel: Vec<Case<'_>> = vec![
        (
            "status (no daemon)",
            vec!["status"],
            &env,
            Some(1),
            "no sync-process daemon answers",
        ),
        ("config error", vec!["check-config"], &bad_config, Some(2), "BATCH_SIZE"),
        (
            "wrong port (check-config)",
            vec!["check-config"],
            &wrong_port,
            Some(1),
            "UNREACHABLE",
        ),
        ("wrong port (once)", vec!["once"], &wrong_port, Some(1), "uploadResult"),
        (
            "wrong password (check-config)",
            vec!["check-config"],
            &wrong_pw,
            Some(1),
            "password authentication failed",
        ),
        (
            "wrong password (migrate)",
            vec!["migrate"],
            &wrong_pw,
            Some(1),
            "password authentication failed",
        ),
    ];
    let mut outputs: Vec<(String, String)> = sequential.into_iter().map(run).collect();
    outputs.extend(std::thread::scope(|s| {
        let handles: Vec<_> = parallel.into_iter().map(|case| s.spawn(move || run(case))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a command thread panicked"))
            .collect::<Vec<_>>()
    }));

    // The daemon itself, until it has recorded a cycle.
    let logged_before = pair.local.count("SELECT count(*) FROM sync_logs");
    let mut daemon = Daemon::spawn(&["run"], &env);
    crate::support::wait_until(Duration::from_secs(10), || {
        !daemon.is_running() || pair.local.count("SELECT count(*) FROM sync_logs") > logged_before
    });
    if daemon.is_running() {
        daemon.signal("TERM");
        if daemon.wait_timeout(Duration::from_secs(15)).is_none() {
            daemon.kill();
        }
    }
    outputs.push((
        "run".into(),
        format!("{}\n{}", daemon.stdout_text(), daemon.stderr_text()),
    ));

    for (label, text) in &outputs {
        for pw in [SECRET, WRONG_SECRET] {
            assert!(!text.contains(pw), "{label}: a password shows in the output:\n{text}");
        }
    }
    let logs = read_all_files(&log_dir);
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the log file holds the trace-level lines:\n{logs}"
    );
    for pw in [SECRET, WRONG_SECRET] {
        assert!(!logs.contains(pw), "a password shows in the log file");
    }
    assert!(
        pair.local.count("SELECT count(*) FROM sync_logs") > 0,
        "the cycles wrote sync_logs rows"
    );
    for db in [&pair.local, &pair.remote] {
        let rows = dump_tables(db);
        for pw in [SECRET, WRONG_SECRET] {
            assert!(
                !rows.contains(pw),
                "a password shows in a table of {}:\n{rows}",
                db.name()
            );
        }
    }
}

#[test]
fn secrets_a_world_readable_env_file_is_warned_about_at_startup() {
    let pair = DbPair::new();
    let dir = TempDir::new("sync-process-envfile");
    let path = dir.0.join("sync.env");
    let mut vars = env_map(&pair);
    vars.insert("POSTGRES_SYNC_PASSWORD".into(), SECRET.into());
    vars.insert("POSTGRES_CLIENT_PASSWORD".into(), SECRET.into());
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let shown = path.display().to_string();

    write_private(&path, &text, 0o644);
    let out = run_command(&["--env-file", &shown, "check-config"], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let warning = out.stderr.lines().find(|l| l.contains(&shown)).unwrap_or_default();
    assert!(
        warning.contains("WARN") && warning.contains("chmod"),
        "a warning naming the file and chmod:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "no password in the output"
    );

    write_private(&path, &text, 0o600);
    let out = run_command(&["--env-file", &shown, "check-config"], &BTreeMap::new());
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stderr.contains("chmod"),
        "no warning for a 0600 file:\n{}",
        out.stderr
    );
}
