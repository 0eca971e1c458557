//! Entry point: parses the command line, loads the configuration, and hands over to the component that does
//! the work. The only place where errors and outcomes become exit codes: 0 ok, 1 runtime failure, 2
//! configuration or usage error.

#![deny(clippy::print_stdout)] // stdout through sync_process::output only (no panic on EPIPE)

use std::process::ExitCode;

use sync_process::cli::{self, Command};
use sync_process::config::{self, Config};
use sync_process::error::{Error, Result};
use sync_process::status::{self, StatusOutcome};
use sync_process::{check, demo, logging, mcp, migrate, output, quarantine, scheduler};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut daemon = false;
    match run(&args, &mut daemon) {
        Ok(code) => code,
        // The daemon's last word is a log line (journald, LOG_FILE); a command's error is for the person who
        // typed it: one `sync-process: ...` line on stderr.
        Err(e) if daemon && logging::is_initialized() => {
            log::error!("{e}");
            exit_code(&e)
        }
        Err(e) => {
            eprintln!("sync-process: {e}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &Error) -> ExitCode {
    match e {
        Error::Config(_) | Error::Usage(_) => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// 0 when `ok`, else 1 (a runtime failure that was reported, not an error).
fn success_or_1(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs the command; `daemon` is set once the command is `run` (errors then go to the log).
fn run(args: &[String], daemon: &mut bool) -> Result<ExitCode> {
    let cli = cli::parse(args)?;
    match cli.command {
        Command::Help(text) => {
            output::print(&text)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            output::println(&format!("sync-process {}", env!("CARGO_PKG_VERSION")))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Demo { keep } => {
            logging::init(log::LevelFilter::Info, None)?;
            demo::run(keep)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (map, file_warnings) = config::load_variables(cli.env_file.as_deref()).map_err(Error::Usage)?;
    // `status` reads STATUS_BIND alone (or none, with --url): a monitoring user needs no password.
    if let Command::Status { json, url } = &cli.command {
        let bind = match url {
            Some(u) => Some(status::url_addr(u)?),
            None => config::status_bind(&map)?,
        };
        logging::init(log::LevelFilter::Warn, None)?;
        return Ok(match status::print_status(bind, *json)? {
            StatusOutcome::Shown => ExitCode::SUCCESS,
            StatusOutcome::NoDaemon => ExitCode::from(1),
            StatusOutcome::Off => ExitCode::from(2),
        });
    }
    let cfg = Config::from_map(&map)?;
    // Only the sync itself writes the log file: `status` or `check-config` run by an operator from any
    // directory must not create or write the daemon's log.
    let log_file = if matches!(cli.command, Command::Run | Command::Once) {
        cfg.log_file.as_deref()
    } else {
        None
    };
    logging::init(cfg.log_level, log_file)?;
    for w in file_warnings
        .iter()
        .chain(config::unknown_variable_warnings(&map).iter())
    {
        log::warn!("{w}");
    }

    match cli.command {
        Command::Run => {
            *daemon = true;
            log::info!(
                "sync-process {} starting; configuration:\n{}",
                env!("CARGO_PKG_VERSION"),
                cfg.summary()
            );
            scheduler::run_daemon(&cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Once => {
            let result = scheduler::run_once(&cfg)?;
            let json = serde_json::to_string(&result).map_err(|e| Error::Other(format!("encoding the result: {e}")))?;
            output::println(&json)?;
            Ok(success_or_1(result.success))
        }
        Command::Migrate { dry_run, local, remote } => {
            migrate::command(&cfg, dry_run, local, remote)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => Ok(success_or_1(check::command(&cfg)? == check::Outcome::BothConnected)),
        Command::Mcp { allow_writes } => mcp::serve(&cfg, allow_writes),
        Command::Quarantine(cmd) => {
            quarantine::command(&cfg, &cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Help(_) | Command::Version | Command::Demo { .. } | Command::Status { .. } => {
            unreachable!("handled above")
        }
    }
}
