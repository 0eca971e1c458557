//! Integration tests: the Download Sync Manager against real PostgreSQL (Properties 8, 9, 10, 13, 14, 15,
//! the delete guard, bad remote data, no write when nothing changed, JSON and timestamp comparison, downloads
//! of several chunks: exact mirror and ids, and a bad row in the last chunk rolling back the earlier ones).
//!
//! The tests keep their own list of each table's columns (they do not reuse the product's `TableSpec`), set
//! up both databases with plain SQL, run one download and compare both databases with plain SQL.
//! Time and bytes for 100k meters + 10k tenants are measured by `cargo bench --bench download`, not here.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

use postgres::types::ToSql;
use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use sync_process::db::ConnectionManager;
use sync_process::download::{DownloadSyncManager, MeterSyncResult, TenantChange, TenantSyncResult, CHUNK};
use sync_process::shutdown::Shutdown;

use crate::support::contract::TENANT_KEYS;
use crate::support::env::Env;
use crate::support::pg::DbPair;

const CASES: u64 = 100;
const MARKER: &str = "2000-01-01 00:00:00";

// ---------------------------------------------------------------------------------------------------------
// Environment: the shared `Env` (a migrated pair, the daemon's connection manager, direct clients), with the
// log capture installed and the download's entry points.

fn download_env() -> Env {
    download_env_with(|_, _| {})
}

/// `edit` may change the daemon's variables; it gets the fresh pair (e.g. to create a role first).
fn download_env_with(edit: impl FnOnce(&DbPair, &mut BTreeMap<String, String>)) -> Env {
    capture_installed();
    Env::builder().vars(&[("LOG_LEVEL", "info")]).edit(edit).build()
}

impl Env {
    fn download_manager(&self) -> DownloadSyncManager<'_> {
        DownloadSyncManager::new(&self.conns, &self.cfg)
    }

    fn meters(&self) -> MeterSyncResult {
        self.download_manager().sync_meter_configurations()
    }

    fn tenants(&self) -> TenantSyncResult {
        self.download_manager().sync_tenant_data()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The tables as the tests see them, and value pools.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    Name,
    NullableText,
    MeterType,
    Unit,
    Json,
    Timestamp,
}

struct Table {
    name: &'static str,
    key: &'static str,
    noun: &'static str,
    /// Compared columns in schema order.
    cols: &'static [(&'static str, Pool)],
}

const METERS_T: Table = Table {
    name: "meters",
    key: "meter_id",
    noun: "meter",
    cols: &[
        ("name", Pool::Name),
        ("location_id", Pool::NullableText),
        ("meter_type", Pool::MeterType),
        ("unit", Pool::Unit),
        ("configuration", Pool::Json),
        ("updated_at", Pool::Timestamp),
    ],
};

const TENANTS_T: Table = Table {
    name: "tenant",
    key: "tenant_id",
    noun: "tenant",
    cols: &[
        ("name", Pool::Name),
        ("configuration", Pool::Json),
        ("metadata", Pool::Json),
        ("updated_at", Pool::Timestamp),
    ],
};

const KEYS: &[&str] = &[
    "m-1", "m-2", "m-3", "m-4", "m-5", "m-6", "m-10", "M-1", "", "ü-1", "a,b", "q\"x", " sp ", "(p)",
];

fn long_name() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| "é".repeat(255))
}

/// `(input text, canonical id)`: inputs with the same id are the same value once stored.
fn pool(p: Pool) -> Vec<(Option<&'static str>, &'static str)> {
    let texts = |v: &[&'static str]| v.iter().map(|s| (Some(*s), *s)).collect::<Vec<_>>();
    match p {
        Pool::Name => {
            let mut v = texts(&[
                "",
                "a",
                "Meter A",
                "with,comma",
                "quote\"d",
                "paren(x)",
                "back\\slash",
                "ünïcødé ✓",
                "NULL",
            ]);
            v.push((Some(long_name()), "long"));
            v
        }
        Pool::NullableText => {
            let mut v = texts(&["", "loc-1", "loc 2", "NULL"]);
            v.push((None, "<null>"));
            v
        }
        Pool::MeterType => texts(&["electric", "water", ""]),
        Pool::Unit => texts(&["kWh", "m3", "l"]),
        Pool::Json => vec![
            (None, "<null>"),
            (Some("null"), "null"),
            (Some("{}"), "{}"),
            (Some("{\"a\": 1}"), "a1"),
            (Some("{\"a\":1}"), "a1"),
            (Some("  { \"a\" :\n1 }"), "a1"),
            (Some("{\"a\": 1, \"b\": [1, 2]}"), "a1b12"),
            (Some("{\"b\":[1,2],\"a\":1}"), "a1b12"),
            (Some("[1, 2]"), "[12]"),
            (Some("\"s\""), "s"),
            (Some("1.50"), "1.50"),
            (Some("1.5"), "1.5"),
            (Some("{\"n\": {\"x\": [true, false, null]}}"), "nested"),
            (Some("{\"u\": \"ü\\n\"}"), "unicode"),
        ],
        Pool::Timestamp => vec![
            (None, "<null>"),
            (Some("2024-01-01 00:00:00"), "A"),
            (Some("2024-01-01T00:00:00"), "A"),
            (Some("2024-01-01 00:00:00.000001"), "B"),
            (Some("2023-12-31 23:59:59.999999"), "C"),
            (Some("1999-01-08 04:05:06"), "D"),
            (Some("0044-03-15 12:00:00 BC"), "E"),
        ],
    }
}

/// One value as inserted (`input`) and what it equals (`canon`).
#[derive(Clone, Debug)]
struct V {
    input: Option<&'static str>,
    canon: &'static str,
}

fn gen_value(g: &mut Gen, p: Pool) -> V {
    let choices = pool(p);
    let (input, canon) = *g.choose(&choices).expect("non-empty pool");
    V { input, canon }
}

type State = BTreeMap<&'static str, Vec<V>>;

fn gen_row(g: &mut Gen, t: &Table) -> Vec<V> {
    t.cols.iter().map(|(_, p)| gen_value(g, *p)).collect()
}

fn gen_state(g: &mut Gen, t: &Table, presence: u8) -> State {
    let mut s = State::new();
    for k in KEYS {
        if u8::arbitrary(g) % 100 < presence {
            s.insert(*k, gen_row(g, t));
        }
    }
    s
}

/// Random edits: delete, insert or change one column, each with the given percentage per key.
fn edit(g: &mut Gen, t: &Table, base: &State, del: u8, ins: u8, change: u8) -> State {
    let mut s = base.clone();
    for k in KEYS {
        let roll = u8::arbitrary(g) % 100;
        match s.get_mut(k) {
            Some(row) => {
                if roll < del {
                    s.remove(k);
                } else if roll < del + change {
                    let i = usize::arbitrary(g) % row.len();
                    row[i] = gen_value(g, t.cols[i].1);
                }
            }
            None if roll < ins => {
                s.insert(k, gen_row(g, t));
            }
            None => {}
        }
    }
    s
}

#[derive(Clone, Debug)]
struct Case {
    local: State,
    remote: State,
}

/// General case: local and remote both edited from a common base; sometimes one side empty.
fn gen_general(g: &mut Gen, t: &Table) -> Case {
    let base = gen_state(g, t, 60);
    let local = edit(g, t, &base, 10, 10, 25);
    let remote = edit(g, t, &base, 10, 10, 25);
    match u8::arbitrary(g) % 10 {
        0 => Case {
            local: State::new(),
            remote,
        },
        1 => Case {
            local,
            remote: State::new(),
        },
        _ => Case { local, remote },
    }
}

macro_rules! case_type {
    ($name:ident, $table:expr, $gen:expr) => {
        #[derive(Clone, Debug)]
        struct $name(Case);
        impl Arbitrary for $name {
            fn arbitrary(g: &mut Gen) -> $name {
                $name($gen(g, &$table))
            }
        }
    };
}

case_type!(MeterCase, METERS_T, gen_general);
case_type!(TenantCase, TENANTS_T, gen_general);
// Property 9: the remote only adds rows (and changes some): no deletion, so no guard.
case_type!(NewMeterCase, METERS_T, |g: &mut Gen, t: &Table| {
    let local = gen_state(g, t, 50);
    let remote = edit(g, t, &local, 0, 40, 20);
    Case { local, remote }
});
// Property 14: the remote only changes columns of existing rows.
case_type!(TenantChangeCase, TENANTS_T, |g: &mut Gen, t: &Table| {
    let local = gen_state(g, t, 70);
    let mut remote = edit(g, t, &local, 0, 0, 50);
    // Sometimes several columns of one row.
    for row in remote.values_mut() {
        if u8::arbitrary(g) % 4 == 0 {
            for (i, (_, p)) in t.cols.iter().enumerate() {
                if bool::arbitrary(g) {
                    row[i] = gen_value(g, *p);
                }
            }
        }
    }
    Case { local, remote }
});

// ---------------------------------------------------------------------------------------------------------
// Setting up and reading back.

fn cast(p: Pool) -> &'static str {
    match p {
        Pool::Json => "::jsonb",
        Pool::Timestamp => "::timestamp",
        _ => "",
    }
}

fn read_expr(name: &str, p: Pool) -> String {
    match p {
        Pool::Json => format!("{name}::jsonb::text"),
        _ => format!("{name}::text"),
    }
}

/// Replaces the rows of `t` in `client` with `state`; local rows get synced_at = MARKER.
fn load(client: &mut Client, t: &Table, state: &State, local: bool) {
    client
        .batch_execute(&format!("DELETE FROM {}", t.name))
        .expect("emptying the table");
    if state.is_empty() {
        return;
    }
    let n = t.cols.len();
    let names: Vec<&str> = t.cols.iter().map(|(c, _)| *c).collect();
    let params: Vec<String> = (1..=n + 1).map(|i| format!("${i}::text[]")).collect();
    let values: Vec<String> = t
        .cols
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("v{}{}", i + 1, cast(*p)))
        .collect();
    let aliases: Vec<String> = (1..=n).map(|i| format!("v{i}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({key}, {names}{synced}) SELECT k, {values}{marker} FROM unnest({params}) AS u(k, {aliases})",
        table = t.name,
        key = t.key,
        names = names.join(", "),
        synced = if local { ", synced_at" } else { "" },
        values = values.join(", "),
        marker = if local { format!(", '{MARKER}'::timestamp") } else { String::new() },
        params = params.join(", "),
        aliases = aliases.join(", "),
    );
    let keys: Vec<&str> = state.keys().copied().collect();
    let cols: Vec<Vec<Option<&str>>> = (0..n).map(|i| state.values().map(|r| r[i].input).collect()).collect();
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![&keys];
    for c in &cols {
        p.push(c);
    }
    client.execute(&sql, &p).expect("loading rows");
}

/// key -> (compared values as text, synced_at as text or None on the remote).
type Snapshot = BTreeMap<String, (Vec<Option<String>>, Option<String>)>;

fn snapshot(client: &mut Client, t: &Table, local: bool) -> Snapshot {
    let exprs: Vec<String> = t.cols.iter().map(|(c, p)| read_expr(c, *p)).collect();
    let sql = format!(
        "SELECT {key}::text, {synced}, {exprs} FROM {table}",
        key = t.key,
        synced = if local { "synced_at::text" } else { "NULL::text" },
        exprs = exprs.join(", "),
        table = t.name
    );
    client
        .query(&sql, &[])
        .expect("reading rows")
        .iter()
        .map(|r| (r.get(0), ((2..2 + t.cols.len()).map(|i| r.get(i)).collect(), r.get(1))))
        .collect()
}

fn values_only(s: &Snapshot) -> BTreeMap<String, Vec<Option<String>>> {
    s.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
}

fn xmins(client: &mut Client, t: &Table) -> BTreeMap<String, String> {
    client
        .query(&format!("SELECT {}::text, xmin::text FROM {}", t.key, t.name), &[])
        .expect("reading xmin")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// What a download of `case` must report.
struct Expected {
    inserts: Vec<String>,
    updates: Vec<(String, Vec<String>)>,
    deletes: Vec<String>,
    refused: bool,
}

fn expected(t: &Table, case: &Case, ratio: f64) -> Expected {
    let inserts = case
        .remote
        .keys()
        .filter(|k| !case.local.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let deletes: Vec<String> = case
        .local
        .keys()
        .filter(|k| !case.remote.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    let updates = case
        .local
        .iter()
        .filter_map(|(k, old)| {
            let new = case.remote.get(k)?;
            let changed: Vec<String> = (0..old.len())
                .filter(|&i| old[i].canon != new[i].canon)
                .map(|i| t.cols[i].0.to_string())
                .collect();
            (!changed.is_empty()).then(|| (k.to_string(), changed))
        })
        .collect();
    let (l, r) = (case.local.len(), case.remote.len());
    let refused = (r == 0 && l > 0) || deletes.len() as f64 > ratio * l as f64;
    Expected {
        inserts,
        updates,
        deletes,
        refused,
    }
}

/// The common part of a report.
struct Report {
    success: bool,
    error: Option<String>,
    new_ids: Vec<String>,
    updated_ids: Vec<String>,
    deleted_ids: Vec<String>,
    counts: (u64, u64, u64),
    total: u64,
    changes: Option<Vec<TenantChange>>,
}

impl From<MeterSyncResult> for Report {
    fn from(r: MeterSyncResult) -> Report {
        Report {
            success: r.success,
            error: r.error,
            counts: (r.new_meters, r.updated_meters, r.deleted_meters),
            new_ids: r.new_meter_ids,
            updated_ids: r.updated_meter_ids,
            deleted_ids: r.deleted_meter_ids,
            total: r.total_meters,
            changes: None,
        }
    }
}

impl From<TenantSyncResult> for Report {
    fn from(r: TenantSyncResult) -> Report {
        Report {
            success: r.success,
            error: r.error,
            counts: (r.new_tenants, r.updated_tenants, r.deleted_tenants),
            new_ids: r.new_tenant_ids,
            updated_ids: r.updated_tenant_ids,
            deleted_ids: r.deleted_tenant_ids,
            total: r.total_tenants,
            changes: Some(r.tenant_changes),
        }
    }
}

fn sync(env: &Env, t: &Table) -> Report {
    if t.name == "meters" {
        env.meters().into()
    } else {
        env.tenants().into()
    }
}

/// Loads `case`, runs one download and checks everything; Err describes the first mismatch.
fn check_case(env: &mut Env, t: &Table, case: &Case) -> Result<(), String> {
    load(&mut env.local, t, &case.local, true);
    load(&mut env.remote, t, &case.remote, false);
    let before = snapshot(&mut env.local, t, true);
    let want = expected(t, case, env.cfg.download_max_delete_ratio);
    capture_start();
    let got = sync(env, t);
    let logs = capture_take();
    let after = snapshot(&mut env.local, t, true);
    let fail = |what: &str| Err(format!("{what}\nerror: {:?}\nlogs: {logs:#?}", got.error));

    if want.refused {
        if got.success || !got.error.as_deref().unwrap_or("").contains("refused") {
            return fail("expected the delete guard to refuse");
        }
        if after != before {
            return fail("a refused download changed the local table");
        }
        if got.total != case.local.len() as u64 {
            return fail("total after a refused download");
        }
        return Ok(());
    }
    if !got.success || got.error.is_some() {
        return fail("download failed");
    }
    let remote = snapshot(&mut env.remote, t, false);
    if values_only(&after) != values_only(&remote) {
        return fail(&format!(
            "local != remote after the download:\nlocal  {:?}\nremote {:?}",
            values_only(&after),
            values_only(&remote)
        ));
    }
    let want_updated: Vec<String> = want.updates.iter().map(|(k, _)| k.clone()).collect();
    if got.new_ids != want.inserts || got.updated_ids != want_updated || got.deleted_ids != want.deletes {
        return fail(&format!(
            "reported ids differ: new {:?} want {:?}; updated {:?} want {:?}; deleted {:?} want {:?}",
            got.new_ids, want.inserts, got.updated_ids, want_updated, got.deleted_ids, want.deletes
        ));
    }
    if got.counts
        != (
            want.inserts.len() as u64,
            want.updates.len() as u64,
            want.deletes.len() as u64,
        )
    {
        return fail("counts differ from the id lists");
    }
    if got.total != case.remote.len() as u64 {
        return fail("total is not the number of rows after the download");
    }
    if let Some(changes) = &got.changes {
        let want_changes: Vec<TenantChange> = want
            .updates
            .iter()
            .map(|(k, f)| TenantChange {
                tenant_id: k.clone(),
                changed_fields: f.clone(),
            })
            .collect();
        if *changes != want_changes {
            return fail(&format!("tenantChanges {changes:?}, want {want_changes:?}"));
        }
    }
    // synced_at: set on each written row, untouched elsewhere.
    let written: BTreeSet<&String> = want.inserts.iter().chain(want_updated.iter()).collect();
    for (k, (_, synced)) in &after {
        let marker = synced.as_deref() == Some(MARKER);
        if written.contains(k) == marker || synced.is_none() {
            return fail(&format!("synced_at of {k:?} is {synced:?}"));
        }
    }
    // Logs (when this test binary's logger is ours).
    if let Some(logs) = &logs {
        for k in &want.inserts {
            let name = case.remote[k.as_str()][0].input.unwrap_or("");
            let line = format!("new {} {} ({})", t.noun, k, log_text(name));
            if !logs.contains(&line) {
                return fail(&format!("missing log line {line:?}"));
            }
        }
        for (k, fields) in &want.updates {
            let line = format!("{} {} changed: {}", t.noun, k, fields.join(", "));
            if !logs.contains(&line) {
                return fail(&format!("missing log line {line:?}"));
            }
        }
    }
    Ok(())
}

/// A name as log lines show it: at most 100 characters.
fn log_text(s: &str) -> String {
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(100).collect::<String>())
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Log capture: a logger for this test binary that keeps the lines of threads that asked for them.

struct Capture;

static CAPTURED: Mutex<Option<HashMap<ThreadId, Vec<String>>>> = Mutex::new(None);
thread_local!(static CAPTURING: Cell<bool> = const { Cell::new(false) });

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if CAPTURING.with(Cell::get) {
            let mut map = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
            map.get_or_insert_with(HashMap::new)
                .entry(std::thread::current().id())
                .or_default()
                .push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// Whether our logger is installed. Another test of this binary may have installed one first (quickcheck
/// installs env_logger when it starts), then the log lines are not checked here; diff.rs checks their wording.
fn capture_installed() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = log::set_boxed_logger(Box::new(Capture)).is_ok();
        if ok {
            log::set_max_level(log::LevelFilter::Info);
        } else {
            eprintln!("download tests: another logger is installed; log lines are not checked");
        }
        ok
    })
}

fn capture_start() {
    if capture_installed() {
        CAPTURING.with(|c| c.set(true));
        let mut map = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
        map.get_or_insert_with(HashMap::new)
            .remove(&std::thread::current().id());
    }
}

/// The lines logged on this thread since `capture_start`, or None when not capturing.
fn capture_take() -> Option<Vec<String>> {
    if !CAPTURING.with(|c| c.replace(false)) {
        return None;
    }
    let mut map = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    Some(
        map.get_or_insert_with(HashMap::new)
            .remove(&std::thread::current().id())
            .unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------------------
// Properties: one database pair per property, reused across its cases.

thread_local!(static ENV: RefCell<Option<Env>> = const { RefCell::new(None) });

fn with_env(t: &Table, case: &Case) -> TestResult {
    ENV.with(|e| {
        let mut e = e.borrow_mut();
        let env = e.get_or_insert_with(download_env);
        match check_case(env, t, case) {
            Ok(()) => TestResult::passed(),
            Err(msg) => TestResult::error(format!("{msg}\ncase: {case:#?}")),
        }
    })
}

/// Drops this thread's pair at the end of a property test, also when it fails (a postgres client must not be
/// dropped by the thread-local destructors: it needs thread-locals of its own).
struct EnvGuard;

impl Drop for EnvGuard {
    fn drop(&mut self) {
        drop(ENV.with(|e| e.borrow_mut().take()));
    }
}

fn qc() -> QuickCheck {
    QuickCheck::new().tests(CASES).max_tests(CASES * 10).rng(Gen::new(20))
}

// **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
// For any remote and local meters (random states and random edits): after one download the local meters
// equal the remote ones on every compared column (or the delete guard refused and nothing changed), and
// the reported new/updated/deleted ids are exactly the difference.
fn prop_meter_upsert_correctness(c: MeterCase) -> TestResult {
    with_env(&METERS_T, &c.0)
}

#[test]
fn property_8_meter_upsert_correctness() {
    let _env = EnvGuard;
    capture_installed();
    qc().quickcheck(prop_meter_upsert_correctness as fn(MeterCase) -> TestResult);
}

// **Feature: database-sync-process, Property 9: New meter detection**
// For any remote that adds meters (and changes some): each inserted meter is reported in newMeterIds and
// the count, logged with its id and name, and no updated meter is reported as new.
fn prop_new_meter_detection(c: NewMeterCase) -> TestResult {
    with_env(&METERS_T, &c.0)
}

#[test]
fn property_9_new_meter_detection() {
    let _env = EnvGuard;
    capture_installed();
    qc().quickcheck(prop_new_meter_detection as fn(NewMeterCase) -> TestResult);
}

// **Feature: database-sync-process, Property 13: Tenant upsert correctness**
// For any remote and local tenants: after one download the local tenants equal the remote ones (or the
// guard refused and nothing changed), and the reported ids are exactly the difference.
fn prop_tenant_upsert_correctness(c: TenantCase) -> TestResult {
    with_env(&TENANTS_T, &c.0)
}

#[test]
fn property_13_tenant_upsert_correctness() {
    let _env = EnvGuard;
    capture_installed();
    qc().quickcheck(prop_tenant_upsert_correctness as fn(TenantCase) -> TestResult);
}

// **Feature: database-sync-process, Property 14: Tenant change tracking**
// For any edits of existing tenants: each updated tenant is reported with exactly the fields whose values
// differ (JSON compared as values: key order and whitespace do not count; SQL NULL differs from JSON null),
// in schema order, and logged with them.
fn prop_tenant_change_tracking(c: TenantChangeCase) -> TestResult {
    with_env(&TENANTS_T, &c.0)
}

#[test]
fn property_14_tenant_change_tracking() {
    let _env = EnvGuard;
    capture_installed();
    qc().quickcheck(prop_tenant_change_tracking as fn(TenantChangeCase) -> TestResult);
}

// ---------------------------------------------------------------------------------------------------------
// Examples.

fn seed(env: &mut Env) {
    env.remote
        .batch_execute(
            "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
             SELECT 'm-' || g, 'Meter ' || g, 'loc-' || g, 'electric', 'kWh', jsonb_build_object('a', g, 'b', 'x'),
                    timestamp '2024-01-01 00:00:00' + g * interval '1 minute'
             FROM generate_series(1, 10) g;
             INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
             SELECT 't-' || g, 'Tenant ' || g, '{\"plan\": \"basic\"}', jsonb_build_object('n', g),
                    timestamp '2024-01-01 00:00:00' FROM generate_series(1, 10) g;",
        )
        .expect("seeding the remote");
}

fn seeded() -> Env {
    let mut env = download_env();
    seed(&mut env);
    let (m, t) = (env.meters(), env.tenants());
    assert!(m.success && t.success, "{m:?} {t:?}");
    assert_eq!((m.new_meters, t.new_tenants), (10, 10));
    env
}

fn local_values(env: &mut Env, t: &Table) -> BTreeMap<String, Vec<Option<String>>> {
    values_only(&snapshot(&mut env.local, t, true))
}

fn remote_values(env: &mut Env, t: &Table) -> BTreeMap<String, Vec<Option<String>>> {
    values_only(&snapshot(&mut env.remote, t, false))
}

#[test]
fn nothing_changed_means_no_local_write() {
    let mut env = seeded();
    let (xm, xt) = (xmins(&mut env.local, &METERS_T), xmins(&mut env.local, &TENANTS_T));
    let (m, t) = (env.meters(), env.tenants());
    assert!(m.success && t.success);
    assert_eq!(
        (m.new_meters, m.updated_meters, m.deleted_meters, m.total_meters),
        (0, 0, 0, 10)
    );
    assert_eq!(
        (t.new_tenants, t.updated_tenants, t.deleted_tenants, t.total_tenants),
        (0, 0, 0, 10)
    );
    assert!(t.tenant_changes.is_empty());
    assert_eq!(xmins(&mut env.local, &METERS_T), xm, "a row was rewritten");
    assert_eq!(xmins(&mut env.local, &TENANTS_T), xt, "a row was rewritten");
}

#[test]
fn json_change_without_updated_at_bump_is_detected() {
    let mut env = seeded();
    env.remote
        .batch_execute(
            "UPDATE meters SET configuration = configuration || '{\"c\": true}' WHERE meter_id = 'm-3';
             UPDATE tenant SET metadata = '{\"n\": 99}' WHERE tenant_id = 't-4';",
        )
        .expect("editing the remote");
    let (m, t) = (env.meters(), env.tenants());
    assert_eq!(m.updated_meter_ids, vec!["m-3"]);
    assert_eq!(
        t.tenant_changes,
        vec![TenantChange {
            tenant_id: "t-4".into(),
            changed_fields: vec!["metadata".into()]
        }]
    );
    assert_eq!(local_values(&mut env, &METERS_T), remote_values(&mut env, &METERS_T));
    assert_eq!(local_values(&mut env, &TENANTS_T), remote_values(&mut env, &TENANTS_T));
}

#[test]
fn updated_at_alone_is_a_change() {
    let mut env = seeded();
    env.remote
        .batch_execute("UPDATE tenant SET updated_at = updated_at + interval '1 microsecond' WHERE tenant_id = 't-2'")
        .expect("editing the remote");
    let t = env.tenants();
    assert_eq!(
        t.tenant_changes,
        vec![TenantChange {
            tenant_id: "t-2".into(),
            changed_fields: vec!["updated_at".into()]
        }]
    );
    let local: String = env
        .local
        .query_one("SELECT updated_at::text FROM tenant WHERE tenant_id = 't-2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(local, "2024-01-01 00:00:00.000001");
}

#[test]
fn json_key_order_and_whitespace_do_not_count_but_sql_null_vs_json_null_does() {
    let mut env = seeded();
    // A remote `json` column keeps the text as written: different key order and whitespace, same value.
    env.remote
        .batch_execute(
            "ALTER TABLE tenant ALTER COLUMN configuration TYPE json USING configuration::json;
             UPDATE tenant SET configuration = '{ \"plan\" :\n  \"basic\" }';
             UPDATE meters SET configuration = ('{\"b\":   \"x\",' || '\"a\": ' || substr(meter_id, 3) || '}')::jsonb;",
        )
        .expect("editing the remote");
    let xt = xmins(&mut env.local, &TENANTS_T);
    let xm = xmins(&mut env.local, &METERS_T);
    let (m, t) = (env.meters(), env.tenants());
    assert!(m.success && t.success, "{m:?} {t:?}");
    assert_eq!((m.updated_meters, t.updated_tenants), (0, 0), "{m:?} {t:?}");
    assert_eq!(xmins(&mut env.local, &TENANTS_T), xt);
    assert_eq!(xmins(&mut env.local, &METERS_T), xm);

    // SQL NULL and JSON null are different values, both ways.
    env.remote
        .batch_execute(
            "UPDATE tenant SET metadata = NULL WHERE tenant_id = 't-1';
             UPDATE tenant SET metadata = 'null' WHERE tenant_id = 't-2';",
        )
        .unwrap();
    let t = env.tenants();
    assert_eq!(t.updated_tenant_ids, vec!["t-1", "t-2"]);
    let rows = env
        .local
        .query(
            "SELECT metadata IS NULL, metadata::text FROM tenant WHERE tenant_id IN ('t-1', 't-2') ORDER BY tenant_id",
            &[],
        )
        .unwrap();
    assert!(rows[0].get::<_, bool>(0));
    assert_eq!(rows[1].get::<_, Option<String>>(1).as_deref(), Some("null"));
    let t = env.tenants();
    assert_eq!(t.updated_tenants, 0, "{t:?}");
}

#[test]
fn timestamps_copied_verbatim_whatever_the_server_settings() {
    let env = seeded();
    let (l, r) = (env.pair.local.name().to_string(), env.pair.remote.name().to_string());
    let mut admin = crate::support::pg::PgServer::shared().admin_client();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {r} SET timezone = 'Asia/Tokyo'; ALTER DATABASE {r} SET DateStyle = 'SQL, DMY';
             ALTER DATABASE {l} SET timezone = 'America/New_York'; ALTER DATABASE {l} SET DateStyle = 'German';"
        ))
        .unwrap();
    // New sessions pick the settings up.
    let env = {
        drop(env.conns);
        let conns = ConnectionManager::new(&env.cfg, Shutdown::new()).unwrap();
        Env { conns, ..env }
    };
    let mut env = env;
    env.remote
        .batch_execute("UPDATE meters SET updated_at = '2024-03-31 02:30:00.123456' WHERE meter_id = 'm-1'")
        .unwrap();
    let m = env.meters();
    assert_eq!(m.updated_meter_ids, vec!["m-1"], "{m:?}");
    let mut local = env.pair.local.client();
    local.batch_execute("SET DateStyle = 'ISO'").unwrap();
    let v: String = local
        .query_one("SELECT updated_at::text FROM meters WHERE meter_id = 'm-1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "2024-03-31 02:30:00.123456");
    assert_eq!(env.meters().updated_meters, 0);
}

// Property 10 / 15: a broken table on the remote fails its own download only.

/// A remote role that may read `readable` only.
fn restricted_env(readable: &str) -> (Env, String) {
    let role = std::cell::RefCell::new(String::new());
    let env = download_env_with(|pair, map| {
        let name = format!("r_{}", pair.remote.name());
        let mut admin = pair.remote.client();
        admin.batch_execute(&format!("CREATE ROLE {name} LOGIN")).unwrap();
        map.insert("POSTGRES_CLIENT_USER".into(), name.clone());
        *role.borrow_mut() = name;
    });
    let name = role.into_inner();
    let mut env = env;
    env.remote
        .batch_execute(&format!("GRANT SELECT ON {readable} TO {name}"))
        .unwrap();
    (env, name)
}

fn drop_role(name: &str) {
    let mut admin = crate::support::pg::PgServer::shared().admin_client();
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {name}"));
}

// **Feature: database-sync-process, Property 10: Download failure isolation**
// The remote meters table missing or unreadable: the meter download fails (logged, error names the
// table), local meters stay as they were, and the tenant download still succeeds.
#[test]
fn property_10_broken_remote_meters_do_not_stop_tenants() {
    for how in ["dropped", "revoked"] {
        let (mut env, role) = if how == "dropped" {
            (download_env(), None)
        } else {
            let (env, role) = restricted_env("tenant");
            (env, Some(role))
        };
        env.local
            .batch_execute("INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-local', 'L', 'x', 'y')")
            .unwrap();
        seed(&mut env);
        if how == "dropped" {
            env.remote.batch_execute("DROP TABLE meters").unwrap();
        }
        let before = local_values(&mut env, &METERS_T);
        let (m, t) = (env.meters(), env.tenants());
        assert!(!m.success, "{how}: {m:?}");
        let err = m.error.clone().unwrap_or_default();
        assert!(err.starts_with("meters: "), "{how}: {err}");
        let cause = if how == "dropped" {
            "does not exist"
        } else {
            "permission denied"
        };
        assert!(err.contains(cause), "{how}: {err}");
        assert_eq!(m.total_meters, 1);
        assert_eq!(local_values(&mut env, &METERS_T), before);
        assert!(t.success, "{how}: {t:?}");
        assert_eq!(t.new_tenants, 10);
        drop(env);
        if let Some(role) = role {
            drop_role(&role);
        }
    }
}

// **Feature: database-sync-process, Property 15: Tenant download failure isolation**
// The remote tenant table missing or unreadable: the tenant download fails, local tenants stay as they
// were, and the meter download still succeeds.
#[test]
fn property_15_broken_remote_tenants_do_not_stop_meters() {
    for how in ["dropped", "revoked"] {
        let (mut env, role) = if how == "dropped" {
            (download_env(), None)
        } else {
            let (env, role) = restricted_env("meters");
            (env, Some(role))
        };
        env.local
            .batch_execute("INSERT INTO tenant (tenant_id, name) VALUES ('t-local', 'L')")
            .unwrap();
        seed(&mut env);
        if how == "dropped" {
            env.remote.batch_execute("DROP TABLE tenant").unwrap();
        }
        let before = local_values(&mut env, &TENANTS_T);
        let (m, t) = (env.meters(), env.tenants());
        assert!(!t.success, "{how}: {t:?}");
        let err = t.error.clone().unwrap_or_default();
        assert!(err.starts_with("tenant: "), "{how}: {err}");
        assert_eq!(t.total_tenants, 1);
        assert_eq!(local_values(&mut env, &TENANTS_T), before);
        assert!(m.success, "{how}: {m:?}");
        assert_eq!(m.new_meters, 10);
        drop(env);
        if let Some(role) = role {
            drop_role(&role);
        }
    }
}

#[test]
fn delete_guard_refuses_an_empty_remote() {
    let mut env = seeded();
    env.remote.batch_execute("DELETE FROM meters").unwrap();
    let xm = xmins(&mut env.local, &METERS_T);
    let m = env.meters();
    assert!(!m.success);
    let err = m.error.unwrap_or_default();
    assert!(
        err.starts_with("meters: refused") && err.contains("no rows while 10 rows are local"),
        "{err}"
    );
    assert_eq!(m.total_meters, 10);
    assert_eq!(xmins(&mut env.local, &METERS_T), xm);
}

#[test]
fn delete_guard_refuses_losing_60_percent_and_allows_40() {
    let mut env = seeded();
    // Lose 6 of 10, and also add one and change one: nothing at all is applied.
    env.remote
        .batch_execute(
            "DELETE FROM tenant WHERE tenant_id IN ('t-1', 't-2', 't-3', 't-4', 't-5', 't-6');
             INSERT INTO tenant (tenant_id, name) VALUES ('t-new', 'New');
             UPDATE tenant SET name = 'Changed' WHERE tenant_id = 't-7';",
        )
        .unwrap();
    let xt = xmins(&mut env.local, &TENANTS_T);
    let t = env.tenants();
    assert!(!t.success);
    let err = t.error.unwrap_or_default();
    assert!(
        err.contains("delete 6 of 10 local rows (60%)") && err.contains("DOWNLOAD_MAX_DELETE_RATIO=0.5"),
        "{err}"
    );
    assert_eq!(xmins(&mut env.local, &TENANTS_T), xt);

    env.remote
        .batch_execute("INSERT INTO tenant (tenant_id, name) VALUES ('t-1', 'Back'), ('t-2', 'Back')")
        .unwrap();
    let t = env.tenants();
    assert!(t.success, "{t:?}");
    assert_eq!(t.deleted_tenant_ids, vec!["t-3", "t-4", "t-5", "t-6"]);
    assert_eq!(t.new_tenant_ids, vec!["t-new"]);
    assert_eq!(t.updated_tenant_ids, vec!["t-1", "t-2", "t-7"]);
    assert_eq!(t.total_tenants, 7);
    assert_eq!(local_values(&mut env, &TENANTS_T), remote_values(&mut env, &TENANTS_T));
}

#[test]
fn bad_remote_data_fails_the_table_and_changes_nothing() {
    let mut env = seeded();
    env.remote
        .batch_execute(&format!(
            "ALTER TABLE meters ALTER COLUMN name TYPE VARCHAR(400);
             INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-7x', 'ok', 'e', 'u');
             UPDATE meters SET name = '{}' WHERE meter_id = 'm-7';
             UPDATE meters SET unit = 'MWh' WHERE meter_id = 'm-8';
             ALTER TABLE tenant ALTER COLUMN name DROP NOT NULL;
             INSERT INTO tenant (tenant_id, name) VALUES ('t-9x', NULL);",
            "n".repeat(300)
        ))
        .unwrap();
    let (xm, xt) = (xmins(&mut env.local, &METERS_T), xmins(&mut env.local, &TENANTS_T));
    let (m, t) = (env.meters(), env.tenants());
    assert!(!m.success && !t.success);
    let (me, te) = (m.error.unwrap_or_default(), t.error.unwrap_or_default());
    assert_eq!(
        me,
        "meters: bad remote data: meter_id \"m-7\": name is 300 characters, the local column holds 255"
    );
    assert_eq!(
        te,
        "tenant: bad remote data: tenant_id \"t-9x\": name is NULL, the local column is NOT NULL"
    );
    assert_eq!(xmins(&mut env.local, &METERS_T), xm);
    assert_eq!(xmins(&mut env.local, &TENANTS_T), xt);
    assert_eq!((m.total_meters, t.total_tenants), (10, 10));
}

// **Feature: database-sync-process, Property 3: Transaction atomicity**
// A database error in the middle of the local writes rolls all of them back.
#[test]
fn a_failed_write_rolls_the_whole_table_back() {
    let mut env = seeded();
    env.local
        .batch_execute("ALTER TABLE meters ADD CONSTRAINT no_bad_unit CHECK (unit <> 'bad')")
        .unwrap();
    env.remote
        .batch_execute(
            "DELETE FROM meters WHERE meter_id = 'm-1';
             UPDATE meters SET name = 'Renamed' WHERE meter_id = 'm-2';
             INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-a', 'A', 'e', 'kWh'), ('m-z', 'Z', 'e', 'bad');",
        )
        .unwrap();
    let before = snapshot(&mut env.local, &METERS_T, true);
    let m = env.meters();
    assert!(!m.success);
    let err = m.error.unwrap_or_default();
    assert!(err.starts_with("meters: ") && err.contains("no_bad_unit"), "{err}");
    assert_eq!(snapshot(&mut env.local, &METERS_T, true), before);
    env.remote
        .batch_execute("UPDATE meters SET unit = 'kWh' WHERE meter_id = 'm-z'")
        .unwrap();
    let m = env.meters();
    assert!(m.success, "{m:?}");
    assert_eq!(
        (m.new_meter_ids, m.updated_meter_ids, m.deleted_meter_ids),
        (
            vec!["m-a".to_string(), "m-z".into()],
            vec!["m-2".to_string()],
            vec!["m-1".to_string()]
        )
    );
}

#[test]
fn counts_and_result_json_shape() {
    let env = seeded();
    let mgr = env.download_manager();
    assert_eq!(mgr.local_meter_count().unwrap(), 10);
    assert_eq!(mgr.remote_meter_count().unwrap(), 10);
    assert_eq!(mgr.local_tenant_count().unwrap(), 10);
    assert_eq!(mgr.remote_tenant_count().unwrap(), 10);
    let json = serde_json::to_value(env.tenants()).unwrap();
    for k in TENANT_KEYS {
        assert!(json.get(k).is_some(), "missing {k} in {json}");
    }
}

// Downloads larger than one chunk: the rows are fetched, diffed, checked and written CHUNK keys at a time in
// one transaction.

/// Remote rows for keys `<prefix>000001..` (zero-padded, so key order is number order), with NULLs, JSON and
/// microseconds that vary from row to row.
fn fill_remote(env: &mut Env, prefix: &str, n: usize) {
    env.remote
        .batch_execute(&format!(
            "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
             SELECT '{prefix}' || lpad(g::text, 6, '0'), 'Meter ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'loc-' || g END,
                    'electric', 'kWh', CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'x', 1.50) END,
                    timestamp '2024-01-01 00:00:00' + g * interval '1.000001 second'
             FROM generate_series(1, {n}) g;
             INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
             SELECT '{prefix}' || lpad(g::text, 6, '0'), 'Tenant ' || g, jsonb_build_object('plan', 'p' || (g % 4)),
                    CASE WHEN g % 7 = 0 THEN 'null'::jsonb ELSE jsonb_build_object('n', g) END,
                    timestamp '2024-01-01 00:00:00' + g * interval '1 minute'
             FROM generate_series(1, {n}) g;"
        ))
        .expect("filling the remote");
}

/// The download report `local_before` -> `remote_after` must give: (new, updates with changed fields,
/// deleted), each in key order.
type Changes = (Vec<String>, Vec<(String, Vec<String>)>, Vec<String>);

fn changes(
    t: &Table,
    before: &BTreeMap<String, Vec<Option<String>>>,
    after: &BTreeMap<String, Vec<Option<String>>>,
) -> Changes {
    let new = after.keys().filter(|k| !before.contains_key(*k)).cloned().collect();
    let deleted = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
    let updated = before
        .iter()
        .filter_map(|(k, old)| {
            let new = after.get(k)?;
            let fields: Vec<String> = (0..old.len())
                .filter(|&i| old[i] != new[i])
                .map(|i| t.cols[i].0.to_string())
                .collect();
            (!fields.is_empty()).then(|| (k.clone(), fields))
        })
        .collect();
    (new, updated, deleted)
}

#[test]
fn a_first_download_of_several_chunks_mirrors_exactly() {
    let n = 3 * CHUNK + 7;
    let mut env = download_env();
    fill_remote(&mut env, "k-", n);
    let (m, t) = (env.meters(), env.tenants());
    assert!(m.success && t.success, "{:?} {:?}", m.error, t.error);
    for (table, new_ids) in [(&METERS_T, &m.new_meter_ids), (&TENANTS_T, &t.new_tenant_ids)] {
        let remote = remote_values(&mut env, table);
        assert_eq!(remote.len(), n);
        assert!(
            *new_ids == remote.keys().cloned().collect::<Vec<_>>(),
            "{}: the new ids are not exactly the remote keys in order",
            table.name
        );
        assert!(
            local_values(&mut env, table) == remote,
            "{}: local differs from remote",
            table.name
        );
    }
    assert_eq!(
        (m.new_meters, m.updated_meters, m.deleted_meters, m.total_meters),
        (n as u64, 0, 0, n as u64)
    );
    assert_eq!(
        (t.new_tenants, t.updated_tenants, t.deleted_tenants, t.total_tenants),
        (n as u64, 0, 0, n as u64)
    );
    assert!(m.updated_meter_ids.is_empty() && m.deleted_meter_ids.is_empty() && t.tenant_changes.is_empty());

    // Then changes in every chunk: updates of one or two columns, deletions (9%), and more than a chunk of
    // new keys, some sorting before the existing ones.
    env.remote
        .batch_execute(&format!(
            "UPDATE tenant SET metadata = jsonb_build_object('n', 0) WHERE substr(tenant_id, 3)::int % 5 = 0;
             UPDATE tenant SET updated_at = updated_at + interval '1 microsecond' WHERE substr(tenant_id, 3)::int % 7 = 0;
             DELETE FROM tenant WHERE substr(tenant_id, 3)::int % 11 = 0;
             INSERT INTO tenant (tenant_id, name) SELECT 'a-' || g, 'New ' || g FROM generate_series(1, {CHUNK} + 3) g;"
        ))
        .unwrap();
    let before = local_values(&mut env, &TENANTS_T);
    let remote = remote_values(&mut env, &TENANTS_T);
    let (want_new, want_updates, want_deleted) = changes(&TENANTS_T, &before, &remote);
    let xmin_before = xmins(&mut env.local, &TENANTS_T);
    let t = env.tenants();
    assert!(t.success, "{:?}", t.error);
    assert!(t.new_tenant_ids == want_new, "new ids differ");
    assert!(t.deleted_tenant_ids == want_deleted, "deleted ids differ");
    let want_changes: Vec<TenantChange> = want_updates
        .iter()
        .map(|(k, f)| TenantChange {
            tenant_id: k.clone(),
            changed_fields: f.clone(),
        })
        .collect();
    assert!(t.tenant_changes == want_changes, "tenantChanges differ");
    assert!(want_changes.iter().any(|c| c.changed_fields.len() == 2));
    assert_eq!(
        t.updated_tenant_ids,
        want_updates.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    assert_eq!(t.total_tenants, remote.len() as u64);
    assert!(
        local_values(&mut env, &TENANTS_T) == remote,
        "local differs from remote"
    );
    // Unchanged rows were not written.
    let xmin_after = xmins(&mut env.local, &TENANTS_T);
    let updated: BTreeSet<&String> = want_updates.iter().map(|(k, _)| k).collect();
    for (k, x) in &xmin_before {
        if remote.contains_key(k) && !updated.contains(k) {
            assert_eq!(xmin_after.get(k), Some(x), "unchanged row {k} was rewritten");
        }
    }
    let (m, t) = (env.meters(), env.tenants());
    assert_eq!((m.new_meters, m.updated_meters, m.deleted_meters), (0, 0, 0));
    assert_eq!((t.new_tenants, t.updated_tenants, t.deleted_tenants), (0, 0, 0));
}

#[test]
fn a_bad_row_in_the_last_chunk_leaves_the_local_table_as_it_was() {
    let n = 3 * CHUNK + 7;
    let mut env = seeded();
    // Autovacuum must not truncate the pages that the rolled-back chunks leave behind (measured below).
    env.local
        .batch_execute("ALTER TABLE meters SET (autovacuum_enabled = false)")
        .unwrap();
    fill_remote(&mut env, "n-", n);
    let last = format!("n-{n:06}");
    env.remote
        .batch_execute(&format!(
            "DELETE FROM meters WHERE meter_id = 'm-1';
             UPDATE meters SET name = 'Renamed' WHERE meter_id = 'm-2';
             ALTER TABLE meters ALTER COLUMN name TYPE VARCHAR(400);
             UPDATE meters SET name = repeat('n', 300) WHERE meter_id = '{last}';"
        ))
        .unwrap();
    let size = |env: &mut Env| -> i64 {
        env.local
            .query_one("SELECT pg_relation_size('meters')", &[])
            .unwrap()
            .get(0)
    };
    let (before, xmin_before, size_before) = (
        snapshot(&mut env.local, &METERS_T, true),
        xmins(&mut env.local, &METERS_T),
        size(&mut env),
    );
    let m = env.meters();
    assert!(!m.success);
    assert_eq!(
        m.error.as_deref().unwrap_or(""),
        format!("meters: bad remote data: meter_id \"{last}\": name is 300 characters, the local column holds 255")
    );
    assert_eq!(m.total_meters, 10);
    assert!(m.new_meter_ids.is_empty() && m.updated_meter_ids.is_empty() && m.deleted_meter_ids.is_empty());
    assert!(
        snapshot(&mut env.local, &METERS_T, true) == before,
        "the local table changed"
    );
    assert_eq!(xmins(&mut env.local, &METERS_T), xmin_before);
    // The earlier chunks had been written (the table's file grew) before the last one failed.
    let grown = size(&mut env) - size_before;
    assert!(
        grown > 8192 * 50,
        "the table grew by {grown} bytes only: were the earlier chunks written?"
    );

    env.remote
        .batch_execute(&format!("UPDATE meters SET name = 'fixed' WHERE meter_id = '{last}'"))
        .unwrap();
    let m = env.meters();
    assert!(m.success, "{:?}", m.error);
    assert_eq!((m.new_meters, m.total_meters), (n as u64, n as u64 + 9));
    assert_eq!(
        (m.updated_meter_ids, m.deleted_meter_ids),
        (vec!["m-2".to_string()], vec!["m-1".to_string()])
    );
    assert!(local_values(&mut env, &METERS_T) == remote_values(&mut env, &METERS_T));
}
