//! Output: what a command prints for its caller on stdout.
//!
//! Owns: [`print`] and [`println`], the one way commands write stdout: written and flushed at once, never a
//! panic. A reader that went away (EPIPE: `sync-process --help | head -0`) did not want the rest: the write
//! counts as done, later ones are skipped, and the command's exit code still says whether its work
//! succeeded (0 for `--help`). Any other write error (`> /dev/full`) is returned, so the command fails with
//! exit 1 and one `sync-process: writing to stdout: ...` line. Rust ignores SIGPIPE, so a closed pipe
//! arrives here as an error, not as a signal.
//! Does not own: what is printed (each command formats its own text), logs (stderr, logging.rs).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Set once stdout's reader has gone away.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout as it is, and flushes.
pub fn print(text: &str) -> Result<()> {
    write_to(&mut io::stdout().lock(), text.as_bytes(), &CLOSED)
}

/// Writes `text` and a newline to stdout, and flushes.
pub fn println(text: &str) -> Result<()> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    print(&line)
}

fn write_to(out: &mut impl Write, bytes: &[u8], closed: &AtomicBool) -> Result<()> {
    if closed.load(Ordering::Relaxed) {
        return Ok(());
    }
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            closed.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(Error::io("writing to stdout", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails every write with `kind`, counting the attempts.
    struct Failing(io::ErrorKind, usize);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.1 += 1;
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_and_other_errors_fail() {
        let closed = AtomicBool::new(false);
        let mut pipe = Failing(io::ErrorKind::BrokenPipe, 0);
        write_to(&mut pipe, b"x", &closed).expect("a gone reader is no failure");
        write_to(&mut pipe, b"y", &closed).expect("nor later");
        assert_eq!(pipe.1, 1, "nothing more is written once the reader is gone");
        let full = write_to(
            &mut Failing(io::ErrorKind::StorageFull, 0),
            b"x",
            &AtomicBool::new(false),
        )
        .expect_err("a full disk fails");
        assert!(full.to_string().starts_with("writing to stdout: "), "{full}");
        let mut ok = Vec::new();
        write_to(&mut ok, b"line\n", &AtomicBool::new(false)).expect("a Vec takes it");
        assert_eq!(ok, b"line\n");
    }
}
