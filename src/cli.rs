//! The command line: commands, options, help texts. Pure parsing, no I/O.
//!
//! Owns: [`Cli`] and [`Command`], `--help` (global and per command) and `--version`. Does not own: what the
//! commands do (main.rs dispatches to the components).

use std::path::PathBuf;

use crate::error::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    Once,
    Migrate {
        dry_run: bool,
        local: bool,
        remote: bool,
    },
    Status {
        json: bool,
        /// `--url http://HOST:PORT`: ask this server instead of STATUS_BIND.
        url: Option<String>,
    },
    CheckConfig,
    Quarantine(QuarantineCmd),
    Demo {
        keep: bool,
    },
    /// The MCP server on stdin/stdout; `allow_writes` adds the quarantine retry and discard tools.
    Mcp {
        allow_writes: bool,
    },
    /// Print this text on stdout and exit 0.
    Help(String),
    Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuarantineCmd {
    List {
        json: bool,
    },
    /// Move readings back into the queue: all, or these ids.
    Retry {
        ids: Vec<i64>,
    },
    /// Delete readings for good: these ids, or all with `all` (confirmed on a terminal, or by `yes`).
    Discard {
        ids: Vec<i64>,
        all: bool,
        yes: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cli {
    pub env_file: Option<PathBuf>,
    pub command: Command,
}

pub const USAGE: &str = "\
sync-process - keeps this box's PostgreSQL (the sync server) in step with the central one (the client server):
meter readings are uploaded exactly once and then deleted here; meters and tenants are mirrored down.

Usage: sync-process [--env-file PATH] [COMMAND] [OPTIONS]

Commands:
  run            the daemon loop (the default): a sync cycle every SYNC_INTERVAL_SECONDS until SIGTERM
  once           one full cycle; prints its result as JSON on stdout; exit 0 if every part succeeded
  migrate        create or upgrade the local and remote schemas (idempotent) [--dry-run] [--local-only|--remote-only]
  status         the running daemon's status, from STATUS_BIND or --url alone [--json] [--url URL]
  check-config   validate the configuration, print it (passwords redacted), test both connections
  quarantine     readings the remote rejected: list [--json] | retry [ID...] | discard ID... | discard --all [--yes]
  demo           throwaway local and remote PostgreSQL servers, seeded and syncing [--keep]
  mcp            a Model Context Protocol server on stdin/stdout for AI assistants [--allow-writes]

Options:
  --env-file PATH   read KEY=VALUE lines from PATH; variables set in the environment win
  -h, --help        this text (or `sync-process COMMAND --help`)
  -V, --version     the version

Configuration is read from environment variables (see sync-process.env for every one, with its default).
Exit codes: 0 ok, 1 runtime failure, 2 configuration or usage error.
";

fn command_help(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "run" => {
            "\
Usage: sync-process [--env-file PATH] run

Runs sync cycles every SYNC_INTERVAL_SECONDS: recover claimed batches, upload the queued readings (batch
after batch while a backlog remains), download meters, download tenants. A database that is down is retried
with backoff and synced when it comes back. SIGTERM or SIGINT: the batch in flight completes, the process
exits 0; a second signal exits at once (safe: uploads are exactly-once). Serves /status, /metrics and
/healthz on STATUS_BIND. Migrates first only when MIGRATE_ON_START=true.
"
        }
        "once" => {
            "\
Usage: sync-process [--env-file PATH] once

Runs one full cycle (the whole queue is uploaded in BATCH_SIZE batches, then meters, then tenants) and
prints the cycle's result as one JSON object on stdout. Exit 0 if every part succeeded, 1 otherwise.
"
        }
        "migrate" => {
            "\
Usage: sync-process [--env-file PATH] migrate [--dry-run] [--local-only | --remote-only]

Creates or upgrades the local schema (seed tables plus upload bookkeeping) and the remote schema (seed
tables IF NOT EXISTS plus the upload ledger). Idempotent; never drops or rewrites rows.
  --dry-run      list the migrations that would be applied, change nothing
  --local-only   only the local database
  --remote-only  only the remote database
"
        }
        "status" => {
            "\
Usage: sync-process [--env-file PATH] status [--json] [--url http://HOST:PORT]

Asks the running daemon (GET /status on STATUS_BIND, or on the server --url names) and prints its status
for a person, or as JSON with --json. Reads no other variable: no database settings or passwords needed.
Exit 1 when no daemon answers, 2 when STATUS_BIND is empty and no --url is given.
"
        }
        "check-config" => {
            "\
Usage: sync-process [--env-file PATH] check-config

Validates every variable (exit 2 naming each bad one), prints the configuration with passwords redacted,
and tests both database connections (exit 1 if one is unreachable).
"
        }
        "quarantine" => {
            "\
Usage: sync-process [--env-file PATH] quarantine list [--json]
       sync-process [--env-file PATH] quarantine retry [ID...]
       sync-process [--env-file PATH] quarantine discard ID... | --all [--yes]

Readings the remote rejected for a data reason, or that failed an UPLOAD_VALIDATE check, are kept
locally in sync_quarantine.
  list     show them with the error the remote gave (or the check and the offending value)
  retry    put them (all, or the given ids) back in the upload queue (checked again on the next claim)
  discard  delete the given ones (or --all) for good; --all asks first on a terminal, and without a
           terminal (a script) needs --yes
"
        }
        "demo" => {
            "\
Usage: sync-process demo [--keep]

Starts two throwaway PostgreSQL servers (local and remote) from the system's server binaries, migrates and
seeds them, feeds readings, and runs the real sync loop with a short interval, printing each cycle and a
status line. Ctrl-C stops and removes everything. --keep leaves the servers running and prints how to
connect.
"
        }
        "mcp" => {
            "\
Usage: sync-process [--env-file PATH] mcp [--allow-writes]

A Model Context Protocol server on stdin/stdout (JSON-RPC 2.0, one message per line; logs on stderr) for an
AI assistant on or next to this box, e.g. `ssh box sync-process mcp`. Read-only tools: get_status,
check_health, list_recent_cycles, list_quarantined, get_config (passwords redacted). --allow-writes adds
retry_quarantined and discard_quarantined. Exits 0 when stdin closes.
"
        }
        _ => return None,
    })
}

fn usage_error(msg: String) -> Error {
    Error::Usage(format!("{msg}\nRun `sync-process --help` for usage."))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Cli, Error> {
    let mut env_file = None;
    let mut rest: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--env-file" {
            let path = args
                .get(i + 1)
                .ok_or_else(|| usage_error("--env-file needs a PATH".into()))?;
            env_file = Some(PathBuf::from(path));
            i += 2;
            continue;
        }
        if let Some(path) = a.strip_prefix("--env-file=") {
            env_file = Some(PathBuf::from(path));
        } else {
            rest.push(a);
        }
        i += 1;
    }
    let (cmd, opts) = match rest.split_first() {
        None => ("run", &[][..]),
        Some((first, opts)) => (*first, opts),
    };
    if matches!(cmd, "-h" | "--help" | "help") {
        let text = match opts.first() {
            Some(c) => command_help(c).ok_or_else(|| usage_error(format!("unknown command {c:?}")))?,
            None => USAGE,
        };
        return Ok(Cli {
            env_file,
            command: Command::Help(text.to_string()),
        });
    }
    if matches!(cmd, "-V" | "--version" | "version") {
        return Ok(Cli {
            env_file,
            command: Command::Version,
        });
    }
    let help = command_help(cmd).ok_or_else(|| usage_error(format!("unknown command {cmd:?}")))?;
    if opts.iter().any(|o| matches!(*o, "-h" | "--help")) {
        return Ok(Cli {
            env_file,
            command: Command::Help(help.to_string()),
        });
    }
    let bad = |o: &str| usage_error(format!("{cmd}: unknown option {o:?}"));
    let command = match cmd {
        "run" | "once" | "check-config" => {
            if let Some(o) = opts.first() {
                return Err(bad(o));
            }
            match cmd {
                "run" => Command::Run,
                "once" => Command::Once,
                _ => Command::CheckConfig,
            }
        }
        "migrate" => {
            let (mut dry_run, mut local_only, mut remote_only) = (false, false, false);
            for o in opts {
                match *o {
                    "--dry-run" => dry_run = true,
                    "--local-only" => local_only = true,
                    "--remote-only" => remote_only = true,
                    other => return Err(bad(other)),
                }
            }
            if local_only && remote_only {
                return Err(usage_error(
                    "migrate: --local-only and --remote-only exclude each other".into(),
                ));
            }
            Command::Migrate {
                dry_run,
                local: !remote_only,
                remote: !local_only,
            }
        }
        "status" => {
            let (mut json, mut url) = (false, None);
            let mut i = 0;
            while i < opts.len() {
                match opts[i] {
                    "--json" => json = true,
                    "--url" => {
                        let v = opts
                            .get(i + 1)
                            .ok_or_else(|| usage_error("status: --url needs http://HOST:PORT".into()))?;
                        url = Some(v.to_string());
                        i += 1;
                    }
                    o => match o.strip_prefix("--url=") {
                        Some(v) => url = Some(v.to_string()),
                        None => return Err(bad(o)),
                    },
                }
                i += 1;
            }
            Command::Status { json, url }
        }
        "demo" => match opts {
            [] => Command::Demo { keep: false },
            ["--keep"] => Command::Demo { keep: true },
            [o, ..] => return Err(bad(if *o == "--keep" { opts[1] } else { o })),
        },
        "mcp" => match opts {
            [] => Command::Mcp { allow_writes: false },
            ["--allow-writes"] => Command::Mcp { allow_writes: true },
            [o, ..] => return Err(bad(if *o == "--allow-writes" { opts[1] } else { o })),
        },
        "quarantine" => Command::Quarantine(parse_quarantine(opts)?),
        _ => unreachable!("command_help knows exactly these commands"),
    };
    Ok(Cli { env_file, command })
}

fn parse_quarantine(opts: &[&str]) -> Result<QuarantineCmd, Error> {
    let ids = |args: &[&str]| -> Result<Vec<i64>, Error> {
        args.iter()
            .map(|a| {
                a.parse::<i64>()
                    .map_err(|_| usage_error(format!("quarantine: {a:?} is not a reading id (a whole number)")))
            })
            .collect()
    };
    match opts {
        ["list"] => Ok(QuarantineCmd::List { json: false }),
        ["list", "--json"] => Ok(QuarantineCmd::List { json: true }),
        ["retry", rest @ ..] => Ok(QuarantineCmd::Retry { ids: ids(rest)? }),
        ["discard", "--all"] => Ok(QuarantineCmd::Discard {
            ids: Vec::new(),
            all: true,
            yes: false,
        }),
        ["discard", "--all", "--yes"] | ["discard", "--yes", "--all"] => Ok(QuarantineCmd::Discard {
            ids: Vec::new(),
            all: true,
            yes: true,
        }),
        ["discard"] => Err(usage_error(
            "quarantine discard: give the ids to discard, or --all".into(),
        )),
        ["discard", rest @ ..] => Ok(QuarantineCmd::Discard {
            ids: ids(rest)?,
            all: false,
            yes: false,
        }),
        _ => Err(usage_error(
            "quarantine: expected list [--json], retry [ID...] or discard ID...|--all".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, Error> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn default_is_run() {
        assert_eq!(p(&[]).expect("ok").command, Command::Run);
        let cli = p(&["--env-file", "/etc/x.env"]).expect("ok");
        assert_eq!(cli.env_file, Some(PathBuf::from("/etc/x.env")));
        assert_eq!(cli.command, Command::Run);
    }

    #[test]
    fn commands_and_options() {
        assert_eq!(p(&["once"]).expect("ok").command, Command::Once);
        assert_eq!(
            p(&["migrate", "--dry-run", "--remote-only"]).expect("ok").command,
            Command::Migrate {
                dry_run: true,
                local: false,
                remote: true
            }
        );
        assert_eq!(
            p(&["status", "--json"]).expect("ok").command,
            Command::Status { json: true, url: None }
        );
        assert_eq!(
            p(&["status", "--url", "http://127.0.0.1:1", "--json"])
                .expect("ok")
                .command,
            Command::Status {
                json: true,
                url: Some("http://127.0.0.1:1".into())
            }
        );
        assert!(p(&["status", "--url"]).is_err());
        assert_eq!(
            p(&["quarantine", "retry", "3", "4"]).expect("ok").command,
            Command::Quarantine(QuarantineCmd::Retry { ids: vec![3, 4] })
        );
        assert_eq!(
            p(&["mcp", "--allow-writes"]).expect("ok").command,
            Command::Mcp { allow_writes: true }
        );
        assert_eq!(
            p(&["once", "--env-file=/a"]).expect("ok").env_file,
            Some(PathBuf::from("/a"))
        );
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(p(&["--help"]).expect("ok").command, Command::Help(t) if t.contains("Commands:")));
        assert!(matches!(p(&["migrate", "--help"]).expect("ok").command, Command::Help(t) if t.contains("--dry-run")));
        assert!(matches!(p(&["help", "once"]).expect("ok").command, Command::Help(t) if t.contains("JSON")));
        assert_eq!(p(&["--version"]).expect("ok").command, Command::Version);
    }

    #[test]
    fn usage_errors_name_the_problem() {
        for (args, needle) in [
            (&["frobnicate"][..], "unknown command \"frobnicate\""),
            (&["once", "--fast"][..], "once: unknown option \"--fast\""),
            (&["quarantine", "retry", "x"][..], "\"x\" is not a reading id"),
            (&["--env-file"][..], "--env-file needs a PATH"),
        ] {
            match p(args) {
                Err(Error::Usage(msg)) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("{args:?}: expected a usage error, got {other:?}"),
            }
        }
    }
}
