//! `sync-process check-config`: the configuration as the program understood it, then one connection test of
//! each database.
//!
//! Owns: [`command`] (prints the summary with passwords redacted, then `connected` (with the client certificate's
//! file, CN and expiry, if any) or `UNREACHABLE` with the reason for each side, and the warning when the central's int4 id is past half of its range) and its [`Outcome`]. Does not own: checking the variables (config.rs: an invalid
//! configuration never gets here), connecting and the test query (db.rs), exit codes (main.rs).

use crate::config::Config;
use crate::db::ConnectionManager;
use crate::error::{Result, Side};
use crate::shutdown::Shutdown;
use crate::upload::UploadSyncManager;

/// What `check-config` found once the configuration was valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both databases answered.
    BothConnected,
    /// At least one database did not answer (each one is printed with its reason).
    Unreachable,
}

/// Prints the configuration summary and tests both connections (each bounded in time, one attempt).
pub fn command(cfg: &Config) -> Result<Outcome> {
    crate::output::println(&cfg.summary())?;
    let conns = ConnectionManager::new(cfg, Shutdown::new())?;
    let mut outcome = Outcome::BothConnected;
    for side in [Side::Local, Side::Remote] {
        match conns.test(side) {
            Ok(()) => {
                let db = conns.db(side);
                let certificate = db
                    .client_certificate()
                    .map(|c| {
                        format!(
                            " (client certificate {}, CN={}, valid until {})",
                            c.file.display(),
                            c.subject_cn,
                            crate::db::unix_rfc3339(c.not_after_unix)
                        )
                    })
                    .unwrap_or_default();
                crate::output::println(&format!("{side} database {}: connected{certificate}", db.target()))?;
                if side == Side::Remote {
                    match UploadSyncManager::new(&conns, cfg).id_capacity_warning() {
                        Ok(Some(warning)) => crate::output::println(&warning)?,
                        Ok(None) => {}
                        Err(e) => crate::output::println(&format!(
                            "warning: the central id's capacity could not be checked: {e}"
                        ))?,
                    }
                }
            }
            Err(e) => {
                crate::output::println(&format!("{side} database: UNREACHABLE: {e}"))?;
                outcome = Outcome::Unreachable;
            }
        }
    }
    Ok(outcome)
}
