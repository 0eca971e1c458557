//! Per-site roles with row-level security on the central (sql/per-site-remote-roles.sql).
