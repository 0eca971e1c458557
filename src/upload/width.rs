//! How many batches the drain keeps in flight right now, between one and UPLOAD_BATCHES_IN_FLIGHT.
//!
//! Owns: [`Width`], pure. Several batches in flight pay only where the link's round trip is what the drain
//! waits for; where the local database is the slower side (loopback, a LAN) they only add the turn-taking's
//! cost and a remote connection each (measured on loopback: 0.8 × one batch in flight, and a `once` at 8 in
//! flight spends its first 25 ms opening connections). So the drain starts at one and watches each step:
//! when it waited for the oldest batch in flight clearly longer than its own local work took, the width
//! doubles (up to the maximum: a 50 ms link reaches 8 in three steps); when it hardly waited for several steps
//! in a row, the width halves (down to one, where the plain statement is used and the chain is not touched).
//! A box whose central answers fast never opens more than one upload connection. Does not own: sending or
//! waiting (drain.rs, uplink.rs).

use std::time::Duration;

/// Waiting this much longer than the local work took means the link is the limit: more in flight helps.
const GROW_MARGIN: Duration = Duration::from_millis(1);
/// A wait this short is hardly any (loopback: the remote statement of a batch of 100 takes about 0.3 ms),
/// whatever the local work took.
const HARDLY: Duration = Duration::from_micros(500);
/// Steps in a row with hardly any wait (under a quarter of the local work, or under [`HARDLY`]) before the
/// width halves.
const SHRINK_AFTER: u32 = 8;

/// The drain's current number of batches in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Width {
    max: usize,
    now: usize,
    quiet: u32,
}

impl Width {
    /// Starts at one (a slow link brings it up to the maximum within a few batches).
    pub fn new(max: usize) -> Width {
        Width {
            max: max.max(1),
            now: 1,
            quiet: 0,
        }
    }

    pub fn now(&self) -> usize {
        self.now
    }

    /// One step: the drain did `local` work (finishing and claiming) and then `waited` for the oldest batch in
    /// flight.
    pub fn observe(&mut self, local: Duration, waited: Duration) {
        if waited > local + GROW_MARGIN {
            self.now = (self.now * 2).min(self.max);
            self.quiet = 0;
        } else if waited * 4 <= local || waited < HARDLY {
            self.quiet += 1;
            if self.quiet >= SHRINK_AFTER {
                self.now = (self.now / 2).max(1);
                self.quiet = 0;
            }
        } else {
            self.quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slow_link_grows_the_width_and_a_fast_one_shrinks_it() {
        let mut w = Width::new(8);
        assert_eq!(w.now(), 1);
        for _ in 0..SHRINK_AFTER * 3 {
            w.observe(MS, Duration::ZERO);
        }
        assert_eq!(w.now(), 1, "a fast central: one in flight");
        for want in [2, 4, 8, 8] {
            w.observe(MS / 2, 50 * MS);
            assert_eq!(w.now(), want);
        }
        // Waiting about as long as the local work: nothing changes.
        for _ in 0..20 {
            w.observe(MS, MS);
        }
        assert_eq!(w.now(), 8);
        // Hardly waiting: halves after SHRINK_AFTER steps in a row, down to one; a wait under HARDLY counts
        // as none even when the local work was as short.
        for _ in 0..SHRINK_AFTER * 3 {
            w.observe(MS / 10, HARDLY / 2);
        }
        assert_eq!(w.now(), 1);
        for _ in 0..SHRINK_AFTER {
            w.observe(MS, Duration::ZERO);
        }
        assert_eq!(w.now(), 1);
    }

    #[test]
    fn one_in_flight_stays_one() {
        let mut w = Width::new(1);
        w.observe(Duration::ZERO, 100 * MS);
        assert_eq!(w.now(), 1);
    }

    // Whatever the timings, the width stays within 1..=max and changes only by doubling or halving.
    fn prop_width_stays_in_bounds(max: u8, steps: Vec<(u16, u16)>) -> TestResult {
        let max = usize::from(max % 8) + 1;
        let mut w = Width::new(max);
        for (local, waited) in steps {
            let before = w.now();
            w.observe(
                Duration::from_micros(u64::from(local)),
                Duration::from_micros(u64::from(waited) * 4),
            );
            let now = w.now();
            let step_ok = now == before || now == (before * 2).min(max) || now == (before / 2).max(1);
            if !(1..=max).contains(&now) || !step_ok {
                return TestResult::error(format!("{before} -> {now} with max {max}"));
            }
        }
        TestResult::passed()
    }

    #[test]
    fn prop_the_width_stays_within_one_and_the_maximum() {
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop_width_stays_in_bounds as fn(u8, Vec<(u16, u16)>) -> TestResult);
    }
}
