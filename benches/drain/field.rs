//! The field-shaped sections of `cargo bench --bench drain` (BENCHMARKS.md, "Upload drain on field-shaped data"):
//! data shaped like a real fleet's, durable commits on a disk-backed data directory, a long backlog, a slow
//! link, and the bytes each way on the wire.
//!
//! Sections (BENCH_ONLY names):
//! - `fleet`: BENCH_FLEET_ROWS (200,000) fleet-shaped readings ([`FLEET`]) on loopback, fsync off: the binary
//!   COPY pipe, the hand-written 100-row loop, the daemon at BATCH_SIZE 5000 and 100 (peak RSS at 5000);
//! - `bytes`: BENCH_BYTES_ROWS (50,000) fleet-shaped readings through the proxy without latency or cap: bytes
//!   to and from the remote per reading, the daemon (5000, 100) against the binary COPY pipe;
//! - `durable`: a second pair of servers with fsync, synchronous_commit and full_page_writes on (data dirs on
//!   disk): the `fleet` contenders, then a BENCH_BACKLOG_ROWS (1,000,000) backlog: COPY pipe against the daemon
//!   at BATCH_SIZE 100 (with BATCH_SIZE_MAX 5000 when the build has that variable) and at 5000;
//! - `link`: the proxy at 25 ms each way (50 ms round trip) and a 20 Mbit/s token-bucket cap each way:
//!   BENCH_LINK_ROWS (1,000,000) readings by the COPY pipe and by the daemon at BATCH_SIZE 100 with
//!   UPLOAD_BATCHES_IN_FLIGHT=4 (and BATCH_SIZE_MAX 5000 when the build has it), with their bytes; the hand loop
//!   on BENCH_LINK_HAND_ROWS (10,000) for its rate.
//!
//! Every run starts from the same re-seeded rows and is verified as the other sections' are (exactly once by a
//! multiset hash of every column's text; remote insertion order for the daemon).

use std::net::SocketAddr;
use std::time::Duration;

use super::common::{self, mb, thousands, Report, Servers, Verdict};
use super::proxy::{FaultProxy, Way};
use super::{Bench, Data, Run, Seeded};

/// Fleet-shaped readings: 500 meters with ids of 2-244 characters (unicode, quotes, backslashes); NUMERIC with
/// 1-20 significant digits and scale 0-20 (10% negative, 0.1% NaN); nested JSONB metadata with unicode,
/// escapes and JSON nulls (10% SQL NULL, 2% JSON `null`); 5% of timestamps tied with another reading's;
/// inserted in random time order (ids do not follow time). `$1` rows, deterministic.
pub(super) static FLEET: Data = Data {
    name: "fleet-shaped",
    seed: FLEET_SEED,
    digest: HASH_DIGEST,
};

const FLEET_SEED: &str = r##"INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT left(repeat('Zähler «Nord» ''Halle 3'' \ "Ω" 東京 ', 12), 1 + ((m * 37) % 240)::int) || '#' || m,
       timestamp '2024-01-01 00:00:00' + k * interval '1 second' + ((k * 7919) % 1000000) * interval '1 microsecond',
       (CASE WHEN h % 1000 = 7 THEN 'NaN'
             ELSE CASE WHEN h % 10 = 3 THEN '-' ELSE '' END
                  || CASE WHEN s = 0 THEN left(digits, d)
                          WHEN s >= d THEN '0.' || lpad(left(digits, d), s, '0')
                          ELSE left(digits, d - s) || '.' || substr(digits, d - s + 1, s) END
        END)::numeric,
       CASE WHEN h % 5 = 0 THEN 'm³' ELSE 'kWh' END,
       CASE WHEN h % 10 = 0 THEN NULL
            WHEN h % 50 = 1 THEN 'null'::jsonb
            ELSE jsonb_build_object(
              'quality', (ARRAY['good', 'estimated', 'substituted «manuell»'])[1 + h % 3],
              'source', jsonb_build_object('bus', 'modbus', 'address', h % 247, 'tag', 'Zähler "Ost" \ ✓ ' || m,
                                           'note', NULL::text),
              'flags', jsonb_build_array(h % 2 = 0, NULL::int, h % 7, 'tab\there'),
              'calibration', jsonb_build_object(
                'factor', round((h % 100000)::numeric / 1000, (h % 4)::int),
                'history', jsonb_build_array(jsonb_build_object(
                  'at', '2023-0' || (1 + h % 9), 'by', E'tech\n«' || (h % 13) || '»', 'ok', NULL::bool))),
              'seq', g)
       END
FROM (SELECT g, (g % 500)::int AS m, CASE WHEN g % 20 = 0 THEN g - 1 ELSE g END AS k, h,
             1 + (h % 20)::int AS d, ((h / 20) % 21)::int AS s, translate(md5(g::text), 'abcdef', '123456') AS digits
      FROM (SELECT g, abs(hashint8(g)) AS h FROM generate_series(1::bigint, $1::bigint) AS g) a) b
ORDER BY md5(g::text || 'in random time order')"##;

/// A multiset digest that stays small for a million wide rows: the count and the exact sum of a 64-bit hash of
/// every column's text (JSON null and SQL NULL differ).
const HASH_DIGEST: &str = "SELECT count(*), coalesce(sum(hashtextextended(meter_id || '|' || timestamp::text || '|' || \
     value::text || '|' || unit || '|' || coalesce(metadata::text, '<null>'), 0)::numeric), 0)::text FROM meter_readings";

/// 20 Mbit/s in bytes per second.
const LINK_BYTES_PER_SEC: u64 = 20_000_000 / 8;
/// One-way delay of the link (50 ms round trip).
const LINK_ONE_WAY: Duration = Duration::from_millis(25);
/// The largest batch when the build grows batches (BATCH_SIZE_MAX).
const GROWTH_MAX: &str = "5000";

/// How one contender drains the queue.
#[derive(Clone)]
enum How {
    Copy,
    Hand,
    Daemon {
        batch_size: u32,
        vars: Vec<(&'static str, String)>,
    },
}

/// A contender with its label in the tables.
#[derive(Clone)]
struct Contender {
    label: String,
    how: How,
}

impl Contender {
    fn copy() -> Contender {
        Contender {
            label: "binary COPY pipe + DELETE".into(),
            how: How::Copy,
        }
    }

    fn hand() -> Contender {
        Contender {
            label: "hand-written 100-row loop".into(),
            how: How::Hand,
        }
    }

    /// The loopback sections' contenders: the COPY pipe, the hand loop, the daemon at 5000 and at 100 (the
    /// peak RSS row reads the third).
    fn loopback() -> [Contender; 4] {
        [
            Contender::copy(),
            Contender::hand(),
            Contender::daemon(5000, &[]),
            Contender::daemon(100, &[]),
        ]
    }

    fn daemon(batch_size: u32, vars: &[(&'static str, &str)]) -> Contender {
        let mut label = format!("daemon BATCH_SIZE {batch_size}");
        for (k, v) in vars {
            label.push_str(&format!(", {k}={v}"));
        }
        Contender {
            label,
            how: How::Daemon {
                batch_size,
                vars: vars.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
            },
        }
    }
}

/// A contender's run, with the bytes the proxy carried to and from the remote during it (0 without a proxy).
struct Measured {
    label: String,
    run: Run,
    up: u64,
    down: u64,
}

impl Measured {
    fn per_reading(&self) -> (f64, f64) {
        let n = self.run.rows.max(1) as f64;
        (self.up as f64 / n, self.down as f64 / n)
    }

    fn bytes_text(&self) -> String {
        let (up, down) = self.per_reading();
        format!("{:.0} B/reading ({up:.0} up, {down:.0} down)", up + down)
    }
}

/// Whether this build grows batches (issue 17's BATCH_SIZE_MAX).
fn grows() -> bool {
    sync_process::config::VARIABLES
        .iter()
        .any(|(k, _, _)| *k == "BATCH_SIZE_MAX")
}

/// The daemon at BATCH_SIZE 100 growing to [`GROWTH_MAX`] when the build can, with `extra` variables.
fn daemon_growing(extra: &[(&'static str, &str)]) -> Contender {
    let mut vars: Vec<(&'static str, &str)> = extra.to_vec();
    if grows() {
        vars.insert(0, ("BATCH_SIZE_MAX", GROWTH_MAX));
    }
    Contender::daemon(100, &vars)
}

impl Bench<'_> {
    /// Runs each contender on a fresh queue of `n` readings of `data`, the remote at `remote_port`; counts bytes
    /// through `proxy` when given.
    fn contest(
        &mut self,
        section: &str,
        data: &'static Data,
        n: i64,
        remote_port: u16,
        proxy: Option<&FaultProxy>,
        contenders: &[Contender],
    ) -> Vec<Measured> {
        let mut seeded: Option<Seeded> = None;
        let mut out = Vec::new();
        for c in contenders {
            let s = match &seeded {
                None => self.seed_with(n, true, data),
                Some(s) => {
                    self.seed_with(n, false, data);
                    s.clone()
                }
            };
            let before = proxy.map_or((0, 0), |p| (p.bytes(Way::Up), p.bytes(Way::Down)));
            let run = match &c.how {
                How::Copy => self.copy_pipe_to(&s, remote_port),
                How::Hand => self.hand(&s, remote_port),
                How::Daemon { batch_size, vars } => {
                    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    self.daemon_vars(&s, *batch_size, remote_port, &vars)
                }
            };
            let after = proxy.map_or((0, 0), |p| (p.bytes(Way::Up), p.bytes(Way::Down)));
            let m = Measured {
                label: c.label.clone(),
                run,
                up: after.0 - before.0,
                down: after.1 - before.1,
            };
            let drain = m
                .run
                .daemon
                .as_ref()
                .map(|d| format!(", drain {:.2} s", d.drain.as_secs_f64()));
            let rss = m
                .run
                .daemon
                .as_ref()
                .map(|d| format!(", peak RSS {}", mb(d.finished.peaks.vm_hwm_kb)));
            println!(
                "  [{section}] {:<60} {:>9} rows/s ({:.2} s{}{}){} {}",
                m.label,
                thousands(m.run.rate()),
                m.run.wall.as_secs_f64(),
                drain.unwrap_or_default(),
                rss.unwrap_or_default(),
                if proxy.is_some() {
                    format!("; {}", m.bytes_text())
                } else {
                    String::new()
                },
                m.run.checked()
            );
            if let Err(e) = &m.run.check {
                println!("    {e}");
                if let Some(d) = &m.run.daemon {
                    println!("    stderr tail:\n{}", d.finished.stderr_tail);
                }
                self.report
                    .note(format!("[{section}] {}: exactly-once broken: {e}", m.label));
            }
            seeded = Some(s);
            out.push(m);
        }
        out
    }

    /// `fleet`: fleet-shaped readings on loopback, fsync off.
    pub(super) fn fleet(&mut self, rows: i64) {
        println!(
            "\n== fleet: {} fleet-shaped readings, loopback, fsync off",
            thousands(rows as f64)
        );
        let port = self.servers.remote.port();
        let runs = self.contest("fleet", &FLEET, rows, port, None, &Contender::loopback());
        let what = format!("{} fleet-shaped readings, loopback, fsync off", thousands(rows as f64));
        report_contest(self.report, &what, &runs, 0.8);
        if let Some(m) = runs.get(2) {
            peak_row(self.report, &what, m);
        }
    }

    /// `bytes`: bytes per reading through the proxy (no latency, no cap).
    pub(super) fn bytes(&mut self, rows: i64) {
        println!(
            "\n== bytes: {} fleet-shaped readings through the proxy",
            thousands(rows as f64)
        );
        let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], self.servers.remote.port())));
        let runs = self.contest(
            "bytes",
            &FLEET,
            rows,
            proxy.port(),
            Some(&proxy),
            &[
                Contender::copy(),
                Contender::daemon(5000, &[]),
                Contender::daemon(100, &[]),
            ],
        );
        let what = format!("{} fleet-shaped readings", thousands(rows as f64));
        bytes_rows(self.report, &what, &runs);
    }

    /// `durable`: fsync and synchronous_commit on, data directories on disk.
    pub(super) fn durable(&mut self, rows: i64, backlog: i64) {
        println!("\n== durable: a second pair of servers with fsync, synchronous_commit and full_page_writes on");
        let servers = Servers::start_with(common::DURABLE);
        let mut local = servers.local_client();
        let mut remote = servers.remote_client();
        let settings: Vec<String> = ["fsync", "synchronous_commit", "full_page_writes"]
            .iter()
            .map(|s| {
                let v: String = local
                    .query_one(&format!("SHOW {s}"), &[])
                    .map(|r| r.get(0))
                    .unwrap_or_default();
                format!("{s}={v}")
            })
            .collect();
        let fs = std::process::Command::new("df")
            .args(["--output=source,fstype"])
            .arg(servers.local.data_dir())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let setting = format!(
            "{}; data dirs under {} on {fs}",
            settings.join(", "),
            std::env::temp_dir().display()
        );
        println!("  {setting}");
        self.report.note(format!("durable servers: {setting}"));
        let mut b = Bench {
            servers: &servers,
            local: &mut local,
            remote: &mut remote,
            report: self.report,
        };
        let port = servers.remote.port();
        let runs = b.contest("durable", &FLEET, rows, port, None, &Contender::loopback());
        let what = format!("{} fleet-shaped readings, loopback, fsync on", thousands(rows as f64));
        report_contest(self.report, &what, &runs, 0.7);
        if backlog > 0 {
            let runs = b.contest(
                "durable backlog",
                &FLEET,
                backlog,
                port,
                None,
                &[Contender::copy(), daemon_growing(&[]), Contender::daemon(5000, &[])],
            );
            let what = format!(
                "{} fleet-shaped readings backlog, loopback, fsync on",
                thousands(backlog as f64)
            );
            report_vs_copy(self.report, &what, &runs, 0.7);
        }
    }

    /// `link`: 50 ms round trip and a 20 Mbit/s cap each way.
    pub(super) fn link(&mut self, rows: i64, hand_rows: i64) {
        println!(
            "\n== link: {} fleet-shaped readings through the proxy at {} ms each way, capped at {} Mbit/s",
            thousands(rows as f64),
            LINK_ONE_WAY.as_millis(),
            LINK_BYTES_PER_SEC * 8 / 1_000_000
        );
        let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], self.servers.remote.port())));
        proxy.set_latency(LINK_ONE_WAY);
        proxy.set_bandwidth(Some(LINK_BYTES_PER_SEC));
        let rtt = common::round_trip(proxy.port(), 11).as_secs_f64();
        println!("  round trip through the proxy: {:.1} ms", rtt * 1e3);
        let mut runs = self.contest(
            "link",
            &FLEET,
            rows,
            proxy.port(),
            Some(&proxy),
            &[Contender::copy(), daemon_growing(&[("UPLOAD_BATCHES_IN_FLIGHT", "4")])],
        );
        if hand_rows > 0 {
            runs.extend(self.contest(
                "link",
                &FLEET,
                hand_rows,
                proxy.port(),
                Some(&proxy),
                &[Contender::hand()],
            ));
        }
        let what = format!(
            "{} fleet-shaped readings, {:.0} ms round trip, 20 Mbit/s each way",
            thousands(rows as f64),
            rtt * 1e3
        );
        report_vs_copy(self.report, &what, &runs[..2], 0.5);
        if let Some(hand) = runs.get(2) {
            let daemon = &runs[1];
            self.report.row(
                &format!(
                    "{} fleet-shaped readings, same link: {}",
                    thousands(hand.run.rows as f64),
                    hand.label
                ),
                "reference",
                format!("{} rows/s ({})", thousands(hand.run.rate()), hand.run.checked()),
                format!("daemon = {:.1} × this", daemon.run.rate() / hand.run.rate()),
                if hand.run.check.is_ok() {
                    Verdict::Info
                } else {
                    Verdict::Miss
                },
            );
        }
        bytes_rows(self.report, &what, &runs[..2]);
        let (up, down) = runs[0].per_reading();
        let copy_limit = LINK_BYTES_PER_SEC as f64 / up.max(down).max(1.0);
        self.report.note(format!(
            "link: the cap alone limits the COPY pipe to {} readings/s at its {:.0} B/reading up",
            thousands(copy_limit),
            up
        ));
    }
}

/// Rows for a contest of [`Contender::copy`], [`Contender::hand`], the daemon at 5000 and at 100 (in that order):
/// the references, daemon @5000 against the COPY pipe (target `copy_ratio`), daemon @100 against the hand loop
/// (target 2).
fn report_contest(rep: &Report, what: &str, runs: &[Measured], copy_ratio: f64) {
    let [copy, hand, d5000, d100] = runs else {
        return;
    };
    for r in [copy, hand] {
        rep.row(
            &format!("{what}: {}", r.label),
            "reference",
            format!("{} rows/s ({})", thousands(r.run.rate()), r.run.checked()),
            "-".into(),
            if r.run.check.is_ok() {
                Verdict::Info
            } else {
                Verdict::Miss
            },
        );
    }
    ratio_row(rep, what, d5000, copy, "COPY pipe", copy_ratio);
    ratio_row(rep, what, d100, hand, "hand loop", 2.0);
    for d in [d5000, d100] {
        if let Some(daemon) = &d.run.daemon {
            rep.note(format!(
                "{what}, {}: wall {:.2} s, drain {:.2} s; {}",
                d.label,
                d.run.wall.as_secs_f64(),
                daemon.drain.as_secs_f64(),
                d.run.cpu.describe(d.run.wall, "daemon")
            ));
        }
    }
    rep.note(format!(
        "{what}, COPY pipe: {}",
        copy.run.cpu.describe(copy.run.wall, "psql x3")
    ));
}

/// Rows for the COPY pipe (first) and each daemon run after it, against it (target `min`).
fn report_vs_copy(rep: &Report, what: &str, runs: &[Measured], min: f64) {
    let Some((copy, rest)) = runs.split_first() else {
        return;
    };
    rep.row(
        &format!("{what}: {}", copy.label),
        "reference",
        format!("{} rows/s ({})", thousands(copy.run.rate()), copy.run.checked()),
        "-".into(),
        if copy.run.check.is_ok() {
            Verdict::Info
        } else {
            Verdict::Miss
        },
    );
    for d in rest {
        ratio_row(rep, what, d, copy, "COPY pipe", min);
        if let Some(daemon) = &d.run.daemon {
            rep.note(format!(
                "{what}, {}: wall {:.2} s, drain {:.2} s, peak RSS {}; {}",
                d.label,
                d.run.wall.as_secs_f64(),
                daemon.drain.as_secs_f64(),
                mb(daemon.finished.peaks.vm_hwm_kb),
                d.run.cpu.describe(d.run.wall, "daemon")
            ));
        }
    }
    if !grows() {
        rep.note(format!(
            "{what}: this build has no BATCH_SIZE_MAX (batch growth): the BATCH_SIZE 100 run did not grow"
        ));
    }
}

/// `d`'s rate against `reference`'s, target `min` ×.
fn ratio_row(rep: &Report, what: &str, d: &Measured, reference: &Measured, name: &str, min: f64) {
    let ratio = d.run.rate() / reference.run.rate();
    rep.row(
        &format!("{what}: {}", d.label),
        &format!("≥ {min} × {name}"),
        format!("{} rows/s ({})", thousands(d.run.rate()), d.run.checked()),
        format!("{ratio:.2} × {name}"),
        Verdict::of(ratio >= min && d.run.check.is_ok()),
    );
}

/// The daemon's peak RSS in `m` (target 16 MB at BATCH_SIZE 5000).
fn peak_row(rep: &Report, what: &str, m: &Measured) {
    let Some(d) = &m.run.daemon else { return };
    let p = &d.finished.peaks;
    rep.row(
        &format!("{what}: peak RSS of the {}", m.label),
        "≤ 16 MB",
        format!(
            "{} (VmHWM); RssAnon at most {}, RssFile at most {}",
            mb(p.vm_hwm_kb),
            mb(p.rss_anon_kb),
            mb(p.rss_file_kb)
        ),
        format!("{:.2} × target", p.vm_hwm_kb as f64 / 1024.0 / 16.0),
        Verdict::of(p.vm_hwm_kb <= 16 * 1024),
    );
}

/// Bytes per reading of each daemon run against the COPY pipe's (first), target ≤ 1.2 ×.
fn bytes_rows(rep: &Report, what: &str, runs: &[Measured]) {
    let Some((copy, rest)) = runs.split_first() else {
        return;
    };
    let copy_total = (copy.up + copy.down) as f64;
    rep.row(
        &format!("{what}: bytes to and from the remote, {}", copy.label),
        "reference",
        copy.bytes_text(),
        "-".into(),
        Verdict::Info,
    );
    for d in rest {
        let ratio = (d.up + d.down) as f64 / copy_total.max(1.0);
        rep.row(
            &format!("{what}: bytes to and from the remote, {}", d.label),
            "≤ 1.2 × COPY binary",
            d.bytes_text(),
            format!("{ratio:.2} × COPY binary"),
            Verdict::of(ratio <= 1.2),
        );
    }
}
