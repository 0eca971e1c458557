//! Integration tests: security at fleet scale (issue 18). Client certificates (`*_SSLCERT`/`*_SSLKEY`) against
//! a server with `hostssl ... cert` and with `clientcert=verify-full` on top of a password; per-site roles with
//! row-level security on the central's ledger and chain (sql/per-site-remote-roles.sql); rotation of passwords
//! and certificates without a restart, and the certificate's expiry in /status, /metrics and the alerts.
//!
//! Owns: one server for this module ([`fleet_server`]): ssl=on with a server certificate from a throwaway CA
//! and `ssl_ca_file` = a second throwaway CA that issues the boxes' client certificates ([`Ca`], made with the
//! openssl CLI), a pg_hba.conf with one line per way a box may authenticate (members of [`CERT_GROUP`]: `cert`;
//! of [`CERT_PW_GROUP`]: scram-sha-256 with `clientcert=verify-full`; of [`SCRAM_GROUP`]: scram-sha-256).
//! Does not own: the TLS server-verification tests and the shared least-privilege role (security.rs).

mod certs;
mod rotation;
mod sites;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::support::pg::{PgServer, ServerOptions, HOST};
use crate::support::{openssl, unique_temp_dir};

/// Group role: its members authenticate with their client certificate alone (`cert`).
const CERT_GROUP: &str = "fleet_cert";
/// Group role: its members need a password and a client certificate whose CN is their name.
const CERT_PW_GROUP: &str = "fleet_cert_pw";
/// Group role: its members authenticate with scram-sha-256 passwords.
const SCRAM_GROUP: &str = "fleet_scram";

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A throwaway CA in a directory of its own: its certificate and key stay there for issuing.
struct Ca {
    dir: PathBuf,
    serial: AtomicUsize,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = unique_temp_dir(&format!("sync-process-{name}"));
        let subj = format!("/CN=sync-process {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(EC);
        args.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", &subj]);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &args);
        Ca {
            dir,
            serial: AtomicUsize::new(10),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.cert_path()).expect("reading the CA certificate")
    }

    /// Issues a certificate for `cn` valid for `days` (-1: already expired) with the extensions `ext`, into
    /// `out_dir`: (`<file>.crt`, `<file>.key`), the key mode 0600.
    fn issue(&self, cn: &str, days: i32, ext: &str, out_dir: &Path, file: &str) -> (PathBuf, PathBuf) {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let (key, csr, crt, extfile) = (
            out_dir.join(format!("{file}.key")),
            out_dir.join(format!("{file}.csr")),
            out_dir.join(format!("{file}.crt")),
            out_dir.join(format!("{file}.ext")),
        );
        let s = |p: &Path| p.display().to_string();
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new"];
        args.extend(EC);
        let (key_s, csr_s, crt_s, ext_s) = (s(&key), s(&csr), s(&crt), s(&extfile));
        args.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", &subj]);
        openssl(&self.dir, &args);
        std::fs::write(&extfile, ext).expect("writing the extensions");
        let (days, serial) = (days.to_string(), n.to_string());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr_s,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                &days,
                "-extfile",
                &ext_s,
                "-out",
                &crt_s,
            ],
        );
        let _ = std::fs::remove_file(&csr);
        let _ = std::fs::remove_file(&extfile);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
        (crt, key)
    }

    /// A box's client certificate for the role `cn` (what `cert` authentication compares with the user name).
    fn client(&self, cn: &str, days: i32, out_dir: &Path, file: &str) -> (PathBuf, PathBuf) {
        let ext = "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n";
        self.issue(cn, days, ext, out_dir, file)
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The module's server and the CAs the tests issue from.
struct FleetServer {
    pg: PgServer,
    /// Signed the server's certificate (SAN IP:127.0.0.1, DNS:localhost): the boxes' SSLROOTCERT.
    server_ca: Ca,
    /// The server's `ssl_ca_file`: issues the boxes' client certificates.
    client_ca: Ca,
    /// A CA the server does not trust.
    rogue_ca: Ca,
}

fn fleet_server() -> &'static FleetServer {
    static SERVER: OnceLock<FleetServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (server_ca, client_ca, rogue_ca) = (Ca::new("server-ca"), Ca::new("client-ca"), Ca::new("rogue-ca"));
        let tmp = unique_temp_dir("sync-process-fleet-server");
        let ext = "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
                   keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n";
        let (crt, key) = server_ca.issue("localhost", 30, ext, &tmp, "server");
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        let pg = PgServer::start_with(ServerOptions {
            extra_conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
                "ssl_ca_file = 'client-ca.crt'".into(),
                "password_encryption = 'scram-sha-256'".into(),
            ],
            hba_lines: Some(vec![
                "local all all trust".into(),
                "host all postgres 127.0.0.1/32 trust".into(),
                format!("hostssl all +{CERT_GROUP} 127.0.0.0/8 cert"),
                format!("hostssl all +{CERT_PW_GROUP} 127.0.0.0/8 scram-sha-256 clientcert=verify-full"),
                format!("host all +{SCRAM_GROUP} 127.0.0.1/32 scram-sha-256"),
            ]),
            files: vec![
                ("server.crt".into(), read(&crt)),
                ("server.key".into(), read(&key)),
                ("client-ca.crt".into(), client_ca.cert_pem()),
            ],
        });
        let _ = std::fs::remove_dir_all(&tmp);
        pg.admin_client()
            .batch_execute(&format!(
                "CREATE ROLE {CERT_GROUP} NOLOGIN; CREATE ROLE {CERT_PW_GROUP} NOLOGIN; CREATE ROLE {SCRAM_GROUP} NOLOGIN;"
            ))
            .expect("creating the group roles");
        FleetServer {
            pg,
            server_ca,
            client_ca,
            rogue_ca,
        }
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

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        TempDir(unique_temp_dir(prefix))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Variables for both sides on the fleet server's `postgres` database via 127.0.0.1, as `user`, over TLS
/// (`sslmode`, the server CA for verify-ca/verify-full), with one attempt and short timeouts.
fn tls_vars(user: &str, sslmode: &str) -> BTreeMap<String, String> {
    let s = fleet_server();
    let mut m = BTreeMap::new();
    for prefix in ["POSTGRES_SYNC", "POSTGRES_CLIENT"] {
        m.insert(format!("{prefix}_HOST"), HOST.to_string());
        m.insert(format!("{prefix}_PORT"), s.pg.port().to_string());
        m.insert(format!("{prefix}_DB"), "postgres".to_string());
        m.insert(format!("{prefix}_USER"), user.to_string());
        m.insert(format!("{prefix}_SSLMODE"), sslmode.to_string());
        if sslmode.starts_with("verify") {
            m.insert(
                format!("{prefix}_SSLROOTCERT"),
                s.server_ca.cert_path().display().to_string(),
            );
        }
    }
    for (k, v) in [
        ("MAX_CONNECTION_RETRIES", "0"),
        // A refused attempt is retried by the pool until this passes, then reported: room for a TLS handshake
        // on a loaded machine.
        ("DB_CONNECTION_TIMEOUT_MS", "8000"),
        ("LOG_FILE", ""),
        ("STATUS_BIND", ""),
    ] {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

/// Both sides use this certificate and key.
fn with_cert(mut m: BTreeMap<String, String>, cert: &Path, key: &Path) -> BTreeMap<String, String> {
    for prefix in ["POSTGRES_SYNC", "POSTGRES_CLIENT"] {
        m.insert(format!("{prefix}_SSLCERT"), cert.display().to_string());
        m.insert(format!("{prefix}_SSLKEY"), key.display().to_string());
    }
    m
}
