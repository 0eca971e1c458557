//! The two mirrored tables as data, and every SQL statement of the download, built from that data.
//!
//! Owns: [`TableSpec`] (table, key column, compared columns in schema order with their kind),
//! [`METERS`] and [`TENANTS`], and the SQL text the download runs on each side: the per-bucket digests, the
//! per-row digests of some buckets, the rows of some keys, the local column limits and the three local
//! writes (delete, update, insert through `unnest` of array parameters), and the statements on the recorded
//! digests of the last mirrored rows ([`DIGEST_TABLE`]: their per-bucket sums and rows, recording them from
//! the rows as written or as given, dropping them). Does not own: running the SQL or
//! deciding anything (download.rs), comparing rows (diff.rs).
//!
//! Every compared value crosses the wire as text: `::text` for text and TIMESTAMP (sessions pin
//! `DateStyle=ISO`, so a TIMESTAMP reads back verbatim), `::jsonb::text` for JSON (jsonb's text output is
//! canonical: key order and whitespace of the original do not show; a remote `json` column is
//! canonicalised the same way). The same expressions feed the digests, so two rows have the same digest when
//! (up to a 64-bit hash collision) their texts are equal.

/// How a compared column is carried as text and written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// VARCHAR/TEXT: the text itself; written back by assignment (an over-long value is an error, never
    /// silently truncated).
    Text,
    /// JSONB: its canonical text; written back with `::jsonb`.
    Json,
    /// TIMESTAMP (without time zone): its ISO text; written back with `::timestamp`.
    Timestamp,
}

/// One compared column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

/// A mirrored table: what the generic download needs to know about it.
#[derive(Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name, the same on both sides.
    pub table: &'static str,
    /// The primary key column (text).
    pub key: &'static str,
    /// The compared columns, in schema order (this is also the order of `changedFields`).
    pub columns: &'static [Column],
    /// Singular noun for log lines ("meter", "tenant").
    pub noun: &'static str,
    /// Index in `columns` of the column shown next to the key in log lines (the name).
    pub label: usize,
    /// Local-only column set to the server's LOCALTIMESTAMP on each written row.
    pub synced_at: &'static str,
}

const fn text(name: &'static str) -> Column {
    Column { name, kind: Kind::Text }
}
const fn json(name: &'static str) -> Column {
    Column { name, kind: Kind::Json }
}
const fn timestamp(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Timestamp,
    }
}

pub const METERS: TableSpec = TableSpec {
    table: "meters",
    key: "meter_id",
    columns: &[
        text("name"),
        text("location_id"),
        text("meter_type"),
        text("unit"),
        json("configuration"),
        timestamp("updated_at"),
    ],
    noun: "meter",
    label: 0,
    synced_at: "synced_at",
};

pub const TENANTS: TableSpec = TableSpec {
    table: "tenant",
    key: "tenant_id",
    columns: &[
        text("name"),
        json("configuration"),
        json("metadata"),
        timestamp("updated_at"),
    ],
    noun: "tenant",
    label: 0,
    synced_at: "synced_at",
};

/// Rows are spread over this many buckets by a hash of their key (`BUCKET_MASK + 1` = 4096). A cycle where
/// nothing changed transfers one small row per non-empty bucket from each side.
pub const BUCKET_MASK: i64 = 4095;

/// The bucket of a row whose key is NULL (only possible on a remote without a primary key).
pub const NULL_KEY_BUCKET: i32 = -1;

/// Local bookkeeping (sql/local/0004_mirror_digest.sql): per mirrored row, the digest of its values as the
/// download last left them, with the key's bucket.
pub const DIGEST_TABLE: &str = "sync_mirror_digest";

/// The bucket of the text expression `key`: the same expression for the rows and for the recorded digests.
fn bucket_expr(key: &str) -> String {
    format!("coalesce((hashtextextended({key} COLLATE \"C\", 0) & {BUCKET_MASK})::int4, {NULL_KEY_BUCKET})")
}

impl TableSpec {
    /// The compared columns as text, in schema order, comma-separated.
    fn value_exprs(&self) -> String {
        self.columns
            .iter()
            .map(|c| match c.kind {
                Kind::Json => format!("{}::jsonb::text", c.name),
                Kind::Text | Kind::Timestamp => format!("{}::text", c.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Per row: key `k`, bucket `b`, 64-bit digest `d` of the key and compared values as text.
    ///
    /// The hashes are PostgreSQL's own `hashtextextended` (PostgreSQL 11+; stable across versions because
    /// hash partitioning depends on it). md5 would be portable to big-endian servers too, but on PostgreSQL
    /// 15 it costs about 0.6 us a call: two per row put 100k rows well over the cycle budget. If the two
    /// servers ever hashed differently, every row would merely be fetched and compared (still correct); the
    /// download then warns.
    fn digest_source(&self) -> String {
        format!(
            "SELECT {key}::text AS k, \
             {bucket} AS b, \
             hashtextextended(row({key}::text, {values})::text, 0) AS d \
             FROM {table}",
            key = self.key,
            bucket = bucket_expr(&format!("{}::text", self.key)),
            values = self.value_exprs(),
            table = self.table,
        )
    }

    /// Step 1, both sides: `(bucket int4, rows int4, digest int8)` for every non-empty bucket. The bucket
    /// digest hashes the exact sum of its row digests: order-free, so a hash aggregate serves it (`OFFSET 0`
    /// keeps the planner from sorting the whole rows by an expression it cannot estimate).
    pub fn bucket_digests_sql(&self) -> String {
        format!(
            "SELECT b, count(*)::int4, hashtextextended(sum(d)::text, 0) FROM ({} OFFSET 0) s GROUP BY b",
            self.digest_source()
        )
    }

    /// Step 2, both sides: `(key text, digest int8)` of the rows in the buckets `$1::int4[]`.
    pub fn row_digests_sql(&self) -> String {
        format!("SELECT k, d FROM ({}) s WHERE b = ANY($1)", self.digest_source())
    }

    /// Step 3, both sides: `(key, values as text...)` of the rows whose key is in `$1::text[]`.
    pub fn rows_sql(&self) -> String {
        format!(
            "SELECT {key}::text, {values} FROM {table} WHERE {key}::text = ANY($1)",
            key = self.key,
            values = self.value_exprs(),
            table = self.table
        )
    }

    pub fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM {}", self.table)
    }

    /// Local: `DELETE` the keys in `$1::text[]`.
    pub fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {table} WHERE {key} = ANY($1)",
            table = self.table,
            key = self.key
        )
    }

    /// `unnest($1, $2, ...) AS u(k, v1, v2, ...)`: the key then each compared column, one text array each.
    fn unnest_source(&self) -> String {
        let params: Vec<String> = (1..=self.columns.len() + 1).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (1..=self.columns.len()).map(|i| format!("v{i}")).collect();
        format!("unnest({}) AS u(k, {})", params.join(", "), names.join(", "))
    }

    /// `u.v<i>` with the cast back to the column's type.
    fn cast_back(i: usize, c: &Column) -> String {
        match c.kind {
            Kind::Text => format!("u.v{}", i + 1),
            Kind::Json => format!("u.v{}::jsonb", i + 1),
            Kind::Timestamp => format!("u.v{}::timestamp", i + 1),
        }
    }

    /// Local: `UPDATE` every compared column and synced_at of the keys in `$1`, values in `$2..`.
    pub fn update_sql(&self) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.name, Self::cast_back(i, c)))
            .collect();
        format!(
            "UPDATE {table} AS t SET {sets}, {synced_at} = LOCALTIMESTAMP FROM {src} WHERE t.{key} = u.k",
            table = self.table,
            sets = sets.join(", "),
            synced_at = self.synced_at,
            src = self.unnest_source(),
            key = self.key
        )
    }

    /// Local: `INSERT` the keys in `$1` with values in `$2..` and synced_at.
    pub fn insert_sql(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        let values: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| Self::cast_back(i, c))
            .collect();
        format!(
            "INSERT INTO {table} ({key}, {names}, {synced_at}) SELECT u.k, {values}, LOCALTIMESTAMP FROM {src}",
            table = self.table,
            key = self.key,
            names = names.join(", "),
            synced_at = self.synced_at,
            values = values.join(", "),
            src = self.unnest_source()
        )
    }

    /// `WHERE` of this table's recorded digests (the table names are constants of this file, never input).
    fn digest_rows(&self) -> String {
        format!("{DIGEST_TABLE} WHERE table_name = '{}'", self.table)
    }

    /// Local, step 1: `(bucket, rows, digest)` of the recorded digests, summed as [`Self::bucket_digests_sql`]
    /// sums the rows: equal when every row is recorded as it is.
    pub fn stored_bucket_digests_sql(&self) -> String {
        format!(
            "SELECT bucket, count(*)::int4, hashtextextended(sum(digest)::text, 0) FROM {} GROUP BY bucket",
            self.digest_rows()
        )
    }

    /// Local, step 2: `(key, digest)` of the recorded digests in the buckets `$1::int4[]`.
    pub fn stored_row_digests_sql(&self) -> String {
        format!("SELECT key, digest FROM {} AND bucket = ANY($1)", self.digest_rows())
    }

    /// Local, in the download's transaction after the writes: records the digest of each key in `$1::text[]`
    /// from its row as it now is (the rows just written, whose locks this transaction holds). A key without a
    /// row is skipped (the deleted ones are dropped by [`Self::forget_digests_sql`]).
    pub fn refresh_digests_sql(&self) -> String {
        format!(
            "INSERT INTO {DIGEST_TABLE} (table_name, key, bucket, digest) \
             SELECT '{table}', k, b, d FROM ({source}) s WHERE k = ANY($1::text[]) \
             ON CONFLICT (table_name, key) DO UPDATE SET bucket = EXCLUDED.bucket, digest = EXCLUDED.digest, \
             mirrored_at = LOCALTIMESTAMP",
            source = self.digest_source(),
            table = self.table
        )
    }

    /// Local, in the download's transaction: records the digests `$2::int8[]` of the keys `$1::text[]` (rows
    /// not written, equal on both sides: their digests as read in step 2).
    pub fn record_digests_sql(&self) -> String {
        format!(
            "INSERT INTO {DIGEST_TABLE} (table_name, key, bucket, digest) \
             SELECT '{table}', u.k, {bucket}, u.d FROM unnest($1::text[], $2::int8[]) AS u(k, d) \
             ON CONFLICT (table_name, key) DO UPDATE SET bucket = EXCLUDED.bucket, digest = EXCLUDED.digest, \
             mirrored_at = LOCALTIMESTAMP",
            table = self.table,
            bucket = bucket_expr("u.k")
        )
    }

    /// Local, in the download's transaction: drops the recorded digests of the keys `$1::text[]`.
    pub fn forget_digests_sql(&self) -> String {
        format!("DELETE FROM {} AND key = ANY($1::text[])", self.digest_rows())
    }

    /// The key then the compared columns: the columns whose local limits are checked.
    pub fn checked_columns(&self) -> Vec<&'static str> {
        std::iter::once(self.key)
            .chain(self.columns.iter().map(|c| c.name))
            .collect()
    }
}

/// Local: `(column name, max characters or NULL, NOT NULL)` of every column of the table `$1`, resolved
/// through the search_path exactly as the unqualified statements above resolve it (hence pg_catalog and
/// `to_regclass` rather than information_schema, which needs the schema spelled out).
pub const LOCAL_LIMITS_SQL: &str = "SELECT a.attname::text, \
     CASE WHEN a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND a.atttypmod > 4 \
          THEN a.atttypmod - 4 END::int4, \
     a.attnotnull \
     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_every_column_in_schema_order() {
        let sql = METERS.rows_sql();
        assert_eq!(
            sql,
            "SELECT meter_id::text, name::text, location_id::text, meter_type::text, unit::text, \
             configuration::jsonb::text, updated_at::text FROM meters WHERE meter_id::text = ANY($1)"
        );
        let ins = TENANTS.insert_sql();
        assert_eq!(
            ins,
            "INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at, synced_at) \
             SELECT u.k, u.v1, u.v2::jsonb, u.v3::jsonb, u.v4::timestamp, LOCALTIMESTAMP \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(k, v1, v2, v3, v4)"
        );
        assert!(TENANTS
            .update_sql()
            .contains("metadata = u.v3::jsonb, updated_at = u.v4::timestamp, synced_at"));
        assert_eq!(METERS.checked_columns().len(), 7);
        // The recorded digests are bucketed exactly as the rows are (step 1 compares their sums per bucket).
        let rows_bucket = bucket_expr("tenant_id::text");
        assert!(TENANTS.bucket_digests_sql().contains(&rows_bucket));
        assert!(TENANTS.refresh_digests_sql().contains(&rows_bucket));
        assert!(TENANTS
            .record_digests_sql()
            .contains(&rows_bucket.replace("tenant_id::text", "u.k")));
        for sql in [
            TENANTS.stored_bucket_digests_sql(),
            TENANTS.stored_row_digests_sql(),
            TENANTS.forget_digests_sql(),
        ] {
            assert!(
                sql.contains("FROM sync_mirror_digest WHERE table_name = 'tenant'"),
                "{sql}"
            );
        }
        // diff::changed_mask keeps the changed columns of a row in a u64.
        assert!(METERS.columns.len() < 64 && TENANTS.columns.len() < 64);
    }
}
