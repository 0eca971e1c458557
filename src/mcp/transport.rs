//! The stdio transport of `sync-process mcp`: newline-delimited JSON-RPC 2.0 on stdin/stdout.
//!
//! Owns: reading messages (a reader thread; a line longer than [`MAX_MESSAGE`] is refused and skipped, a
//! message cut off by the end of stdin is dropped), writing answers (one line each, flushed; nothing else is
//! ever written on stdout, logs go to stderr), the loop ([`serve`]: exit 0 when stdin closes), and running each
//! tool call on a worker thread, waited for at most [`Toolbox::deadline`].
//! Does not own: what a message means or what is answered (mod.rs), the tools (tools.rs).

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use serde_json::Value;

use super::tools::{self, Outcome, Toolbox};
use super::{code, error, fail, Action, Call, Session};
use crate::config::Config;
use crate::error::{Error, Result};

/// The longest message read; a longer line is answered with -32600 and skipped.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One read from stdin.
#[derive(Debug)]
pub enum Input {
    /// A whole line, without its newline (and without a `\r` before it).
    Line(Vec<u8>),
    /// A line longer than [`MAX_MESSAGE`] bytes (its length), skipped.
    TooLong(usize),
    /// Stdin closed after this many bytes of a message without its newline; the fragment is dropped.
    Partial(usize),
    Failed(io::Error),
}

/// Reads the next message of at most `max` bytes; `None` at a clean end of input.
pub fn next_input(r: &mut impl BufRead, max: usize) -> Option<Input> {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Input::Failed(e)),
        };
        if buf.is_empty() {
            let n = line.len() + skipped;
            return (n > 0).then_some(Input::Partial(n));
        }
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if skipped > 0 || line.len() + chunk.len() > max {
            skipped += line.len() + chunk.len();
            line = Vec::new();
        } else {
            line.extend_from_slice(chunk);
        }
        r.consume(used);
        if done {
            if skipped > 0 {
                return Some(Input::TooLong(skipped));
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(Input::Line(line));
        }
    }
}

/// Writes one message and its newline, flushed.
fn send(out: &mut impl Write, msg: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes)?;
    out.flush()
}

/// `sync-process mcp [--allow-writes]`: serves until stdin closes (exit 0). Exit 1 only when stdin cannot be
/// read; a client that closed stdout is gone, which also ends the server with 0.
pub fn serve(cfg: &Config, allow_writes: bool) -> Result<ExitCode> {
    let toolbox = Arc::new(Toolbox::new(cfg)?);
    let (tx, rx) = crossbeam_channel::bounded::<Input>(16);
    thread::Builder::new()
        .name("mcp-stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut reader = stdin.lock();
            while let Some(input) = next_input(&mut reader, MAX_MESSAGE) {
                let last = matches!(input, Input::Partial(_) | Input::Failed(_));
                if tx.send(input).is_err() || last {
                    break;
                }
            }
        })
        .map_err(|e| Error::io("starting the MCP stdin reader thread", e))?;
    log::info!(
        "mcp: serving on stdin/stdout, {} (tools: {})",
        if allow_writes { "writes allowed" } else { "read-only" },
        tools::names(allow_writes).join(", ")
    );
    let mut session = Session::new(allow_writes);
    let mut out = io::stdout().lock();
    for input in rx.iter() {
        let msg = match input {
            Input::Line(line) => match session.handle(&line) {
                Action::Nothing => continue,
                Action::Reply(msg) => msg,
                Action::Call(call) => {
                    let outcome = run_call(&toolbox, &call);
                    session.finish(&call, outcome)
                }
            },
            Input::TooLong(n) => error(
                Value::Null,
                fail(
                    code::INVALID_REQUEST,
                    format!("Invalid Request: a message of {n} bytes; at most {MAX_MESSAGE} are read (skipped)"),
                ),
            ),
            Input::Partial(n) => {
                log::warn!("mcp: stdin closed in the middle of a message ({n} bytes without a newline); it is dropped");
                continue;
            }
            Input::Failed(e) => {
                log::error!("mcp: reading stdin failed: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        if let Err(e) = send(&mut out, &msg) {
            log::info!("mcp: stdout is closed ({e}): the client is gone; exiting");
            return Ok(ExitCode::SUCCESS);
        }
    }
    log::info!("mcp: stdin closed; exiting");
    Ok(ExitCode::SUCCESS)
}

/// Runs a tool on a worker thread and waits at most the toolbox's deadline; a call still running then is
/// abandoned (its connection goes with its thread) and reported as an error the assistant can read.
fn run_call(toolbox: &Arc<Toolbox>, call: &Call) -> Outcome {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let (tb, tool, args) = (Arc::clone(toolbox), call.tool, call.args.clone());
    let spawned = thread::Builder::new()
        .name(format!("mcp-{}", tool.name))
        .spawn(move || {
            let _ = done_tx.send(tb.call(tool, &args));
        });
    if let Err(e) = spawned {
        return Outcome::error(format!("{}: could not start a thread for the call: {e}", tool.name));
    }
    let deadline = toolbox.deadline();
    match done_rx.recv_timeout(deadline) {
        Ok(outcome) => outcome,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Outcome::timed_out(tool, deadline),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Outcome::error(format!(
            "{}: the call ended without a result (an internal error; the log on stderr says more)",
            tool.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_lines() {
        let mut r = io::Cursor::new(b"a\r\nbb\n\ntoolong\nc".to_vec());
        let mut got = Vec::new();
        while let Some(i) = next_input(&mut r, 4) {
            got.push(format!("{i:?}"));
        }
        assert_eq!(
            got,
            [
                format!("{:?}", Input::Line(b"a".to_vec())),
                format!("{:?}", Input::Line(b"bb".to_vec())),
                format!("{:?}", Input::Line(Vec::new())),
                format!("{:?}", Input::TooLong(7)),
                format!("{:?}", Input::Partial(1)),
            ]
        );
        // A long line over several buffer fills is skipped whole, and the next one is read.
        let data = [vec![b'x'; 10_000], b"\nok\n".to_vec()].concat();
        let mut r = io::BufReader::with_capacity(64, io::Cursor::new(data));
        assert!(matches!(next_input(&mut r, 100), Some(Input::TooLong(10_000))));
        assert!(matches!(next_input(&mut r, 100), Some(Input::Line(l)) if l == b"ok"));
        assert!(next_input(&mut r, 100).is_none());
    }
}
