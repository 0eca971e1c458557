//! Logging (skeleton: the service issue fills this in with the rotating file).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

pub fn init(level: log::LevelFilter, file: Option<&Path>) -> Result<()> {
    let _ = file;
    env_logger::Builder::new().filter_level(level).target(env_logger::Target::Stderr).init();
    INITIALIZED.store(true, Ordering::SeqCst);
    Ok(())
}
