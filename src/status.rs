//! Status (skeleton: the service issue fills this in).

use std::process::ExitCode;

use crate::config::Config;
use crate::error::{Error, Result};

pub fn print_status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let _ = (cfg, json);
    Err(Error::Other("status: not implemented yet".into()))
}
