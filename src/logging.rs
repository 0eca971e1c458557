//! Logging: log lines to stderr and, when LOG_FILE is set, the same lines to a rotating file.
//!
//! Owns: the global logger ([`init`]; env_logger's filter, our formatting), the two line formats, and
//! [`RotatingFile`]. Lines are `[<UTC time, ms> <LEVEL> <module>] <message>`, except on stderr when stderr is
//! journald's stream (`JOURNAL_STREAM` names stderr's device and inode, as systemd sets it for a service):
//! then every line of a message starts with its syslog priority, `<3>` error, `<4>` warn, `<6>` info, `<7>`
//! debug and trace, and carries no time (journald stamps each entry itself), so `journalctl -p warning` and
//! priority-based alerting see the levels. The log file always has the timestamped format.
//! [`RotatingFile`] is the log file with rotation through the file-rotate crate: daily or at 100 MB, 30
//! rotated files kept, all but the newest rotated file gzip-compressed, files
//! mode 0640, the directory created when missing. file-rotate 0.7 rotates on one limit only (its
//! `ContentLimit` is either a size or a time), so the size limit is the crate's (`BytesSurpassed`, which cuts
//! between writes and so between whole log lines) and the day change is ours: before a write on a new UTC day
//! we call its `rotate()`. Rotated files are named `<file>.<YYYYmmddTHHMMSS>[.N][.gz]` by its
//! `AppendTimestamp` scheme, so a rotation never renames a cascade of 30 files.
//! A failing log file never stops the program: its errors go to stderr and lines keep going to stderr.
//! Never given a password: the configuration passes only the level and the path.
//! Does not own: what is logged (each component logs its own lines).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use file_rotate::compression::Compression;
use file_rotate::suffix::{AppendTimestamp, FileLimit};
use file_rotate::{ContentLimit, FileRotate};

use crate::error::{Error, Result};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// How lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StderrFormat {
    /// `[time LEVEL module] message`, as in the log file.
    Plain,
    /// Syslog priority prefixes on every line, no time: stderr is journald's stream.
    Journal,
}

/// [`StderrFormat::Journal`] when `journal_stream` (the value of JOURNAL_STREAM, `<dev>:<inode>`) names the
/// file stderr is (systemd's rule: a child whose stderr was redirected inherits the variable, not the stream).
pub fn stderr_format(journal_stream: Option<&str>) -> StderrFormat {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return StderrFormat::Plain;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return StderrFormat::Plain;
    };
    let stderr = io::stderr();
    let meta = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(fs::File::from)
        .and_then(|f| f.metadata());
    match meta {
        Ok(m) if m.dev() == dev && m.ino() == ino => StderrFormat::Journal,
        _ => StderrFormat::Plain,
    }
}

/// The syslog priority of a level (sd-daemon(3)'s SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// `[2026-12-01T22:01:53.467Z INFO  sync_process::scheduler] message`, with a newline.
pub fn plain_line(time: SystemTime, level: log::Level, module: &str, message: &str) -> String {
    format!(
        "[{} {level:<5} {module}] {message}\n",
        humantime::format_rfc3339_millis(time)
    )
}

/// `<6>sync_process::scheduler: message`, each further line of the message with the same `<6>`.
pub fn journal_line(level: log::Level, module: &str, message: &str) -> String {
    let p = priority(level);
    let mut out = String::with_capacity(message.len() + module.len() + 8);
    for (i, line) in message.split('\n').enumerate() {
        if i == 0 {
            out.push_str(&format!("<{p}>{module}: {line}\n"));
        } else {
            out.push_str(&format!("<{p}>{line}\n"));
        }
    }
    out
}

/// The global logger: env_logger's filter (LOG_LEVEL, the noisy crates), our two formats, the [`Tee`].
struct Logger {
    filter: env_logger::Logger,
    format: StderrFormat,
    tee: std::sync::Mutex<Tee>,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.filter.matches(record) {
            return;
        }
        let module = record.target();
        let message = record.args().to_string();
        let plain = plain_line(SystemTime::now(), record.level(), module, &message);
        let journal = (self.format == StderrFormat::Journal).then(|| journal_line(record.level(), module, &message));
        // A panic elsewhere while the lock was held must not silence the log.
        let mut tee = self.tee.lock().unwrap_or_else(|e| e.into_inner());
        tee.write_line(journal.as_deref().unwrap_or(&plain).as_bytes(), plain.as_bytes());
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

/// Rotate when the file passes this size.
pub const MAX_BYTES: usize = 100 * 1024 * 1024;
/// Rotated files kept (the live file comes on top).
pub const KEEP_FILES: usize = 30;
/// Mode of every log file, live, rotated or compressed.
pub const FILE_MODE: u32 = 0o640;
/// The newest rotated files left uncompressed (readable with plain tools).
const UNCOMPRESSED_ROTATED: usize = 1;

/// Crates whose debug lines are noise for an operator; capped at info unless LOG_LEVEL=trace.
const NOISY: &[&str] = &["tokio_postgres", "postgres", "r2d2", "native_tls", "ureq", "rustls"];

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// Installs the global logger: stderr, plus `file` when given. A log file that cannot be opened is reported
/// (stderr and the log) and logging goes on to stderr only: `status` or `check-config` run by another user
/// must not fail because the daemon's log file is not theirs.
pub fn init(level: log::LevelFilter, file: Option<&Path>) -> Result<()> {
    let mut problem = None;
    let file = match file {
        None => None,
        Some(path) => match RotatingFile::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                problem = Some(e);
                None
            }
        },
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if level < log::LevelFilter::Trace {
        for module in NOISY {
            builder.filter_module(module, level.min(log::LevelFilter::Info));
        }
    }
    let filter = builder.build();
    let max = filter.filter();
    let logger = Logger {
        filter,
        format: stderr_format(std::env::var("JOURNAL_STREAM").ok().as_deref()),
        tee: std::sync::Mutex::new(Tee { file, failing: false }),
    };
    log::set_boxed_logger(Box::new(logger)).map_err(|e| Error::Other(format!("installing the logger: {e}")))?;
    log::set_max_level(max);
    INITIALIZED.store(true, Ordering::SeqCst);
    if let Some(e) = problem {
        log::error!("{e}; logging to stderr only");
    }
    Ok(())
}

/// The UTC day number (days since 1970-01-01) of a time.
fn utc_day(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0)
}

/// The log file with rotation; see the module comment.
pub struct RotatingFile {
    inner: FileRotate<AppendTimestamp>,
    path: PathBuf,
    /// UTC day of the last write (of the file's last modification at open).
    day: Option<u64>,
    /// The newest rotated file, to notice a rotation done by the crate.
    newest_rotated: Option<PathBuf>,
}

impl RotatingFile {
    /// The production limits: 100 MB or a new day, 30 rotated files.
    pub fn open(path: &Path) -> Result<RotatingFile> {
        RotatingFile::with_limits(path, MAX_BYTES, KEEP_FILES)
    }

    /// Any limits (tests use a tiny size).
    #[doc(hidden)]
    pub fn with_limits(path: &Path, max_bytes: usize, keep_files: usize) -> Result<RotatingFile> {
        let what = |e: io::Error, doing: &str| Error::io(format!("log file {}: {doing}", path.display()), e);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| what(e, "finding the current directory"))?
                .join(path)
        };
        let Some(dir) = path.parent().filter(|_| path.file_name().is_some()) else {
            return Err(Error::Other(format!("log file {}: not a file path", path.display())));
        };
        fs::create_dir_all(dir).map_err(|e| what(e, "creating its directory"))?;
        // file-rotate swallows open errors (it drops lines instead); check that we can write here first.
        let existing = path.exists();
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| what(e, "opening for append"))?;
        if !existing {
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE));
        }
        let day = fs::metadata(&path)
            .ok()
            .filter(|m| m.len() > 0)
            .and_then(|m| m.modified().ok())
            .map(utc_day);
        // The crate panics (unwrap/expect) on directory errors it does not expect; never let that out.
        let built = catch_unwind(AssertUnwindSafe(|| {
            FileRotate::new(
                &path,
                AppendTimestamp::default(FileLimit::MaxFiles(keep_files.max(1))),
                ContentLimit::BytesSurpassed(max_bytes.max(1)),
                Compression::OnRotate(UNCOMPRESSED_ROTATED),
                Some(FILE_MODE),
            )
        }));
        let mut inner =
            built.map_err(|_| Error::Other(format!("log file {}: the rotation library failed", path.display())))?;
        let newest_rotated = inner.log_paths().last().cloned();
        Ok(RotatingFile {
            inner,
            path,
            day,
            newest_rotated,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotated files, oldest first.
    pub fn rotated_paths(&mut self) -> Vec<PathBuf> {
        self.inner.log_paths()
    }

    /// Writes `buf` as written on UTC day `day`: rotates first when the day changed since the last write.
    #[doc(hidden)]
    pub fn write_on_day(&mut self, buf: &[u8], day: u64) -> io::Result<()> {
        if self.day.is_some_and(|d| d != day) {
            self.inner.rotate()?;
        }
        self.day = Some(day);
        self.inner.write_all(buf)?;
        self.inner.flush()?;
        let newest = self.inner.log_paths().last().cloned();
        if newest != self.newest_rotated {
            self.newest_rotated = newest;
            self.fix_modes();
        }
        Ok(())
    }

    /// Rotated files keep the live file's mode; the compressed ones are new files: give them 0640 too.
    fn fix_modes(&mut self) {
        for p in self.inner.log_paths() {
            let ok = fs::metadata(&p)
                .map(|m| m.permissions().mode() & 0o777 == FILE_MODE)
                .unwrap_or(true);
            if !ok {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(FILE_MODE));
            }
        }
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_on_day(buf, utc_day(SystemTime::now()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The logger's target: every line to stderr and to the file. Never fails and never panics (the logger holds
/// a lock around it).
struct Tee {
    file: Option<RotatingFile>,
    /// The file is failing; reported once until it works again.
    failing: bool,
}

impl Tee {
    /// `to_stderr` to stderr, `buf` to the file.
    fn write_line(&mut self, to_stderr: &[u8], buf: &[u8]) {
        let _ = io::stderr().write_all(to_stderr);
        if let Some(f) = &mut self.file {
            match catch_unwind(AssertUnwindSafe(|| f.write_on_day(buf, utc_day(SystemTime::now())))) {
                Ok(Ok(())) => self.failing = false,
                Ok(Err(e)) => {
                    if !self.failing {
                        let _ = writeln!(
                            io::stderr(),
                            "sync-process: writing the log file {}: {e}",
                            f.path().display()
                        );
                        self.failing = true;
                    }
                }
                Err(_) => {
                    let _ = writeln!(
                        io::stderr(),
                        "sync-process: the log file {} failed inside the rotation library; logging to stderr only",
                        f.path().display()
                    );
                    self.file = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn plain_lines_keep_the_timestamped_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_626_513_467);
        assert_eq!(
            plain_line(t, log::Level::Info, "sync_process::scheduler", "cycle 7"),
            "[2025-12-01T22:01:53.467Z INFO  sync_process::scheduler] cycle 7\n"
        );
    }

    #[test]
    fn journal_lines_carry_the_priority_on_every_line() {
        assert_eq!(journal_line(log::Level::Error, "m", "a"), "<3>m: a\n");
        assert_eq!(journal_line(log::Level::Warn, "m", "a\nb"), "<4>m: a\n<4>b\n");
        assert_eq!(journal_line(log::Level::Debug, "m", "a"), "<7>m: a\n");
        assert_eq!(journal_line(log::Level::Trace, "m", "a"), "<7>m: a\n");
        assert_eq!(priority(log::Level::Info), 6);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert_eq!(stderr_format(None), StderrFormat::Plain);
        assert_eq!(stderr_format(Some("not-a-pair")), StderrFormat::Plain);
        assert_eq!(stderr_format(Some("0:0")), StderrFormat::Plain);
    }
}
