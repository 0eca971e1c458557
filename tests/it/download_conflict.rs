//! Conflicts on the mirrored tables (DOWNLOAD_CONFLICT_POLICY): a meter or tenant changed or deleted locally
//! since it was last mirrored is reported (conflictMeterIds / conflictTenantIds, a warning naming the key and
//! the columns), overwritten under remote-wins, left alone under keep-local until the local change is undone;
//! a row changed only remotely never is. Against real servers: the digests live in the local
//! sync_mirror_digest table and are written in the download's transaction.

use std::collections::{BTreeMap, BTreeSet};

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use sync_process::config::ConflictPolicy;
use sync_process::download::{DownloadSyncManager, MeterSyncResult, TenantSyncResult, CONFLICT_LINES};

use crate::support::env::{count, Env};

const KEEP: ConflictPolicy = ConflictPolicy::KeepLocal;
const REMOTE: ConflictPolicy = ConflictPolicy::RemoteWins;

fn meters(env: &Env, policy: ConflictPolicy) -> MeterSyncResult {
    let mut cfg = env.cfg.clone();
    cfg.download_conflict_policy = policy;
    let r = DownloadSyncManager::new(&env.conns, &cfg).sync_meter_configurations();
    assert!(r.success, "{r:?}");
    r
}

fn tenants(env: &Env, policy: ConflictPolicy) -> TenantSyncResult {
    let mut cfg = env.cfg.clone();
    cfg.download_conflict_policy = policy;
    let r = DownloadSyncManager::new(&env.conns, &cfg).sync_tenant_data();
    assert!(r.success, "{r:?}");
    r
}

/// Ten meters and ten tenants on the remote, mirrored once.
fn mirrored() -> Env {
    let mut env = Env::new(&[]);
    env.remote
        .batch_execute(
            "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
             SELECT 'm-' || g, 'Meter ' || g, 'loc-' || g, 'electric', 'kWh', jsonb_build_object('a', g),
                    timestamp '2024-01-01 00:00:00' + g * interval '1 minute'
             FROM generate_series(1, 10) g;
             INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
             SELECT 't-' || g, 'Tenant ' || g, '{\"plan\": \"basic\"}', jsonb_build_object('n', g),
                    timestamp '2024-01-01 00:00:00' FROM generate_series(1, 10) g;",
        )
        .expect("seeding the remote");
    let (m, t) = (meters(&env, REMOTE), tenants(&env, REMOTE));
    assert_eq!((m.new_meters, t.new_tenants), (10, 10));
    assert!(m.conflict_meter_ids.is_empty() && t.conflict_tenant_ids.is_empty());
    assert_eq!(digests(&mut env, "meters"), 10);
    assert_eq!(digests(&mut env, "tenant"), 10);
    env
}

fn digests(env: &mut Env, table: &str) -> i64 {
    count(
        &mut env.local,
        &format!("SELECT count(*) FROM sync_mirror_digest WHERE table_name = '{table}'"),
    )
}

/// key -> compared values as text, of one side.
fn rows(c: &mut postgres::Client, table: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let sql = match table {
        "meters" => {
            "SELECT meter_id::text, name::text, location_id::text, meter_type::text, unit::text, \
                     configuration::text, updated_at::text FROM meters"
        }
        _ => "SELECT tenant_id::text, name::text, configuration::text, metadata::text, updated_at::text FROM tenant",
    };
    c.query(sql, &[])
        .expect("reading rows")
        .iter()
        .map(|r| (r.get(0), (1..r.len()).map(|i| r.get(i)).collect()))
        .collect()
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn remote_wins_overwrites_a_local_change_and_reports_it_but_never_a_remote_only_change() {
    let mut env = mirrored();
    env.local
        .batch_execute(
            "UPDATE meters SET name = 'renamed here' WHERE meter_id = 'm-1';
             UPDATE meters SET synced_at = timestamp '1999-01-01' WHERE meter_id = 'm-2';
             UPDATE meters SET unit = 'Wh', configuration = '{\"a\": 0}' WHERE meter_id = 'm-4';",
        )
        .expect("local edits");
    env.remote
        .batch_execute("UPDATE meters SET name = 'renamed centrally' WHERE meter_id IN ('m-3', 'm-4');")
        .expect("remote edits");
    let m = meters(&env, REMOTE);
    // m-1 changed here, m-4 on both sides; m-2's synced_at alone is no change, m-3 changed only remotely.
    assert_eq!(m.conflict_meter_ids, ids(&["m-1", "m-4"]));
    assert_eq!(m.updated_meter_ids, ids(&["m-1", "m-3", "m-4"]));
    assert_eq!(rows(&mut env.local, "meters"), rows(&mut env.remote, "meters"));
    // Overwritten and recorded: nothing left to report.
    let again = meters(&env, REMOTE);
    assert!(
        again.conflict_meter_ids.is_empty() && again.updated_meter_ids.is_empty(),
        "{again:?}"
    );
    assert_eq!(digests(&mut env, "meters"), 10);
}

#[test]
fn keep_local_leaves_the_row_and_reports_it_every_cycle_until_the_change_is_undone() {
    let mut env = mirrored();
    env.local
        .execute("UPDATE meters SET name = 'kept here' WHERE meter_id = 'm-5'", &[])
        .expect("local edit");
    env.remote
        .batch_execute(
            "UPDATE meters SET meter_type = 'water' WHERE meter_id IN ('m-5', 'm-6');
             INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-11', 'Meter 11', 'electric', 'kWh');",
        )
        .expect("remote edits");
    let remote = rows(&mut env.remote, "meters");
    for cycle in 0..3 {
        let m = meters(&env, KEEP);
        assert_eq!(m.conflict_meter_ids, ids(&["m-5"]), "cycle {cycle}");
        if cycle == 0 {
            assert_eq!((m.updated_meter_ids, m.new_meter_ids), (ids(&["m-6"]), ids(&["m-11"])));
        } else {
            assert!(m.updated_meter_ids.is_empty() && m.new_meter_ids.is_empty(), "{m:?}");
        }
        let local = rows(&mut env.local, "meters");
        assert_eq!(local["m-5"][0].as_deref(), Some("kept here"), "the local change stays");
        assert_eq!(
            local["m-5"][2].as_deref(),
            Some("electric"),
            "no column of it is overwritten"
        );
        assert_eq!(local["m-6"], remote["m-6"]);
    }
    // Undone: the row as it was last mirrored. No conflict any more; the remote's change comes down.
    env.local
        .execute("UPDATE meters SET name = 'Meter 5' WHERE meter_id = 'm-5'", &[])
        .expect("undoing the local edit");
    let m = meters(&env, KEEP);
    assert!(m.conflict_meter_ids.is_empty(), "{m:?}");
    assert_eq!(m.updated_meter_ids, ids(&["m-5"]));
    assert_eq!(rows(&mut env.local, "meters"), remote);
    assert!(meters(&env, KEEP).conflict_meter_ids.is_empty());
}

#[test]
fn a_kept_change_is_overwritten_once_the_policy_becomes_remote_wins() {
    let mut env = mirrored();
    env.local
        .execute(
            "UPDATE tenant SET metadata = '{\"local\": true}' WHERE tenant_id = 't-2'",
            &[],
        )
        .expect("local edit");
    assert_eq!(tenants(&env, KEEP).conflict_tenant_ids, ids(&["t-2"]));
    assert_eq!(tenants(&env, KEEP).conflict_tenant_ids, ids(&["t-2"]));
    let t = tenants(&env, REMOTE);
    assert_eq!(t.conflict_tenant_ids, ids(&["t-2"]));
    assert_eq!(t.updated_tenant_ids, ids(&["t-2"]));
    assert_eq!(t.tenant_changes[0].changed_fields, vec!["metadata".to_string()]);
    assert_eq!(rows(&mut env.local, "tenant"), rows(&mut env.remote, "tenant"));
    assert!(tenants(&env, KEEP).conflict_tenant_ids.is_empty());
}

#[test]
fn a_row_deleted_locally_is_a_conflict_kept_deleted_or_inserted_again() {
    let mut env = mirrored();
    env.local
        .execute("DELETE FROM tenant WHERE tenant_id IN ('t-3', 't-4')", &[])
        .expect("local deletes");
    // The remote deletes t-4 too: gone on both sides is no conflict.
    env.remote
        .execute("DELETE FROM tenant WHERE tenant_id = 't-4'", &[])
        .expect("remote delete");
    for _ in 0..2 {
        let t = tenants(&env, KEEP);
        assert_eq!(t.conflict_tenant_ids, ids(&["t-3"]));
        assert!(t.new_tenant_ids.is_empty() && t.deleted_tenant_ids.is_empty(), "{t:?}");
        assert!(!rows(&mut env.local, "tenant").contains_key("t-3"));
    }
    let t = tenants(&env, REMOTE);
    assert_eq!(t.conflict_tenant_ids, ids(&["t-3"]));
    assert_eq!(t.new_tenant_ids, ids(&["t-3"]));
    assert_eq!(rows(&mut env.local, "tenant"), rows(&mut env.remote, "tenant"));
    assert_eq!(digests(&mut env, "tenant"), 9);
    assert!(tenants(&env, REMOTE).conflict_tenant_ids.is_empty());
}

#[test]
fn a_local_change_to_a_row_the_remote_deleted_is_a_conflict() {
    let mut env = mirrored();
    env.local
        .execute("UPDATE meters SET location_id = NULL WHERE meter_id = 'm-7'", &[])
        .expect("local edit");
    env.remote
        .execute("DELETE FROM meters WHERE meter_id IN ('m-7', 'm-8')", &[])
        .expect("remote deletes");
    let m = meters(&env, KEEP);
    assert_eq!(m.conflict_meter_ids, ids(&["m-7"]));
    assert_eq!(m.deleted_meter_ids, ids(&["m-8"]));
    assert!(rows(&mut env.local, "meters").contains_key("m-7"));
    let m = meters(&env, REMOTE);
    assert_eq!(
        (m.conflict_meter_ids, m.deleted_meter_ids),
        (ids(&["m-7"]), ids(&["m-7"]))
    );
    assert_eq!(rows(&mut env.local, "meters"), rows(&mut env.remote, "meters"));
    assert_eq!(digests(&mut env, "meters"), 8);
}

#[test]
fn the_delete_guard_applies_before_the_policy() {
    let mut env = mirrored();
    env.local
        .execute("UPDATE meters SET name = 'local' WHERE meter_id IN ('m-1', 'm-2')", &[])
        .expect("local edits");
    env.remote
        .execute(
            "DELETE FROM meters WHERE meter_id IN ('m-1', 'm-2', 'm-3', 'm-4', 'm-5', 'm-6')",
            &[],
        )
        .expect("remote deletes 6 of 10");
    let before = rows(&mut env.local, "meters");
    let mut cfg = env.cfg.clone();
    cfg.download_conflict_policy = KEEP;
    let m = DownloadSyncManager::new(&env.conns, &cfg).sync_meter_configurations();
    assert!(
        !m.success && m.error.as_deref().unwrap_or("").contains("refused"),
        "{m:?}"
    );
    assert!(m.conflict_meter_ids.is_empty());
    assert_eq!(rows(&mut env.local, "meters"), before, "nothing changed");
    assert_eq!(digests(&mut env, "meters"), 10, "no digest changed");
}

#[test]
fn a_failed_download_records_no_digest_and_a_missing_table_names_the_fix() {
    let mut env = mirrored();
    env.local
        .execute("UPDATE meters SET name = 'local' WHERE meter_id = 'm-1'", &[])
        .expect("local edit");
    // The commit fails (a deferred trigger), after the rows and their digests were written in the transaction.
    env.local
        .batch_execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.name = 'boom' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER refuse_boom AFTER UPDATE ON meters DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
        )
        .expect("a trigger that fails the commit");
    env.remote
        .execute("UPDATE meters SET name = 'boom' WHERE meter_id = 'm-9'", &[])
        .expect("remote edit");
    let recorded = |env: &mut Env| -> Vec<(String, i64)> {
        env.local
            .query("SELECT key, digest FROM sync_mirror_digest ORDER BY 1", &[])
            .expect("reading digests")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let before = recorded(&mut env);
    let m = DownloadSyncManager::new(&env.conns, &env.cfg).sync_meter_configurations();
    assert!(
        !m.success && m.error.as_deref().unwrap_or("").contains("refused at commit") && m.conflict_meter_ids.is_empty(),
        "{m:?}"
    );
    assert_eq!(recorded(&mut env), before, "the digests roll back with the rows");
    assert_eq!(rows(&mut env.local, "meters")["m-1"][0].as_deref(), Some("local"));
    env.local
        .execute("DROP TRIGGER refuse_boom ON meters", &[])
        .expect("dropping the trigger");
    assert_eq!(
        meters(&env, REMOTE).conflict_meter_ids,
        ids(&["m-1"]),
        "still a conflict, then overwritten"
    );

    env.local
        .execute("DROP TABLE sync_mirror_digest", &[])
        .expect("dropping the bookkeeping");
    let t = DownloadSyncManager::new(&env.conns, &env.cfg).sync_tenant_data();
    let e = t.error.unwrap_or_default();
    assert!(
        !t.success && e.contains("tenant: ") && e.contains("sync_mirror_digest is missing: run `sync-process migrate`"),
        "{e}"
    );
}

#[test]
fn rows_mirrored_before_digests_were_kept_are_no_conflicts_and_get_recorded() {
    let mut env = mirrored();
    // As after an upgrade: the rows are there, the digests are not; one row differs from the remote.
    env.local
        .batch_execute(
            "DELETE FROM sync_mirror_digest;
             UPDATE meters SET name = 'unknown origin' WHERE meter_id = 'm-9';",
        )
        .expect("forgetting the digests");
    let m = meters(&env, KEEP);
    assert!(m.conflict_meter_ids.is_empty(), "{m:?}");
    assert_eq!(m.updated_meter_ids, ids(&["m-9"]));
    assert_eq!(digests(&mut env, "meters"), 10, "every row recorded");
    let t = tenants(&env, KEEP);
    assert!(
        t.conflict_tenant_ids.is_empty() && t.updated_tenant_ids.is_empty(),
        "{t:?}"
    );
    assert_eq!(digests(&mut env, "tenant"), 10);
    // From now on a local change is seen.
    env.local
        .execute("UPDATE meters SET name = 'changed' WHERE meter_id = 'm-9'", &[])
        .expect("local edit");
    assert_eq!(meters(&env, KEEP).conflict_meter_ids, ids(&["m-9"]));
}

#[test]
fn once_prints_the_conflicts_and_warns_with_the_key_and_the_fields() {
    let mut env = mirrored();
    env.local
        .batch_execute(
            "UPDATE meters SET name = 'secret-ish local name', unit = 'Wh' WHERE meter_id = 'm-2';
             DELETE FROM tenant WHERE tenant_id = 't-9';",
        )
        .expect("local edits");
    let (out, json) = env.once_json();
    assert_eq!(
        json["meterDownloadResult"]["conflictMeterIds"],
        serde_json::json!(["m-2"])
    );
    assert_eq!(
        json["tenantDownloadResult"]["conflictTenantIds"],
        serde_json::json!(["t-9"])
    );
    assert!(
        out.stderr.contains(
            "conflict: meter m-2 was changed locally since it was last mirrored (differs from the remote in: \
             name, unit): overwritten with the remote's values (DOWNLOAD_CONFLICT_POLICY=remote-wins)"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("conflict: tenant t-9 was deleted locally"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret-ish"), "a warning never shows the values");
    assert!(out.stderr.contains("1 conflict"), "{}", out.stderr);
    // No conflict: the fields are there, empty.
    let (_, json) = env.once_json();
    assert_eq!(json["meterDownloadResult"]["conflictMeterIds"], serde_json::json!([]));
    assert_eq!(json["tenantDownloadResult"]["conflictTenantIds"], serde_json::json!([]));
    let mut keep = env.map.clone();
    keep.insert("DOWNLOAD_CONFLICT_POLICY".into(), "keep-local".into());
    env.local
        .execute("UPDATE tenant SET name = 'here' WHERE tenant_id = 't-1'", &[])
        .expect("local edit");
    let (out, json) = crate::support::env::once_json(&keep);
    assert_eq!(
        json["tenantDownloadResult"]["conflictTenantIds"],
        serde_json::json!(["t-1"])
    );
    assert!(out.stderr.contains("kept as it is"), "{}", out.stderr);
    assert_eq!(rows(&mut env.local, "tenant")["t-1"][0].as_deref(), Some("here"));
}

// ---------------------------------------------------------------------------------------------------------
// The model, against the servers.

const KEYS: &[&str] = &["m-1", "m-2", "m-3", "m-4", "m-5", "m-6"];
const NAMES: &[&str] = &["a", "b", "c"];

/// meter_id -> name (the other columns fixed, updated_at too: it is a compared column).
type State = BTreeMap<String, String>;

/// A base mirrored to both sides, then edits on each side (a name changed, a row deleted or added), and the
/// policy of the download that follows.
#[derive(Clone, Debug)]
struct Case {
    base: State,
    local: State,
    remote: State,
    keep: bool,
}

fn gen_state(g: &mut Gen) -> State {
    let mut s = State::new();
    for k in KEYS {
        if u8::arbitrary(g) % 4 != 0 {
            s.insert(k.to_string(), g.choose(NAMES).copied().unwrap_or("a").to_string());
        }
    }
    s
}

fn gen_edit(g: &mut Gen, base: &State) -> State {
    let mut s = base.clone();
    for k in KEYS {
        let name = g.choose(NAMES).copied().unwrap_or("a").to_string();
        match u8::arbitrary(g) % 5 {
            0 => {
                s.remove(*k);
            }
            1 => {
                s.insert(k.to_string(), name);
            }
            _ => {}
        }
    }
    s
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Case {
        let base = gen_state(g);
        Case {
            local: gen_edit(g, &base),
            remote: gen_edit(g, &base),
            base,
            keep: bool::arbitrary(g),
        }
    }
}

fn load(c: &mut postgres::Client, state: &State) {
    let keys: Vec<&str> = state.keys().map(String::as_str).collect();
    let names: Vec<&str> = state.values().map(String::as_str).collect();
    c.execute("DELETE FROM meters", &[]).expect("emptying meters");
    c.execute(
        "INSERT INTO meters (meter_id, name, meter_type, unit, updated_at) \
         SELECT k, n, 'electric', 'kWh', timestamp '2024-01-01' FROM unnest($1::text[], $2::text[]) AS u(k, n)",
        &[&keys, &names],
    )
    .expect("loading meters");
}

fn names(c: &mut postgres::Client) -> State {
    c.query("SELECT meter_id::text, name::text FROM meters", &[])
        .expect("reading meters")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn check(env: &mut Env, case: &Case) -> Result<(), String> {
    let policy = if case.keep { KEEP } else { REMOTE };
    env.local
        .batch_execute("DELETE FROM meters; DELETE FROM sync_mirror_digest")
        .map_err(|e| e.to_string())?;
    load(&mut env.remote, &case.base);
    let first = meters(env, policy);
    if !first.conflict_meter_ids.is_empty() || names(&mut env.local) != case.base {
        return Err(format!("the first mirror: {first:?}"));
    }
    load(&mut env.local, &case.local);
    load(&mut env.remote, &case.remote);
    let keys: BTreeSet<&String> = case
        .base
        .keys()
        .chain(case.local.keys())
        .chain(case.remote.keys())
        .collect();
    let want: Vec<String> = keys
        .iter()
        .filter(|k| {
            let (b, l, r) = (case.base.get(**k), case.local.get(**k), case.remote.get(**k));
            b.is_some() && l != b && l != r
        })
        .map(|k| k.to_string())
        .collect();
    let only_local = case.local.keys().filter(|k| !case.remote.contains_key(*k)).count();
    let mut cfg = env.cfg.clone();
    cfg.download_conflict_policy = policy;
    let got = DownloadSyncManager::new(&env.conns, &cfg).sync_meter_configurations();
    if only_local as f64 > cfg.download_max_delete_ratio * case.local.len() as f64
        || (case.remote.is_empty() && !case.local.is_empty())
    {
        // The guard refuses first: nothing changed, nothing reported.
        if got.success || !got.conflict_meter_ids.is_empty() || names(&mut env.local) != case.local {
            return Err(format!("expected the guard to refuse: {got:?}"));
        }
        return Ok(());
    }
    if !got.success || got.conflict_meter_ids != want {
        return Err(format!(
            "conflicts {:?}, want {want:?}: {got:?}",
            got.conflict_meter_ids
        ));
    }
    let mut want_local = case.remote.clone();
    if case.keep {
        for k in &want {
            match case.local.get(k) {
                Some(v) => want_local.insert(k.clone(), v.clone()),
                None => want_local.remove(k),
            };
        }
    }
    let local = names(&mut env.local);
    if local != want_local {
        return Err(format!("local {local:?}, want {want_local:?}"));
    }
    let again = meters(env, policy).conflict_meter_ids;
    let want_again = if case.keep { want } else { Vec::new() };
    if again != want_again {
        return Err(format!("next cycle reported {again:?}, want {want_again:?}"));
    }
    Ok(())
}

// **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
// (with local changes, DOWNLOAD_CONFLICT_POLICY) For any mirrored meters, then random local edits, remote
// edits and both (names changed, rows deleted, rows added): one download reports in conflictMeterIds exactly
// the meters changed or deleted locally since they were last mirrored that now differ from the remote (never
// one changed only remotely); afterwards the local meters are the remote ones under remote-wins, and under
// keep-local the remote ones except the conflicting meters, left as they were and reported again next cycle.
// The delete guard refuses first when it must.
fn prop_conflicts_against_the_servers(case: Case) -> TestResult {
    ENV.with(|e| {
        let mut e = e.borrow_mut();
        let env = e.get_or_insert_with(|| Env::new(&[]));
        match check(env, &case) {
            Ok(()) => TestResult::passed(),
            Err(msg) => TestResult::error(format!("{msg}\ncase: {case:?}")),
        }
    })
}

thread_local!(static ENV: std::cell::RefCell<Option<Env>> = const { std::cell::RefCell::new(None) });

/// Drops this thread's pair when the property ends (a postgres client must not be dropped by the thread-local
/// destructors).
struct EnvGuard;

impl Drop for EnvGuard {
    fn drop(&mut self) {
        drop(ENV.with(|e| e.borrow_mut().take()));
    }
}

#[test]
fn property_8_conflicts_follow_the_policy_against_the_servers() {
    let _env = EnvGuard;
    QuickCheck::new()
        .tests(100)
        .max_tests(1000)
        .rng(Gen::new(10))
        .quickcheck(prop_conflicts_against_the_servers as fn(Case) -> TestResult);
}

#[test]
fn a_table_edited_locally_as_a_whole_logs_a_bounded_number_of_lines() {
    let mut env = Env::new(&[("DOWNLOAD_CONFLICT_POLICY", "keep-local")]);
    let n = CONFLICT_LINES + 5;
    env.remote
        .execute(
            "INSERT INTO meters (meter_id, name, meter_type, unit) \
             SELECT 'm-' || lpad(g::text, 5, '0'), 'Meter', 'electric', 'kWh' FROM generate_series(1, $1::int4) g",
            &[&(n as i32)],
        )
        .expect("seeding the remote");
    assert_eq!(meters(&env, KEEP).new_meters, n as u64);
    env.local
        .execute("UPDATE meters SET unit = 'Wh'", &[])
        .expect("editing every meter locally");
    let (out, json) = env.once_json();
    let ids = json["meterDownloadResult"]["conflictMeterIds"].as_array().map(Vec::len);
    assert_eq!(ids, Some(n), "every conflict is in the result");
    let lines = out.stderr.lines().filter(|l| l.contains("conflict: meter m-")).count();
    assert_eq!(lines, CONFLICT_LINES, "one line each for the first {CONFLICT_LINES}");
    assert!(
        out.stderr.contains("meters: 5 more conflicts not logged one by one"),
        "{}",
        out.stderr.len()
    );
}
