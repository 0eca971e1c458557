//! Demo (skeleton: the packaging issue fills this in).

use crate::error::{Error, Result};

pub fn run(keep: bool) -> Result<()> {
    let _ = keep;
    Err(Error::Other("demo: not implemented yet".into()))
}
