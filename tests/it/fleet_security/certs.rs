//! Client certificates: `cert` authentication and `clientcert=verify-full` on top of a password, through the
//! daemon's own pools and TLS connector; each refusal names the database and the reason.

use std::collections::BTreeMap;

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::error::{Error, Side};
use sync_process::shutdown::Shutdown;

use super::*;
use crate::support::daemon::run_command;

/// Connects both sides (in parallel) as the daemon does and asks each server for the session's client
/// certificate subject (pg_stat_ssl.client_dn). Returns (local, remote).
fn connect_both(vars: &BTreeMap<String, String>) -> [Result<String, Error>; 2] {
    let cfg = Config::from_map(vars).unwrap_or_else(|e| panic!("valid configuration expected: {e}"));
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    let probe = |side: Side| -> Result<String, Error> {
        conns.test(side)?;
        let db = conns.db(side);
        let mut c = db.try_get()?;
        let row = c
            .query_one(
                "SELECT coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                &[],
            )
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

fn assert_connected_as(results: [Result<String, Error>; 2], cn: &str, case: &str) {
    for (side, r) in ["local", "remote"].iter().zip(results) {
        match r {
            Ok(dn) => assert_eq!(
                dn,
                format!("/CN={cn}"),
                "{case}: the {side} session's client certificate"
            ),
            Err(e) => panic!("{case}: the {side} side failed: {e}"),
        }
    }
}

/// Both sides failed; each message names the side and database (`local database 127.0.0.1:port/postgres`)
/// and contains every one of `causes`.
fn assert_refused(results: [Result<String, Error>; 2], causes: &[&str], case: &str) {
    let target = format!("{HOST}:{}/postgres", fleet_server().pg.port());
    for (side, r) in ["local", "remote"].iter().zip(results) {
        let text = match r {
            Ok(dn) => panic!("{case}: the {side} side connected ({dn}) but must not"),
            Err(e) => e.to_string(),
        };
        assert!(
            text.contains(&format!("{side} database {target}")),
            "{case}: {side}: {text}"
        );
        for cause in causes {
            assert!(text.contains(cause), "{case}: {side}: no {cause:?} in: {text}");
        }
    }
}

/// A role in `group` (and with `password`, if any).
fn role_in(group: &str, prefix: &str, password: Option<&str>) -> String {
    let role = unique_role(prefix);
    let pw = password.map(|p| format!(" PASSWORD '{p}'")).unwrap_or_default();
    fleet_server()
        .pg
        .admin_client()
        .batch_execute(&format!("CREATE ROLE {role} LOGIN{pw} IN ROLE {group}"))
        .expect("creating a role");
    role
}

#[test]
fn client_cert_authenticates_a_cert_role_without_a_password_in_every_verifying_mode() {
    let s = fleet_server();
    let dir = TempDir::new("sync-process-certs");
    let role = role_in(CERT_GROUP, "box_cert", None);
    let (cert, key) = s.client_ca.client(&role, 30, dir.path(), "box");
    for mode in ["require", "verify-ca", "verify-full"] {
        // No password variable at all: certificate authentication needs none.
        let vars = with_cert(tls_vars(&role, mode), &cert, &key);
        assert_connected_as(connect_both(&vars), &role, mode);
    }
    // check-config names the certificate it presents.
    let out = run_command(
        &["check-config"],
        &with_cert(tls_vars(&role, "verify-full"), &cert, &key),
    );
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let shown = format!(
        "connected (client certificate {}, CN={role}, valid until ",
        cert.display()
    );
    assert!(out.stdout.contains(&shown), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("sslcert={}", cert.display())),
        "{}",
        out.stdout
    );
    // Without the certificate the same role is refused by the server, and the message says why.
    let mut no_cert = tls_vars(&role, "verify-full");
    for side in ["SYNC", "CLIENT"] {
        no_cert.insert(format!("POSTGRES_{side}_PASSWORD"), "unused".into());
    }
    assert_refused(
        connect_both(&no_cert),
        &[
            "connection requires a valid client certificate",
            &format!("refused for user \"{role}\""),
        ],
        "no certificate",
    );
}

#[test]
fn client_cert_verify_full_on_top_of_a_password_needs_both() {
    let s = fleet_server();
    let dir = TempDir::new("sync-process-certs");
    let password = "cert-Pw-7c1e";
    let role = role_in(CERT_PW_GROUP, "box_certpw", Some(password));
    let (cert, key) = s.client_ca.client(&role, 30, dir.path(), "box");
    let mut vars = with_cert(tls_vars(&role, "verify-full"), &cert, &key);
    for side in ["SYNC", "CLIENT"] {
        vars.insert(format!("POSTGRES_{side}_PASSWORD"), password.into());
    }
    assert_connected_as(connect_both(&vars), &role, "certificate and password");

    // The right certificate with a wrong password.
    let mut wrong_pw = vars.clone();
    for side in ["SYNC", "CLIENT"] {
        wrong_pw.insert(format!("POSTGRES_{side}_PASSWORD"), "wrong-Pw-0000".into());
    }
    assert_refused(
        connect_both(&wrong_pw),
        &["password authentication failed", "_PASSWORD"],
        "wrong password",
    );
    // The password with another box's certificate (CN = another role): verify-full compares the CN. The
    // server says only "password authentication failed" (the CN mismatch goes to its log), so the message
    // names both possible causes.
    let (other_cert, other_key) = s.client_ca.client("some_other_box", 30, dir.path(), "other");
    let other = with_cert(vars.clone(), &other_cert, &other_key);
    assert_refused(
        connect_both(&other),
        &[
            "password authentication failed",
            "clientcert=verify-full",
            "CN of the client certificate",
            "_SSLCERT",
        ],
        "another box's certificate",
    );
    assert!(
        !format!("{:?}", connect_both(&other)).contains(password),
        "no password in the errors"
    );
}

#[test]
fn client_cert_refusals_name_the_database_and_the_reason() {
    let s = fleet_server();
    let dir = TempDir::new("sync-process-certs");
    let role = role_in(CERT_GROUP, "box_cert", None);

    // A certificate from a CA the server does not trust: the server ends the handshake.
    let (rogue_cert, rogue_key) = s.rogue_ca.client(&role, 30, dir.path(), "rogue");
    let rogue = connect_both(&with_cert(tls_vars(&role, "verify-full"), &rogue_cert, &rogue_key));
    // The server's alert ("unknown ca") usually arrives; under TLS 1.3 it can be lost to the connection's
    // reset, and then the message still points at the certificate.
    for (side, r) in ["local", "remote"].iter().zip(&rogue) {
        let text = r.as_ref().err().map(ToString::to_string).unwrap_or_default();
        assert!(
            (text.contains("unknown ca") && text.contains("the server does not trust the CA that issued"))
                || text.contains("it may have refused the client certificate"),
            "{side}: {text}"
        );
    }
    assert_refused(rogue, &["_SSLCERT"], "certificate from an unknown CA");

    // An expired certificate is not even offered: the message says when it expired and what to do.
    let (old_cert, old_key) = s.client_ca.client(&role, -1, dir.path(), "expired");
    let expired = connect_both(&with_cert(tls_vars(&role, "verify-full"), &old_cert, &old_key));
    assert_refused(
        expired,
        &[
            "client certificate",
            "expired at",
            &old_cert.display().to_string(),
            "_SSLCERT",
        ],
        "expired certificate",
    );

    // A valid certificate of another box (CN = another role) for this role: `cert` compares the CN.
    let other_role = role_in(CERT_GROUP, "box_cert", None);
    let (other_cert, other_key) = s.client_ca.client(&other_role, 30, dir.path(), "other");
    let other = connect_both(&with_cert(tls_vars(&role, "verify-full"), &other_cert, &other_key));
    assert_refused(
        other,
        &[
            &format!("certificate authentication failed for user \"{role}\""),
            "its CN must be the user name",
        ],
        "another box's certificate",
    );

    // Configuration errors (exit 2) name the variable, hence the database, and the file.
    let (cert, key) = s.client_ca.client(&role, 30, dir.path(), "box");
    let check = |vars: &BTreeMap<String, String>| {
        let out = run_command(&["check-config"], vars);
        assert_eq!(out.status.code(), Some(2), "{}{}", out.stdout, out.stderr);
        out.stderr
    };
    let mut no_key = with_cert(tls_vars(&role, "verify-full"), &cert, &key);
    no_key.remove("POSTGRES_CLIENT_SSLKEY");
    let err = check(&no_key);
    assert!(
        err.contains("POSTGRES_CLIENT_SSLKEY: not set, but POSTGRES_CLIENT_SSLCERT is"),
        "{err}"
    );
    let mut missing_key = with_cert(tls_vars(&role, "verify-full"), &cert, &key);
    let gone = dir.path().join("gone.key");
    missing_key.insert("POSTGRES_SYNC_SSLKEY".into(), gone.display().to_string());
    let err = check(&missing_key);
    assert!(
        err.contains("POSTGRES_SYNC_SSLKEY") && err.contains(&gone.display().to_string()),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = check(&with_cert(tls_vars(&role, "verify-full"), &cert, &key));
    assert!(
        err.contains("POSTGRES_CLIENT_SSLKEY") && err.contains(&key.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );
}
