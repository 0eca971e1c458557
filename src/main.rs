//! Entry point: parses the command line, loads the configuration, and hands over to the component that does
//! the work. The only place where errors become exit codes: 0 ok, 1 runtime failure, 2 configuration or
//! usage error.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;

use sync_process::cli::{self, Command};
use sync_process::config::{self, Config};
use sync_process::error::{Error, Result, Side};
use sync_process::{db, demo, logging, migrate, scheduler, shutdown::Shutdown, status, upload};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            if !logging::is_initialized() {
                eprintln!("sync-process: {e}");
            }
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

fn run(args: &[String]) -> Result<ExitCode> {
    let cli = cli::parse(args)?;
    match cli.command {
        Command::Help(text) => {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!("sync-process {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Demo { keep } => {
            logging::init(log::LevelFilter::Info, None)?;
            demo::run(keep)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (map, file_warnings) = load_variables(cli.env_file.as_deref())?;
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
            println!("{json}");
            Ok(if result.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Migrate { dry_run, local, remote } => {
            let conns = db::ConnectionManager::new(&cfg, Shutdown::new())?;
            let sides = [(local, Side::Local), (remote, Side::Remote)];
            for side in sides.iter().filter(|(on, _)| *on).map(|(_, s)| *s) {
                let database = conns.db(side);
                let done = migrate::migrate(database, dry_run)?;
                let verb = if dry_run { "would apply" } else { "applied" };
                if done.is_empty() {
                    println!("{side} {}: up to date", database.target());
                } else {
                    println!("{side} {}: {verb} {}", database.target(), done.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            println!("{}", cfg.summary());
            let conns = db::ConnectionManager::new(&cfg, Shutdown::new())?;
            let mut ok = true;
            for side in [Side::Local, Side::Remote] {
                match conns.test(side) {
                    Ok(()) => println!("{side} database {}: connected", conns.db(side).target()),
                    Err(e) => {
                        println!("{side} database: UNREACHABLE: {e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Status { json } => status::print_status(&cfg, json),
        Command::Quarantine(cmd) => {
            upload::quarantine_command(&cfg, &cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Help(_) | Command::Version | Command::Demo { .. } => unreachable!("handled above"),
    }
}

/// The env file (if any) with the real environment laid over it, and warnings about the file itself.
fn load_variables(env_file: Option<&std::path::Path>) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut warnings = Vec::new();
    let file_map = match env_file {
        None => BTreeMap::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("--env-file {}: cannot read: {e}", path.display())))?;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o004 != 0 {
                    warnings.push(format!(
                        "{} is readable by every user of this machine and may hold passwords: chmod o-r it",
                        path.display()
                    ));
                }
            }
            config::parse_env_file(&text).map_err(|errs| {
                Error::Usage(format!(
                    "--env-file {}: {} bad line(s):\n  {}",
                    path.display(),
                    errs.len(),
                    errs.join("\n  ")
                ))
            })?
        }
    };
    Ok((config::gather(file_map, config::process_env()), warnings))
}
