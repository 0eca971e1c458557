//! Jitter: spreads waits so that a fleet restarted together, or recovering from one central outage, does not
//! connect and retry in lockstep (SYNC_JITTER_PERCENT).
//!
//! Owns: [`Ticker`] (the scheduler's cycle clock: the interval's grid, each tick a little early) and [`spread`] (a wait shortened by a random share of up to `percent` %: never longer than asked, so a
//! tick still comes within SYNC_INTERVAL_SECONDS and a backoff within its schedule; 100 % is "full jitter",
//! uniform over the whole wait) and the small generator behind it (splitmix64, seeded per process from the
//! clock, the pid and a counter; not for secrets). Does not own: what is waited for (retry.rs, scheduler.rs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `wait` shortened by a uniformly random share in [0, percent %) of it. `percent` above 100 counts as 100.
pub fn spread(wait: Duration, percent: u8) -> Duration {
    spread_by(wait, percent, unit())
}

/// [`spread`] with the random draw `u` in [0, 1) given (pure, for tests).
pub fn spread_by(wait: Duration, percent: u8, u: f64) -> Duration {
    let share = f64::from(percent.min(100)) / 100.0 * u.clamp(0.0, 1.0);
    wait.saturating_sub(wait.mul_f64(share))
}

/// The cycle clock: ticks on a grid of SYNC_INTERVAL_SECONDS, each one earlier than its grid point by a random
/// share of up to SYNC_JITTER_PERCENT (never later, so the interval stays a promise, and the average rate is
/// the interval's). The first tick, at start, comes after such a random share (of at most a minute) too: a
/// fleet restarted together spreads out from its first cycle. A cycle that overran its grid points is followed by a tick at once, and
/// the grid restarts from then (missed ticks are not made up).
pub struct Ticker {
    interval: Duration,
    percent: u8,
    /// The grid point of the next tick.
    nominal: Instant,
    /// When the next tick fires.
    due: Instant,
}

impl Ticker {
    pub fn new(interval: Duration, percent: u8) -> Ticker {
        let now = Instant::now();
        // At most a minute's share: a long interval must not postpone the first cycle by minutes.
        let first = interval.min(Duration::from_secs(60));
        let lead = first.saturating_sub(spread(first, percent));
        Ticker {
            interval,
            percent,
            nominal: now + lead,
            due: now + lead,
        }
    }

    /// A channel that delivers the next tick.
    pub fn channel(&self) -> crossbeam_channel::Receiver<Instant> {
        crossbeam_channel::at(self.due)
    }

    /// After a tick fired (and its cycle ran): the next grid point and its jittered time.
    pub fn advance(&mut self) {
        let now = Instant::now();
        self.nominal += self.interval;
        if self.nominal < now {
            self.nominal = now;
        }
        let early = self.interval.saturating_sub(spread(self.interval, self.percent));
        self.due = self.nominal.checked_sub(early).unwrap_or(self.nominal).max(now);
    }
}

/// A uniform draw in [0, 1).
fn unit() -> f64 {
    (next() >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64 over a process-wide counter, seeded once from the clock and the pid.
fn next() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    if STATE.load(Ordering::Relaxed) == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) | 1;
        let _ = STATE.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    #[test]
    fn ticks_keep_to_the_grid_never_later_and_at_most_the_jitter_earlier() {
        let interval = Duration::from_millis(200);
        let mut t = Ticker::new(interval, 30);
        let start = t.nominal;
        assert!(t.due <= start && t.due + interval.mul_f64(0.3) + Duration::from_millis(1) >= start);
        for _ in 0..50 {
            let before = t.nominal;
            t.advance();
            assert!(t.nominal >= before + interval || t.nominal >= Instant::now() - Duration::from_millis(5));
            assert!(t.due <= t.nominal, "a tick never comes after its grid point");
            assert!(
                t.due + interval.mul_f64(0.3) + Duration::from_millis(1) >= t.nominal,
                "at most 30 % early"
            );
        }
        let mut none = Ticker::new(interval, 0);
        none.advance();
        assert_eq!(none.due, none.nominal, "0 % is the grid itself");
    }

    #[test]
    fn zero_percent_is_the_wait_itself() {
        for _ in 0..100 {
            assert_eq!(spread(Duration::from_secs(60), 0), Duration::from_secs(60));
        }
    }

    #[test]
    fn full_jitter_covers_the_whole_wait() {
        let w = Duration::from_secs(8);
        assert_eq!(spread_by(w, 100, 0.0), w);
        assert_eq!(spread_by(w, 100, 0.5), Duration::from_secs(4));
        assert!(spread_by(w, 100, 0.999_999) < Duration::from_millis(1));
        assert_eq!(
            spread_by(w, 250, 0.5),
            Duration::from_secs(4),
            "above 100 % counts as 100 %"
        );
    }

    #[test]
    fn draws_differ_and_spread_over_the_range() {
        let w = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..2000).map(|_| spread(w, 10)).collect();
        let (lo, hi) = (draws.iter().min().copied(), draws.iter().max().copied());
        assert!(lo.is_some_and(|d| d < Duration::from_secs(91)), "lowest {lo:?}");
        assert!(hi.is_some_and(|d| d > Duration::from_secs(99)), "highest {hi:?}");
        let below_half = draws.iter().filter(|d| **d < Duration::from_secs(95)).count();
        assert!(
            (800..1200).contains(&below_half),
            "{below_half} of 2000 below the midpoint"
        );
    }

    // A spread wait is never longer than the wait, never shorter than (100 - percent) % of it.
    fn prop_spread_stays_in_range(ms: u32, percent: u8) -> TestResult {
        let w = Duration::from_millis(u64::from(ms));
        let p = percent.min(100);
        let d = spread(w, percent);
        let floor = w.mul_f64(1.0 - f64::from(p) / 100.0);
        TestResult::from_bool(d <= w && d + Duration::from_micros(1) >= floor)
    }

    #[test]
    fn spread_stays_in_range() {
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop_spread_stays_in_range as fn(u32, u8) -> TestResult);
    }
}
