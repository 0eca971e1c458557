//! The pure logic of the download: no database, no I/O, tested with quickcheck without a server.
//!
//! Owns: comparing bucket digests ([`differing_buckets`]) and row digests ([`plan`]: which keys to delete,
//! compare in full, insert), the row diff ([`diff_rows`]: inserts, updates with the differing columns,
//! deletes), the delete guard ([`delete_guard`]), the check of remote rows against the local column limits
//! ([`check_rows`]), the conflicts with local changes ([`examined_buckets`], [`reconcile`]: the three-way
//! merge of local, remote and last-mirrored digests under a [`ConflictPolicy`]) and the wording of the
//! per-row log lines ([`change_lines`], [`new_line`], [`changed_line`], [`deleted_line`],
//! [`conflict_line`]). Does not own: SQL (table.rs) or running it (download.rs).
//!
//! Values are compared as the text the servers produced (see table.rs): for JSON that text is jsonb's
//! canonical output, so text equality is JSON value equality up to number spelling (`1.5` and `1.50` are
//! different texts, and are mirrored as such; key order and whitespace never count); SQL NULL (`None`) and
//! JSON null (`Some("null")`) differ.

use std::collections::BTreeMap;

use super::table::TableSpec;
use crate::config::ConflictPolicy;

/// The compared values of one row, in schema order; `None` is SQL NULL.
pub type Values = Vec<Option<String>>;

/// Rows by key. A `BTreeMap` orders keys bytewise, like `COLLATE "C"`: every reported id list is sorted so.
pub type Rows = BTreeMap<String, Values>;

/// A bucket's summary on one side: row count and digest.
pub type BucketDigest = (i32, i64);

/// One row to update and which columns differ (indices into `TableSpec::columns`, ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub key: String,
    pub values: Values,
    pub changed: Vec<usize>,
}

/// What makes the local table equal to the remote one. Every list is sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Keys only on the remote, with the remote values.
    pub inserts: Vec<(String, Values)>,
    /// Keys on both sides whose values differ, with the remote values.
    pub updates: Vec<Update>,
    /// Keys only on the local side.
    pub deletes: Vec<String>,
    /// Keys on both sides found equal.
    pub unchanged: usize,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }
}

/// Buckets whose count or digest differ between the sides, or that exist on one side only; ascending.
pub fn differing_buckets(local: &BTreeMap<i32, BucketDigest>, remote: &BTreeMap<i32, BucketDigest>) -> Vec<i32> {
    let mut out: Vec<i32> = remote
        .iter()
        .filter(|(b, d)| local.get(b) != Some(d))
        .map(|(b, _)| *b)
        .collect();
    out.extend(local.keys().filter(|b| !remote.contains_key(b)));
    out.sort_unstable();
    out
}

/// What the row digests of the differing buckets say must happen, before any full row is read. Each list
/// sorted bytewise, the three disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys only on the local side: deleted (the delete guard needs only these).
    pub deletes: Vec<String>,
    /// Keys on both sides whose digests differ: both rows are read and compared column by column.
    pub changed: Vec<String>,
    /// Keys only on the remote: inserted.
    pub new: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.changed.is_empty() && self.new.is_empty()
    }
}

/// Merges the row digests `(key, digest)` of both sides, each sorted by key (bytewise) without duplicates,
/// into a [`Plan`]. Consumes the lists: every key string is moved, none copied (a first download holds every
/// remote key here).
pub fn plan(local: Vec<(String, i64)>, remote: Vec<(String, i64)>) -> Plan {
    use std::cmp::Ordering;
    let mut plan = Plan::default();
    let mut local = local.into_iter().peekable();
    let mut remote = remote.into_iter().peekable();
    loop {
        let order = match (local.peek(), remote.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((l, _)), Some((r, _))) => l.cmp(r),
        };
        match order {
            Ordering::Less => plan.deletes.extend(local.next().map(|(k, _)| k)),
            Ordering::Greater => plan.new.extend(remote.next().map(|(k, _)| k)),
            Ordering::Equal => {
                if let (Some((key, l)), Some((_, r))) = (local.next(), remote.next()) {
                    if l != r {
                        plan.changed.push(key);
                    }
                }
            }
        }
    }
    plan
}

/// Buckets to look into: those where the local rows differ from the remote ones ([`differing_buckets`]), and
/// those where the local rows differ from the digests recorded when they were last mirrored (`stored`: a row
/// changed, deleted or added locally, or digests not recorded yet). Ascending, no duplicates. Empty: the
/// three agree, nothing to do.
pub fn examined_buckets(
    local: &BTreeMap<i32, BucketDigest>,
    remote: &BTreeMap<i32, BucketDigest>,
    stored: &BTreeMap<i32, BucketDigest>,
) -> Vec<i32> {
    let mut out = differing_buckets(local, remote);
    out.extend(differing_buckets(local, stored));
    out.sort_unstable();
    out.dedup();
    out
}

/// How a row was changed locally since it was last mirrored, when that makes it a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// Changed locally, and now different from the remote row (which may have changed too, or not).
    Changed,
    /// Deleted locally while the remote still has it.
    DeletedLocally,
    /// Changed locally while the remote deleted it.
    DeletedRemotely,
}

/// One conflict: a row whose local digest is not the one recorded when it was last mirrored, and whose
/// local state is not the remote's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub key: String,
    pub kind: ConflictKind,
}

/// The outcome of [`reconcile`]: what to write, what to report, which digests to record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// The rows to write: [`plan`]'s, less the conflicts that keep-local leaves alone. After they are written,
    /// the digest of each of these keys is recorded anew from the row as written (or dropped when it is gone).
    pub plan: Plan,
    /// Keys only local, whatever the policy does with them: what the delete guard judges (it applies first).
    pub guard_deletes: u64,
    /// Every conflict, sorted by key (under remote-wins they are also in `plan`; under keep-local not).
    pub conflicts: Vec<Conflict>,
    /// Digests to record for rows not written: equal on both sides, and recorded differently or not at all
    /// (`(key, local digest)`, sorted by key).
    pub record: Vec<(String, i64)>,
    /// Recorded digests of keys on neither side, to drop.
    pub forget: Vec<String>,
}

impl Reconciled {
    /// Nothing to write: no row and no digest (conflicts may still be reported).
    pub fn writes_nothing(&self) -> bool {
        self.plan.is_empty() && self.record.is_empty() && self.forget.is_empty()
    }
}

/// Merges the row digests of the local rows, the remote rows and the digests recorded when the rows were
/// last mirrored (`stored`), each sorted by key (bytewise) without duplicates, into what the download does.
///
/// Per key (L local, R remote, S recorded digest; `-` absent):
/// - L = R: nothing to write; S becomes L if it is not already (a first download after an upgrade records
///   every digest so; a local change that now equals the remote is no conflict).
/// - L ≠ R, both present: updated. A conflict ([`ConflictKind::Changed`]) when S is present and ≠ L.
/// - L present, R `-`: deleted. A conflict ([`ConflictKind::DeletedRemotely`]) when S is present and ≠ L.
/// - L `-`, R present: inserted. A conflict ([`ConflictKind::DeletedLocally`]) when S is present.
/// - both `-`: S, if any, is dropped.
///
/// An absent S is never a conflict: a row mirrored before digests were kept counts as unchanged. A row
/// changed only remotely (L = S) is never a conflict. Under [`ConflictPolicy::KeepLocal`] a conflict is left
/// out of the plan and its S kept, so it is found again next cycle until the local change is undone (L = S
/// again) or matches the remote (L = R). Consumes the lists: keys are moved, copied only for conflicts.
pub fn reconcile(
    local: Vec<(String, i64)>,
    remote: Vec<(String, i64)>,
    stored: Vec<(String, i64)>,
    policy: ConflictPolicy,
) -> Reconciled {
    let keep = policy == ConflictPolicy::KeepLocal;
    let mut out = Reconciled::default();
    let mut local = local.into_iter().peekable();
    let mut remote = remote.into_iter().peekable();
    let mut stored = stored.into_iter().peekable();
    loop {
        let (in_l, in_r, in_s) = {
            let heads = [local.peek(), remote.peek(), stored.peek()];
            let Some(min) = heads.iter().flatten().map(|(k, _)| k).min() else {
                break;
            };
            let has = |h: &Option<&(String, i64)>| h.is_some_and(|(k, _)| k == min);
            (has(&heads[0]), has(&heads[1]), has(&heads[2]))
        };
        let l = if in_l { local.next() } else { None };
        let r = if in_r { remote.next() } else { None };
        let s = if in_s { stored.next() } else { None };
        let sd = s.as_ref().map(|(_, d)| *d);
        let (key, ld, rd) = match (l, r, s) {
            (Some((k, ld)), r, _) => (k, Some(ld), r.map(|(_, d)| d)),
            (None, Some((k, rd)), _) => (k, None, Some(rd)),
            (None, None, Some((k, _))) => (k, None, None),
            (None, None, None) => break,
        };
        let changed_locally = |ld: i64| sd.is_some_and(|sd| sd != ld);
        let conflict = match (ld, rd) {
            (Some(ld), Some(rd)) if ld == rd => {
                if sd != Some(ld) {
                    out.record.push((key, ld));
                }
                continue;
            }
            (Some(ld), Some(_)) => changed_locally(ld).then_some(ConflictKind::Changed),
            (Some(ld), None) => {
                out.guard_deletes += 1;
                changed_locally(ld).then_some(ConflictKind::DeletedRemotely)
            }
            (None, Some(_)) => sd.is_some().then_some(ConflictKind::DeletedLocally),
            (None, None) => {
                out.forget.push(key);
                continue;
            }
        };
        if let Some(kind) = conflict {
            if keep {
                out.conflicts.push(Conflict { key, kind });
                continue;
            }
            out.conflicts.push(Conflict { key: key.clone(), kind });
        }
        match (ld, rd) {
            (Some(_), Some(_)) => out.plan.changed.push(key),
            (Some(_), None) => out.plan.deletes.push(key),
            _ => out.plan.new.push(key),
        }
    }
    out
}

/// The changes that turn `local` into `remote`.
pub fn diff_rows(local: Rows, mut remote: Rows) -> Diff {
    let mut diff = Diff::default();
    for (key, old) in local {
        match remote.remove(&key) {
            None => diff.deletes.push(key),
            Some(new) => {
                let width = old.len().max(new.len());
                let changed: Vec<usize> = (0..width).filter(|&i| old.get(i) != new.get(i)).collect();
                if changed.is_empty() {
                    diff.unchanged += 1;
                } else {
                    diff.updates.push(Update {
                        key,
                        values: new,
                        changed,
                    });
                }
            }
        }
    }
    diff.inserts = remote.into_iter().collect();
    diff.updates.sort_by(|a, b| a.key.cmp(&b.key));
    diff
}

/// The delete guard: a remote that returns no rows while local has some, or a download that would delete
/// more than `max_ratio` of the local rows, is refused as a whole. Returns the reason.
pub fn delete_guard(local_rows: u64, remote_rows: u64, deletes: u64, max_ratio: f64) -> Result<(), String> {
    if remote_rows == 0 && local_rows > 0 {
        return Err(format!(
            "refused: the remote returned no rows while {local_rows} rows are local (an emptied or \
             misconfigured remote must not wipe the local table); nothing changed"
        ));
    }
    // Row counts far below 2^52 are exact as f64.
    if local_rows > 0 && deletes as f64 > max_ratio * local_rows as f64 {
        return Err(format!(
            "refused: the download would delete {deletes} of {local_rows} local rows ({:.0}%), more than \
             DOWNLOAD_MAX_DELETE_RATIO={max_ratio} allows; nothing changed",
            100.0 * deletes as f64 / local_rows as f64
        ));
    }
    Ok(())
}

/// What the local table can hold in one column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// VARCHAR(n)/CHAR(n): n characters.
    pub max_chars: Option<usize>,
    pub not_null: bool,
}

/// Checks each row (key, remote values) against `limits` (the key column's, then each compared column's).
/// The first violation is returned, naming the key and the column.
pub fn check_rows<'a>(
    spec: &TableSpec,
    limits: &[Limit],
    rows: impl IntoIterator<Item = (&'a str, &'a Values)>,
) -> Result<(), String> {
    let names = spec.checked_columns();
    for (key, values) in rows {
        let cells = std::iter::once(Some(key)).chain(values.iter().map(Option::as_deref));
        for ((name, limit), value) in names.iter().zip(limits).zip(cells) {
            match value {
                None if limit.not_null => {
                    return Err(format!(
                        "{} {}: {name} is NULL, the local column is NOT NULL",
                        spec.key,
                        quoted(key)
                    ))
                }
                Some(v) => {
                    if let Some(max) = limit.max_chars {
                        let n = v.chars().count();
                        if n > max {
                            return Err(format!(
                                "{} {}: {name} is {n} characters, the local column holds {max}",
                                spec.key,
                                quoted(key)
                            ));
                        }
                    }
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// A key for a message: quoted and escaped, at most 64 characters.
pub fn quoted(key: &str) -> String {
    if key.chars().count() > 64 {
        let head: String = key.chars().take(64).collect();
        format!("{head:?}...")
    } else {
        format!("{key:?}")
    }
}

/// A value for a log line: control characters escaped (no forged lines), at most 100 characters.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 100 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One log line per change: `new meter <id> (<name>)`, `meter <id> changed: <fields>`,
/// `meter <id> deleted (gone from the remote)`.
pub fn change_lines(spec: &TableSpec, diff: &Diff) -> Vec<String> {
    let mut lines = Vec::with_capacity(diff.inserts.len() + diff.updates.len() + diff.deletes.len());
    for (key, values) in &diff.inserts {
        lines.push(new_line(spec, key, label(spec, values)));
    }
    for u in &diff.updates {
        lines.push(changed_line(spec, &u.key, &changed_fields(spec, &u.changed)));
    }
    for key in &diff.deletes {
        lines.push(deleted_line(spec, key));
    }
    lines
}

/// `new meter <id> (<label>)`.
pub fn new_line(spec: &TableSpec, key: &str, label: &str) -> String {
    format!("new {} {} ({})", spec.noun, printable(key), printable(label))
}

/// `meter <id> changed: <fields>`.
pub fn changed_line(spec: &TableSpec, key: &str, fields: &[String]) -> String {
    format!("{} {} changed: {}", spec.noun, printable(key), fields.join(", "))
}

/// `meter <id> deleted (gone from the remote)`.
pub fn deleted_line(spec: &TableSpec, key: &str) -> String {
    format!("{} {} deleted (gone from the remote)", spec.noun, printable(key))
}

/// The warning for one conflict: the key, what happened on each side, the columns in which the local row
/// differs from the remote one (`fields`; never the values), and what the policy did.
pub fn conflict_line(
    spec: &TableSpec,
    key: &str,
    kind: ConflictKind,
    fields: &[String],
    policy: ConflictPolicy,
) -> String {
    let differs = if fields.is_empty() {
        String::new()
    } else {
        format!(" (differs from the remote in: {})", fields.join(", "))
    };
    let what = match kind {
        ConflictKind::Changed => format!("was changed locally since it was last mirrored{differs}"),
        ConflictKind::DeletedLocally => {
            "was deleted locally since it was last mirrored, the remote still has it".into()
        }
        ConflictKind::DeletedRemotely => {
            "was changed locally since it was last mirrored and deleted on the remote".into()
        }
    };
    let done = match (policy, kind) {
        (ConflictPolicy::RemoteWins, ConflictKind::Changed) => "overwritten with the remote's values",
        (ConflictPolicy::RemoteWins, ConflictKind::DeletedLocally) => "inserted again from the remote",
        (ConflictPolicy::RemoteWins, ConflictKind::DeletedRemotely) => "deleted",
        (ConflictPolicy::KeepLocal, ConflictKind::DeletedLocally) => {
            "left deleted; reported every cycle until the local change is undone"
        }
        (ConflictPolicy::KeepLocal, _) => "kept as it is; reported every cycle until the local change is undone",
    };
    format!(
        "conflict: {} {} {what}: {done} (DOWNLOAD_CONFLICT_POLICY={})",
        spec.noun,
        printable(key),
        policy.as_str()
    )
}

/// The part of a row's label column (its name) that a log line can show: at most 101 characters, which
/// [`new_line`] prints exactly as it prints the whole label (100 characters and "..."). Empty when NULL.
pub fn label<'a>(spec: &TableSpec, values: &'a Values) -> &'a str {
    let full = values.get(spec.label).and_then(|v| v.as_deref()).unwrap_or("");
    match full.char_indices().nth(101) {
        Some((end, _)) => &full[..end],
        None => full,
    }
}

/// Column names of `changed` indices, in schema order.
pub fn changed_fields(spec: &TableSpec, changed: &[usize]) -> Vec<String> {
    changed
        .iter()
        .filter_map(|&i| spec.columns.get(i))
        .map(|c| c.name.to_string())
        .collect()
}

/// `changed` column indices as a bit set: eight bytes per updated row instead of a list of names. A table
/// has fewer than 64 compared columns (table.rs tests it); a larger index would be dropped.
pub fn changed_mask(changed: &[usize]) -> u64 {
    changed
        .iter()
        .filter(|&&i| i < 64)
        .fold(0, |mask, &i| mask | (1u64 << i))
}

/// Column names of a [`changed_mask`], in schema order.
pub fn mask_fields(spec: &TableSpec, mask: u64) -> Vec<String> {
    let changed: Vec<usize> = (0..spec.columns.len().min(64))
        .filter(|&i| mask & (1u64 << i) != 0)
        .collect();
    changed_fields(spec, &changed)
}

#[cfg(test)]
mod tests {
    use super::super::table::{METERS, TENANTS};
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

    const CASES: u64 = 300;

    fn qc() -> QuickCheck {
        QuickCheck::new().tests(CASES).rng(Gen::new(20))
    }

    /// Two states over a small key space and small value pools, so that equal rows, equal keys with
    /// differing columns, and keys on one side only all occur often.
    #[derive(Clone, Debug)]
    struct States {
        local: Rows,
        remote: Rows,
    }

    const KEYS: &[&str] = &["", "a", "b", "m-1", "m-2", "m-10", "Z", "ü", "k,\"(x)\"", "t 1", "m-7"];
    const VALUES: &[Option<&str>] = &[
        None,
        Some(""),
        Some("null"),
        Some("x"),
        Some("y"),
        Some("{\"a\": 1}"),
        Some("é"),
    ];

    fn state(g: &mut Gen) -> Rows {
        let mut rows = Rows::new();
        for key in KEYS {
            if bool::arbitrary(g) {
                let values = (0..4)
                    .map(|_| g.choose(VALUES).copied().flatten().map(str::to_string))
                    .collect();
                rows.insert(key.to_string(), values);
            }
        }
        rows
    }

    impl Arbitrary for States {
        fn arbitrary(g: &mut Gen) -> States {
            let local = state(g);
            // The remote is the local state edited, or an unrelated state.
            let remote = if bool::arbitrary(g) {
                let mut remote = local.clone();
                let edits = state(g);
                for (k, v) in edits {
                    match u8::arbitrary(g) % 3 {
                        0 => {
                            remote.remove(&k);
                        }
                        1 => {
                            remote.insert(k, v);
                        }
                        _ => {
                            if let Some(row) = remote.get_mut(&k) {
                                let i = usize::arbitrary(g) % row.len();
                                row[i] = v[i].clone();
                            }
                        }
                    }
                }
                remote
            } else {
                state(g)
            };
            States { local, remote }
        }
    }

    fn apply(mut local: Rows, diff: &Diff) -> Rows {
        for k in &diff.deletes {
            local.remove(k);
        }
        for u in &diff.updates {
            local.insert(u.key.clone(), u.values.clone());
        }
        for (k, v) in &diff.inserts {
            local.insert(k.clone(), v.clone());
        }
        local
    }

    // **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
    // (and Property 13, the same code for tenants) For any local and remote states, applying the diff to the
    // local state gives exactly the remote state.
    fn prop_diff_applied_gives_remote(s: States) -> bool {
        let diff = diff_rows(s.local.clone(), s.remote.clone());
        apply(s.local, &diff) == s.remote
    }

    #[test]
    fn property_8_13_diff_makes_local_equal_remote() {
        qc().quickcheck(prop_diff_applied_gives_remote as fn(States) -> bool);
    }

    // **Feature: database-sync-process, Property 14: Tenant change tracking**
    // (and Property 9: inserts are exactly the new keys) For any states: inserts are exactly the keys only
    // remote, deletes exactly the keys only local, updates exactly the shared keys whose values differ, each
    // with exactly the differing column indices ascending; unchanged rows appear nowhere; all lists sorted.
    fn prop_diff_reports_exactly_the_difference(s: States) -> bool {
        let diff = diff_rows(s.local.clone(), s.remote.clone());
        let inserts: Vec<&String> = diff.inserts.iter().map(|(k, _)| k).collect();
        let want_inserts: Vec<&String> = s.remote.keys().filter(|k| !s.local.contains_key(*k)).collect();
        let want_deletes: Vec<String> = s.local.keys().filter(|k| !s.remote.contains_key(*k)).cloned().collect();
        let mut want_updates = Vec::new();
        let mut unchanged = 0;
        for (k, old) in &s.local {
            if let Some(new) = s.remote.get(k) {
                let changed: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
                if changed.is_empty() {
                    unchanged += 1;
                } else {
                    want_updates.push(Update {
                        key: k.clone(),
                        values: new.clone(),
                        changed,
                    });
                }
            }
        }
        inserts == want_inserts
            && diff.inserts.iter().all(|(k, v)| s.remote.get(k) == Some(v))
            && diff.deletes == want_deletes
            && diff.updates == want_updates
            && diff.unchanged == unchanged
            && diff.updates.windows(2).all(|w| w[0].key < w[1].key)
    }

    #[test]
    fn property_14_diff_reports_exactly_the_difference() {
        qc().quickcheck(prop_diff_reports_exactly_the_difference as fn(States) -> bool);
    }

    // For any two digest maps, a key is selected from a side exactly when its digest is absent or different
    // on the other side; buckets likewise.
    fn prop_digest_selection(local: BTreeMap<u8, (u8, u8)>, remote: BTreeMap<u8, (u8, u8)>) -> bool {
        let b = |m: &BTreeMap<u8, (u8, u8)>| -> BTreeMap<i32, BucketDigest> {
            m.iter()
                .map(|(k, (n, d))| (i32::from(*k % 16), (i32::from(*n % 2), i64::from(*d % 2))))
                .collect()
        };
        let (lb, rb) = (b(&local), b(&remote));
        let buckets = differing_buckets(&lb, &rb);
        let want: Vec<i32> = lb
            .keys()
            .chain(rb.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| lb.get(k) != rb.get(k))
            .collect();
        let r = |m: &BTreeMap<u8, (u8, u8)>| -> BTreeMap<String, i64> {
            m.iter()
                .map(|(k, (_, d))| (format!("k{}", k % 16), i64::from(*d % 2)))
                .collect()
        };
        let (lk, rk) = (r(&local), r(&remote));
        let p = plan(
            lk.iter().map(|(k, d)| (k.clone(), *d)).collect(),
            rk.iter().map(|(k, d)| (k.clone(), *d)).collect(),
        );
        let keys = |f: &dyn Fn(&String, &i64) -> bool, m: &BTreeMap<String, i64>| -> Vec<String> {
            m.iter().filter(|(k, d)| f(k, d)).map(|(k, _)| k.clone()).collect()
        };
        buckets == want
            && p.deletes == keys(&|k, _| !rk.contains_key(k), &lk)
            && p.new == keys(&|k, _| !lk.contains_key(k), &rk)
            && p.changed == keys(&|k, d| rk.get(k).is_some_and(|r| r != d), &lk)
    }

    #[test]
    fn digest_selection_picks_exactly_the_differences() {
        qc().quickcheck(prop_digest_selection as fn(BTreeMap<u8, (u8, u8)>, BTreeMap<u8, (u8, u8)>) -> bool);
    }

    /// A digest of a row for the tests: equal rows, equal digests (a collision merely costs a full compare).
    fn digest(values: &Values) -> i64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        values.hash(&mut h);
        h.finish() as i64
    }

    // **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
    // (chunked, as download.rs streams it) For any states and any chunk size: deleting the plan's deletes,
    // then diffing the plan's changed keys chunk by chunk (both sides' rows of the chunk), then inserting the
    // new keys chunk by chunk gives exactly the diff of the whole tables: the same inserts, updates (with the
    // same columns) and deletes, each in key order.
    fn prop_chunked_plan_equals_whole_diff(s: States, chunk: u8) -> bool {
        let chunk = usize::from(chunk % 4) + 1;
        let digests =
            |rows: &Rows| -> Vec<(String, i64)> { rows.iter().map(|(k, v)| (k.clone(), digest(v))).collect() };
        let p = plan(digests(&s.local), digests(&s.remote));
        let pick = |rows: &Rows, keys: &[String]| -> Rows {
            keys.iter()
                .filter_map(|k| rows.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        };
        let mut got = Diff {
            deletes: p.deletes.clone(),
            ..Diff::default()
        };
        for keys in p.changed.chunks(chunk) {
            let d = diff_rows(pick(&s.local, keys), pick(&s.remote, keys));
            got.updates.extend(d.updates);
            got.inserts.extend(d.inserts);
            got.deletes.extend(d.deletes);
        }
        for keys in p.new.chunks(chunk) {
            got.inserts
                .extend(diff_rows(Rows::new(), pick(&s.remote, keys)).inserts);
        }
        let whole = diff_rows(s.local, s.remote);
        got.inserts == whole.inserts
            && got.updates == whole.updates
            && got.deletes == whole.deletes
            && p.changed.len() == whole.updates.len()
    }

    #[test]
    fn property_8_chunked_download_equals_the_whole_diff() {
        qc().quickcheck(prop_chunked_plan_equals_whole_diff as fn(States, u8) -> bool);
    }

    /// A mirror's history for the conflict model: `base` was mirrored to both sides (its digests recorded,
    /// except for the keys in `unrecorded`: rows mirrored before digests were kept), then both sides were
    /// edited: rows changed, deleted, added, on one side, the other, or both.
    #[derive(Clone, Debug)]
    struct History {
        base: Rows,
        unrecorded: Vec<String>,
        local: Rows,
        remote: Rows,
        policy: ConflictPolicy,
    }

    fn edited(g: &mut Gen, base: &Rows) -> Rows {
        let mut out = base.clone();
        for key in KEYS {
            let fresh = state(g).into_values().next();
            match (u8::arbitrary(g) % 6, out.get_mut(*key)) {
                (3, Some(row)) => {
                    let i = usize::arbitrary(g) % row.len();
                    row[i] = g.choose(VALUES).copied().flatten().map(str::to_string);
                }
                (4, Some(_)) => {
                    out.remove(*key);
                }
                (5, _) | (4, None) => {
                    if let Some(row) = fresh {
                        out.insert(key.to_string(), row);
                    }
                }
                _ => {}
            }
        }
        out
    }

    impl Arbitrary for History {
        fn arbitrary(g: &mut Gen) -> History {
            let base = state(g);
            let unrecorded = base.keys().filter(|_| u8::arbitrary(g) % 5 == 0).cloned().collect();
            let local = edited(g, &base);
            let remote = edited(g, &base);
            let policy = if bool::arbitrary(g) {
                ConflictPolicy::KeepLocal
            } else {
                ConflictPolicy::RemoteWins
            };
            History {
                base,
                unrecorded,
                local,
                remote,
                policy,
            }
        }
    }

    fn digests(rows: &Rows) -> Vec<(String, i64)> {
        rows.iter().map(|(k, v)| (k.clone(), digest(v))).collect()
    }

    /// One download as download.rs runs it, on states held in memory: reconcile, write the plan (remote
    /// values), record the digests (anew for written keys, as told for the others). Returns the conflicts.
    fn download(
        local: &mut Rows,
        remote: &Rows,
        stored: &mut BTreeMap<String, i64>,
        policy: ConflictPolicy,
    ) -> Option<Vec<Conflict>> {
        let stored_list: Vec<(String, i64)> = stored.iter().map(|(k, d)| (k.clone(), *d)).collect();
        let r = reconcile(digests(local), digests(remote), stored_list, policy);
        let only_local = local.keys().filter(|k| !remote.contains_key(*k)).count() as u64;
        if r.guard_deletes != only_local {
            return None;
        }
        for key in &r.plan.deletes {
            local.remove(key);
        }
        for key in r.plan.changed.iter().chain(&r.plan.new) {
            local.insert(key.clone(), remote.get(key)?.clone());
        }
        for key in r.plan.deletes.iter().chain(&r.plan.changed).chain(&r.plan.new) {
            match local.get(key) {
                Some(v) => stored.insert(key.clone(), digest(v)),
                None => stored.remove(key),
            };
        }
        for (key, d) in &r.record {
            stored.insert(key.clone(), *d);
        }
        for key in &r.forget {
            stored.remove(key);
        }
        Some(r.conflicts)
    }

    // **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
    // (and 13 for tenants; with local changes, DOWNLOAD_CONFLICT_POLICY) For any mirrored base state, random
    // local edits, remote edits and both (changes, deletes, additions), some rows mirrored before digests were
    // kept: the download reports exactly the rows changed or deleted locally since they were last mirrored
    // that now differ from the remote (a row changed only remotely, or not recorded yet, is never reported);
    // the final local state is the remote one under remote-wins, and under keep-local the remote one except
    // for the conflicting rows, left as they are, reported again next cycle, and mirrored once the local
    // change is undone.
    fn prop_conflicts(h: History) -> TestResult {
        let mut stored: BTreeMap<String, i64> = h
            .base
            .iter()
            .filter(|(k, _)| !h.unrecorded.contains(k))
            .map(|(k, v)| (k.clone(), digest(v)))
            .collect();
        let recorded = stored.clone();
        let changed_locally = |k: &String| recorded.contains_key(k) && h.local.get(k) != h.base.get(k);
        let keys: std::collections::BTreeSet<&String> =
            h.local.keys().chain(h.remote.keys()).chain(h.base.keys()).collect();
        let want: Vec<String> = keys
            .iter()
            .filter(|k| changed_locally(k) && h.local.get(**k) != h.remote.get(**k))
            .map(|k| k.to_string())
            .collect();
        let mut local = h.local.clone();
        let Some(got) = download(&mut local, &h.remote, &mut stored, h.policy) else {
            return TestResult::error("wrong guard count, or a changed key the remote lacks");
        };
        let got_keys: Vec<String> = got.iter().map(|c| c.key.clone()).collect();
        if got_keys != want {
            return TestResult::error(format!("conflicts {got_keys:?}, want {want:?}"));
        }
        for c in &got {
            let kind = match (h.local.contains_key(&c.key), h.remote.contains_key(&c.key)) {
                (true, true) => ConflictKind::Changed,
                (false, true) => ConflictKind::DeletedLocally,
                _ => ConflictKind::DeletedRemotely,
            };
            if c.kind != kind {
                return TestResult::error(format!("{c:?}: want {kind:?}"));
            }
        }
        // Never a row changed on the remote side only.
        if got.iter().any(|c| h.local.get(&c.key) == h.base.get(&c.key)) {
            return TestResult::error("a row changed only remotely was reported");
        }
        let mut want_local = h.remote.clone();
        if h.policy == ConflictPolicy::KeepLocal {
            for k in &want {
                match h.local.get(k) {
                    Some(v) => want_local.insert(k.clone(), v.clone()),
                    None => want_local.remove(k),
                };
            }
        }
        if local != want_local {
            return TestResult::error(format!("local {local:?}, want {want_local:?}"));
        }
        // Every row not kept is recorded as it now is; a kept one keeps its old digest.
        for k in &keys {
            let want_digest = if h.policy == ConflictPolicy::KeepLocal && want.contains(k) {
                recorded.get(*k).copied()
            } else {
                local.get(*k).map(digest)
            };
            if stored.get(*k).copied() != want_digest {
                return TestResult::error(format!("digest of {k:?}"));
            }
        }
        // The next cycle: remote-wins has nothing left; keep-local reports the same rows again.
        let Some(again) = download(&mut local, &h.remote, &mut stored, h.policy) else {
            return TestResult::error("second cycle");
        };
        let again: Vec<String> = again.into_iter().map(|c| c.key).collect();
        let want_again = if h.policy == ConflictPolicy::KeepLocal {
            want.clone()
        } else {
            Vec::new()
        };
        if again != want_again || local != want_local {
            return TestResult::error(format!("second cycle reported {again:?}, want {want_again:?}"));
        }
        if h.policy == ConflictPolicy::RemoteWins {
            return TestResult::passed();
        }
        // The local changes undone (the rows as last mirrored): no conflict, the mirror equals the remote.
        for k in &want {
            match h.base.get(k) {
                Some(v) => local.insert(k.clone(), v.clone()),
                None => local.remove(k),
            };
        }
        match download(&mut local, &h.remote, &mut stored, h.policy) {
            Some(c) if c.is_empty() && local == h.remote => TestResult::passed(),
            other => TestResult::error(format!("after undoing: {other:?}, local {local:?}")),
        }
    }

    #[test]
    fn property_8_conflicts_are_exactly_the_local_changes_and_follow_the_policy() {
        qc().quickcheck(prop_conflicts as fn(History) -> TestResult);
    }

    #[test]
    fn examined_buckets_include_local_changes_and_missing_digests() {
        let m = |v: &[(i32, BucketDigest)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        let local = m(&[(1, (1, 10)), (2, (1, 20)), (3, (2, 30))]);
        let remote = m(&[(1, (1, 10)), (2, (1, 21)), (3, (2, 30)), (5, (1, 50))]);
        let stored = m(&[(1, (1, 10)), (2, (1, 20)), (4, (1, 40))]);
        // 2: remote change; 3: no digests yet; 4: deleted locally; 5: new remotely.
        assert_eq!(examined_buckets(&local, &remote, &stored), vec![2, 3, 4, 5]);
        assert!(examined_buckets(&local, &local, &local).is_empty());
    }

    #[test]
    fn conflict_lines_name_the_key_the_fields_and_the_policy() {
        let fields = vec!["name".to_string(), "unit".to_string()];
        assert_eq!(
            conflict_line(
                &METERS,
                "m-1",
                ConflictKind::Changed,
                &fields,
                ConflictPolicy::RemoteWins
            ),
            "conflict: meter m-1 was changed locally since it was last mirrored (differs from the remote in: \
             name, unit): overwritten with the remote's values (DOWNLOAD_CONFLICT_POLICY=remote-wins)"
        );
        assert_eq!(
            conflict_line(
                &TENANTS,
                "t\n1",
                ConflictKind::DeletedLocally,
                &[],
                ConflictPolicy::KeepLocal
            ),
            "conflict: tenant t\\n1 was deleted locally since it was last mirrored, the remote still has it: left \
             deleted; reported every cycle until the local change is undone (DOWNLOAD_CONFLICT_POLICY=keep-local)"
        );
        assert!(conflict_line(
            &METERS,
            "m",
            ConflictKind::DeletedRemotely,
            &[],
            ConflictPolicy::RemoteWins
        )
        .ends_with("and deleted on the remote: deleted (DOWNLOAD_CONFLICT_POLICY=remote-wins)"));
    }

    #[test]
    fn masks_and_labels() {
        for changed in [vec![], vec![0], vec![1, 3], vec![0, 1, 2, 3]] {
            assert_eq!(
                mask_fields(&TENANTS, changed_mask(&changed)),
                changed_fields(&TENANTS, &changed)
            );
        }
        assert_eq!(
            mask_fields(&METERS, changed_mask(&[4, 5])),
            vec!["configuration", "updated_at"]
        );
        for n in [0, 1, 100, 101, 102, 300] {
            let name = "é".repeat(n);
            let values: Values = vec![Some(name.clone())];
            let short = label(&TENANTS, &values);
            assert!(short.chars().count() <= 101);
            assert_eq!(new_line(&TENANTS, "t", short), new_line(&TENANTS, "t", &name));
        }
        assert_eq!(label(&TENANTS, &vec![None]), "");
    }

    // The guard refuses exactly an empty remote over a non-empty local table, or deletions above the ratio.
    fn prop_guard(local: u16, remote: u16, deletes: u16, ratio: u8) -> bool {
        let (local, remote) = (u64::from(local % 50), u64::from(remote % 50));
        let deletes = u64::from(deletes) % (local + 1);
        let ratio = f64::from(ratio % 11) / 10.0;
        let refused = delete_guard(local, remote, deletes, ratio).is_err();
        refused == ((remote == 0 && local > 0) || (deletes as f64) > ratio * local as f64)
    }

    #[test]
    fn delete_guard_refuses_exactly_the_dangerous_downloads() {
        qc().quickcheck(prop_guard as fn(u16, u16, u16, u8) -> bool);
        assert!(delete_guard(10, 4, 6, 0.5)
            .unwrap_err()
            .contains("delete 6 of 10 local rows (60%)"));
        assert!(delete_guard(10, 0, 10, 1.0)
            .unwrap_err()
            .contains("no rows while 10 rows are local"));
        assert!(delete_guard(10, 6, 4, 0.5).is_ok());
        assert!(delete_guard(0, 0, 0, 0.5).is_ok());
    }

    #[test]
    fn limits_name_the_key_and_the_column() {
        let limits = [
            Limit {
                max_chars: Some(255),
                not_null: true,
            },
            Limit {
                max_chars: Some(255),
                not_null: true,
            },
            Limit {
                max_chars: Some(255),
                not_null: false,
            },
            Limit {
                max_chars: Some(100),
                not_null: true,
            },
            Limit {
                max_chars: Some(50),
                not_null: true,
            },
            Limit::default(),
            Limit::default(),
        ];
        let ok: Values = vec![Some("n".into()), None, Some("t".into()), Some("u".into()), None, None];
        let long = Values::from([
            Some("é".repeat(300)),
            None,
            Some("t".into()),
            Some("u".into()),
            None,
            None,
        ]);
        let null = Values::from([None, None, Some("t".into()), Some("u".into()), None, None]);
        assert_eq!(check_rows(&METERS, &limits, [("m-1", &ok)]), Ok(()));
        assert_eq!(
            check_rows(&METERS, &limits, [("m-1", &ok), ("m-7", &long)]),
            Err("meter_id \"m-7\": name is 300 characters, the local column holds 255".into())
        );
        assert_eq!(
            check_rows(&METERS, &limits, [("m-8", &null)]),
            Err("meter_id \"m-8\": name is NULL, the local column is NOT NULL".into())
        );
        let key = "k".repeat(256);
        let err = check_rows(&METERS, &limits, [(key.as_str(), &ok)]).unwrap_err();
        assert!(
            err.ends_with("...: meter_id is 256 characters, the local column holds 255"),
            "{err}"
        );
        // 255 characters of a two-byte letter fit (characters, not bytes).
        let fits = Values::from([
            Some("é".repeat(255)),
            None,
            Some("t".into()),
            Some("u".into()),
            None,
            None,
        ]);
        assert_eq!(check_rows(&METERS, &limits, [("m-1", &fits)]), Ok(()));
    }

    // **Feature: database-sync-process, Property 9: New meter detection**
    // For any diff, each inserted row gets a line with its id and name, each update a line with its changed
    // fields in schema order.
    fn prop_change_lines(s: States) -> bool {
        let diff = diff_rows(s.local, s.remote);
        let lines = change_lines(&TENANTS, &diff);
        let news_ok = diff.inserts.iter().all(|(k, v)| {
            let line = format!(
                "new tenant {} ({})",
                printable(k),
                printable(v[0].as_deref().unwrap_or(""))
            );
            lines.contains(&line)
        });
        let updates_ok = diff.updates.iter().all(|u| {
            let fields = changed_fields(&TENANTS, &u.changed);
            let names: Vec<&str> = TENANTS
                .columns
                .iter()
                .map(|c| c.name)
                .filter(|n| fields.iter().any(|f| f == n))
                .collect();
            lines.contains(&format!("tenant {} changed: {}", printable(&u.key), names.join(", ")))
        });
        news_ok && updates_ok && lines.len() == diff.inserts.len() + diff.updates.len() + diff.deletes.len()
    }

    #[test]
    fn property_9_14_every_change_gets_a_log_line() {
        qc().quickcheck(prop_change_lines as fn(States) -> bool);
        assert_eq!(printable("a\nb"), "a\\nb");
    }
}
