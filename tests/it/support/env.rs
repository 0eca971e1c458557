//! [`Env`]: one test's world, built once here: a fresh [`DbPair`], the daemon's variables for it (with the
//! remote optionally behind a [`FaultProxy`]), the checked [`Config`], the daemon's [`ConnectionManager`] and a
//! direct superuser client on each side. Also the small helpers every area needs: [`count`], [`once_json`],
//! [`closed_port`] and [`migrate`].
//!
//! Migrations always go direct, as the superuser (never through the proxy a test may cut, nor as a restricted
//! role the test configures for the daemon).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};

use postgres::Client;
use serde_json::Value;
use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::shutdown::Shutdown;

use super::daemon::{run_command, RunOutput};
use super::pg::{self, DbPair};
use super::proxy::FaultProxy;

/// Which sides [`EnvBuilder::build`] migrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrate {
    Nothing,
    Local,
    Both,
}

/// A database pair with the daemon's configuration. Field order is drop order: the clients and pools close
/// before the proxy stops and the databases are dropped.
pub struct Env {
    /// Direct superuser connection to the local database.
    pub local: Client,
    /// Direct superuser connection to the remote database (never through the proxy).
    pub remote: Client,
    /// The daemon's pools, built from `cfg`.
    pub conns: ConnectionManager,
    pub cfg: Config,
    /// The daemon's variables (for the binary: `once_json`, `Daemon::spawn`).
    pub map: BTreeMap<String, String>,
    /// The proxy in front of the remote, when built with [`EnvBuilder::remote_via_proxy`].
    pub proxy: Option<FaultProxy>,
    pub pair: DbPair,
}

/// How to build an [`Env`]; start with [`Env::builder`].
pub struct EnvBuilder<'a> {
    pair: Option<DbPair>,
    vars: Vec<(String, String)>,
    proxy: bool,
    migrate: Migrate,
    edit: Option<Edit<'a>>,
}

type Edit<'a> = Box<dyn FnOnce(&DbPair, &mut BTreeMap<String, String>) + 'a>;

impl Env {
    /// A fresh pair, both sides migrated, the harness's variables plus `vars`.
    pub fn new(vars: &[(&str, &str)]) -> Env {
        Env::builder().vars(vars).build()
    }

    /// Defaults: a fresh pair on the shared server, both sides migrated, no proxy.
    pub fn builder() -> EnvBuilder<'static> {
        EnvBuilder {
            pair: None,
            vars: Vec::new(),
            proxy: false,
            migrate: Migrate::Both,
            edit: None,
        }
    }

    /// The proxy in front of the remote (panics when the Env was built without one).
    pub fn proxy(&self) -> &FaultProxy {
        self.proxy.as_ref().expect("this Env was built with remote_via_proxy()")
    }

    /// Runs `sync-process once` with this Env's variables and parses its JSON.
    pub fn once_json(&self) -> (RunOutput, Value) {
        once_json(&self.map)
    }
}

impl<'a> EnvBuilder<'a> {
    /// Use this pair (e.g. on servers the test starts, stops or configures) instead of a fresh one.
    pub fn on(mut self, pair: DbPair) -> EnvBuilder<'a> {
        self.pair = Some(pair);
        self
    }

    /// Sets the daemon's variables (over the harness's).
    pub fn vars(mut self, vars: &[(&str, &str)]) -> EnvBuilder<'a> {
        self.vars
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Reach the remote through a [`FaultProxy`] (the test cuts, delays or black-holes it).
    pub fn remote_via_proxy(mut self) -> EnvBuilder<'a> {
        self.proxy = true;
        self
    }

    pub fn migrate(mut self, sides: Migrate) -> EnvBuilder<'a> {
        self.migrate = sides;
        self
    }

    /// Edits the daemon's variables last, with the pair at hand (e.g. to create a role and log in as it).
    pub fn edit<'b>(self, edit: impl FnOnce(&DbPair, &mut BTreeMap<String, String>) + 'b) -> EnvBuilder<'b>
    where
        'a: 'b,
    {
        EnvBuilder {
            pair: self.pair,
            vars: self.vars,
            proxy: self.proxy,
            migrate: self.migrate,
            edit: Some(Box::new(edit)),
        }
    }

    pub fn build(self) -> Env {
        let pair = self.pair.unwrap_or_else(DbPair::new);
        let proxy = self
            .proxy
            .then(|| FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.remote.port()))));
        let mut map = match &proxy {
            Some(p) => pg::env_map_with_remote(&pair, pg::HOST, p.port()),
            None => pg::env_map(&pair),
        };
        map.extend(self.vars);
        if let Some(edit) = self.edit {
            edit(&pair, &mut map);
        }
        migrate(&pair, self.migrate);
        let cfg = Config::from_map(&map).expect("the test configuration is valid");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
        Env {
            local: pair.local.client(),
            remote: pair.remote.client(),
            conns,
            cfg,
            map,
            proxy,
            pair,
        }
    }
}

/// Migrates `sides` of `pair`, direct and as the superuser.
pub fn migrate(pair: &DbPair, sides: Migrate) {
    if sides == Migrate::Nothing {
        return;
    }
    let admin = Config::from_map(&pg::env_map(pair)).expect("the admin configuration is valid");
    let conns = ConnectionManager::new(&admin, Shutdown::new()).expect("admin connection manager");
    sync_process::migrate::migrate(&conns.local, false).expect("migrating local");
    if sides == Migrate::Both {
        sync_process::migrate::migrate(&conns.remote, false).expect("migrating remote");
    }
}

/// The one value of a one-row, one-column `bigint` query (e.g. `SELECT count(*) FROM ...`).
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Runs `sync-process once` with exactly `map` and parses the JSON it prints (the process must print one,
/// whatever its exit code; the panic shows the exit code, stdout and the end of stderr).
pub fn once_json(map: &BTreeMap<String, String>) -> (RunOutput, Value) {
    let out = run_command(&["once"], map);
    let json = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`once` printed no JSON ({e}), exit {:?}\nstdout: {}\nstderr (end): {}",
            out.status.code(),
            shorten(&out.stdout, 3000),
            tail(&out.stderr, 3000)
        )
    });
    (out, json)
}

/// A loopback port nobody listens on (it was free a moment ago).
pub fn closed_port() -> u16 {
    TcpListener::bind((pg::HOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// At most the first `n` bytes (or so) of `s`, for failure messages.
fn shorten(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `n` bytes (or so) of a log, for failure messages.
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
