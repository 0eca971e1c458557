//! The pure logic of the download: no database, no I/O, tested with quickcheck without a server.
//!
//! Owns: comparing bucket digests ([`differing_buckets`]) and row digests ([`plan`]: which keys to delete,
//! compare in full, insert), the row diff ([`diff_rows`]: inserts, updates with the differing columns,
//! deletes), the delete guard ([`delete_guard`]), the check of remote rows against the local column limits
//! ([`check_rows`]) and the wording of the per-row log lines ([`change_lines`], [`new_line`],
//! [`changed_line`], [`deleted_line`]). Does not own: SQL (table.rs) or running it (download.rs).
//!
//! Values are compared as the text the servers produced (see table.rs): for JSON that text is jsonb's
//! canonical output, so text equality is JSON value equality up to number spelling (`1.5` and `1.50` are
//! different texts, and are mirrored as such; key order and whitespace never count); SQL NULL (`None`) and
//! JSON null (`Some("null")`) differ.

use std::collections::BTreeMap;

use super::table::TableSpec;

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
    use quickcheck::{Arbitrary, Gen, QuickCheck};

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
