//! Validation before upload (UPLOAD_VALIDATE, opt-in): the checks a reading must pass to leave the box.
//!
//! Owns: [`Check`] (the four checks and their names), [`TimestampWindow`] (UPLOAD_TIMESTAMP_WINDOW, parsed by
//! [`TimestampWindow::parse`]), [`Validation`] (what the validated claim statements take as parameters) and
//! the per-check counter behind /metrics ([`invalid_readings`]). Pure apart from that counter. Does not own:
//! the checks themselves, which run inside the claim statements on the local server (sql.rs:
//! `validate_ctes!`, no extra round trip), nor reading the variables (config/read.rs).
//!
//! A reading that fails an enabled check is moved to `sync_quarantine` by the claim statement itself, with the
//! first failing check's name and the offending value as its error (`finite-value: NaN`); it never reaches
//! the remote and is never lost. `quarantine retry` puts it back in the queue, and the next claim checks it
//! again.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// One check of UPLOAD_VALIDATE, in the order they are tried (a reading's reason names the first it fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The reading's meter_id is in the local `meters` table (mirrored from the central).
    KnownMeter,
    /// The reading's unit equals its meter's unit (a reading of an unknown meter is known-meter's business).
    MeterUnit,
    /// The value is not NaN, Infinity or -Infinity.
    FiniteValue,
    /// The timestamp lies within UPLOAD_TIMESTAMP_WINDOW of the local server's clock.
    TimestampWindow,
}

impl Check {
    /// Every check, in order (the order of the per-check counts the validated claims return).
    pub const ALL: [Check; 4] = [
        Check::KnownMeter,
        Check::MeterUnit,
        Check::FiniteValue,
        Check::TimestampWindow,
    ];

    /// The accepted names, for error messages.
    pub const ACCEPTED: &'static str = "known-meter, meter-unit, finite-value, timestamp-window";

    pub fn name(self) -> &'static str {
        match self {
            Check::KnownMeter => "known-meter",
            Check::MeterUnit => "meter-unit",
            Check::FiniteValue => "finite-value",
            Check::TimestampWindow => "timestamp-window",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// UPLOAD_VALIDATE: a comma list of check names (spaces around them ignored, duplicates harmless, empty
    /// entries skipped), in [`Check::ALL`] order without repeats. Empty: no validation. An unknown name is an
    /// error naming it and the accepted ones.
    pub fn parse_list(list: &str) -> Result<Vec<Check>, String> {
        let mut checks = Vec::new();
        let mut unknown = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.parse::<Check>() {
                Ok(c) => checks.push(c),
                Err(()) => unknown.push(format!("{:?}", short(name))),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "{} {} not a check (accepted: {}; empty = off)",
                unknown.join(", "),
                if unknown.len() == 1 { "is" } else { "are" },
                Check::ACCEPTED
            ));
        }
        checks.sort_unstable();
        checks.dedup();
        Ok(checks)
    }
}

impl FromStr for Check {
    type Err = ();
    fn from_str(s: &str) -> Result<Check, ()> {
        Check::ALL.into_iter().find(|c| c.name() == s).ok_or(())
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// UPLOAD_TIMESTAMP_WINDOW: readings must lie within [now + lower, now + upper] of the local server's clock
/// (`localtimestamp`, the same clock as created_at's default). Bounds in whole seconds, lower < upper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimestampWindow {
    pub lower_secs: i64,
    pub upper_secs: i64,
    /// As written (spaces removed), for reasons and the summary: `-365d..+1h`.
    pub text: String,
}

/// A bound's magnitude is at most 100 years.
const MAX_BOUND_SECS: i64 = 36_500 * 86_400;

impl TimestampWindow {
    /// `LOWER..UPPER`, each a signed whole number with a unit s, m, h or d (`-365d..+1h`; `0` needs no unit).
    pub fn parse(text: &str) -> Result<TimestampWindow, String> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let shown = short(&text);
        let shape = "LOWER..UPPER, each a signed whole number with a unit s, m, h or d, e.g. -365d..+1h";
        let Some((lo, hi)) = text.split_once("..") else {
            return Err(format!("{shown:?} is not a window ({shape})"));
        };
        let bound = |b: &str, which: &str| {
            parse_bound(b).map_err(|why| format!("{shown:?}: the {which} bound {:?} {why} ({shape})", short(b)))
        };
        let (lower_secs, upper_secs) = (bound(lo, "lower")?, bound(hi, "upper")?);
        if lower_secs >= upper_secs {
            return Err(format!(
                "{shown:?}: the lower bound must be before the upper one ({shape})"
            ));
        }
        Ok(TimestampWindow {
            lower_secs,
            upper_secs,
            text,
        })
    }
}

/// `[+|-]N[s|m|h|d]` in seconds.
fn parse_bound(b: &str) -> Result<i64, &'static str> {
    let (sign, rest) = match b.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, b.strip_prefix('+').unwrap_or(b)),
    };
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let (digits, unit) = rest.split_at(digits_end);
    if digits.is_empty() {
        return Err("is not a number with a unit");
    }
    let n: i64 = digits.parse().map_err(|_| "is too large")?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" if n == 0 => 1,
        "" => return Err("has no unit"),
        _ => return Err("has an unknown unit"),
    };
    match n.checked_mul(per) {
        Some(secs) if secs <= MAX_BOUND_SECS => Ok(sign * secs),
        _ => Err("is beyond 100 years"),
    }
}

/// At most 40 characters of a configured value, for error messages.
fn short(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// What the validated claim statements take: the enabled checks and the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// The enabled check names, for `= ANY($n::text[])`.
    pub checks: Vec<&'static str>,
    pub window: TimestampWindow,
}

impl Validation {
    /// None when no check is enabled: the claims are then the unvalidated statements, unchanged.
    pub fn new(checks: &[Check], window: &TimestampWindow) -> Option<Validation> {
        (!checks.is_empty()).then(|| Validation {
            checks: checks.iter().map(|c| c.name()).collect(),
            window: window.clone(),
        })
    }
}

/// Readings quarantined by each check since this process started, in [`Check::ALL`] order.
static INVALID: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Counts readings a claim quarantined: `counts` per check in [`Check::ALL`] order. Returns their sum.
pub(super) fn record_invalid(counts: &[i64]) -> u64 {
    let mut total = 0;
    for (check, n) in Check::ALL.iter().zip(counts) {
        let n = u64::try_from(*n).unwrap_or(0);
        INVALID[check.index()].fetch_add(n, Ordering::Relaxed);
        total += n;
    }
    total
}

/// Readings each check quarantined since this process started (for /metrics), in [`Check::ALL`] order.
pub fn invalid_readings() -> [(Check, u64); 4] {
    Check::ALL.map(|c| (c, INVALID[c.index()].load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::QuickCheck;

    #[test]
    fn lists_are_parsed_in_order_without_repeats() {
        assert_eq!(Check::parse_list(""), Ok(vec![]));
        assert_eq!(Check::parse_list(" , "), Ok(vec![]));
        assert_eq!(
            Check::parse_list("timestamp-window, known-meter,known-meter"),
            Ok(vec![Check::KnownMeter, Check::TimestampWindow])
        );
        assert_eq!(
            Check::parse_list("known-meter,meter-unit,finite-value,timestamp-window"),
            Ok(Check::ALL.to_vec())
        );
        let e = Check::parse_list("known-meter,finite,Meter-Unit").expect_err("unknown");
        assert!(e.starts_with("\"finite\", \"Meter-Unit\" are not a check"), "{e}");
        assert!(e.contains(Check::ACCEPTED), "{e}");
        let e = Check::parse_list("nan").expect_err("unknown");
        assert!(e.starts_with("\"nan\" is not a check (accepted: known-meter,"), "{e}");
    }

    #[test]
    fn windows_are_parsed_with_units_and_checked() {
        let w = TimestampWindow::parse("-365d..+1h").expect("default");
        assert_eq!((w.lower_secs, w.upper_secs), (-365 * 86_400, 3600));
        assert_eq!(w.text, "-365d..+1h");
        let w = TimestampWindow::parse(" -90m .. 30s ").expect("spaces");
        assert_eq!((w.lower_secs, w.upper_secs, w.text.as_str()), (-5400, 30, "-90m..30s"));
        assert_eq!(TimestampWindow::parse("0..+1d").map(|w| w.lower_secs), Ok(0));
        for (bad, why) in [
            ("-365d", "is not a window"),
            ("-365..+1h", "lower bound \"-365\" has no unit"),
            ("-365y..+1h", "has an unknown unit"),
            ("-365d..h", "upper bound \"h\" is not a number"),
            ("-365d..+99999999999999999999d", "is too large"),
            ("-36501d..+1h", "beyond 100 years"),
            ("+1h..-365d", "lower bound must be before the upper one"),
            ("+1h..+60m", "lower bound must be before the upper one"),
            ("--1d..+1h", "is not a number"),
        ] {
            let e = TimestampWindow::parse(bad).expect_err(bad);
            assert!(e.contains(why) && e.contains("e.g. -365d..+1h"), "{bad}: {e}");
        }
    }

    /// A window written from random bounds parses back to those bounds exactly when lower < upper.
    #[test]
    fn written_windows_parse_back() {
        fn prop(lo: i32, hi: i32, lu: u8, hu: u8) -> bool {
            let units = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];
            let (lu, hu) = (units[usize::from(lu % 4)], units[usize::from(hu % 4)]);
            let (lo, hi) = (i64::from(lo % 36_500), i64::from(hi % 36_500));
            let text = format!("{lo:+}{}..{hi:+}{}", lu.0, hu.0);
            let (l, h) = (lo * lu.1, hi * hu.1);
            match TimestampWindow::parse(&text) {
                Ok(w) => l < h && w.lower_secs == l && w.upper_secs == h && w.text == text,
                Err(_) => l >= h,
            }
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(i32, i32, u8, u8) -> bool);
    }

    #[test]
    fn no_check_means_no_validation() {
        let w = TimestampWindow::parse("-1d..+1h").expect("window");
        assert_eq!(Validation::new(&[], &w), None);
        let v = Validation::new(&[Check::FiniteValue, Check::TimestampWindow], &w).expect("some");
        assert_eq!(v.checks, vec!["finite-value", "timestamp-window"]);
    }
}
