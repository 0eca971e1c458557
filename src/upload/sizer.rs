//! Growing batches (BATCH_SIZE_MAX): how many readings the drain's next claim asks for.
//!
//! Owns: [`Sizer`], pure. While a backlog remains (a claim came back full), the next claim asks for twice as
//! many, up to BATCH_SIZE_MAX; a short claim (the end of the queue, or the claim's byte bound cut it) or a
//! failed batch falls back to BATCH_SIZE. Each batch is still one exactly-once unit, whatever its size. With
//! BATCH_SIZE_MAX = BATCH_SIZE (the default) every claim asks for BATCH_SIZE. Does not own: the claim itself
//! and its byte bound (sql.rs), when claims happen (drain.rs).

/// The limit of the next claim of one drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizer {
    base: u32,
    max: u32,
    next: u32,
}

impl Sizer {
    /// BATCH_SIZE and BATCH_SIZE_MAX (a maximum below the base counts as the base).
    pub fn new(base: u32, max: u32) -> Sizer {
        let base = base.max(1);
        Sizer {
            base,
            max: max.max(base),
            next: base,
        }
    }

    /// How many readings the next claim asks for.
    pub fn limit(&self) -> u32 {
        self.next
    }

    /// A claim that asked for `asked` readings came back with `claimed`: full, the backlog remains and the
    /// next one doubles (up to the maximum); short, the queue is nearly drained (or the byte bound cut it) and
    /// the next one asks for the base again.
    pub fn claimed(&mut self, asked: u32, claimed: usize) {
        self.next = if claimed >= asked as usize {
            asked.max(self.base).saturating_mul(2).min(self.max)
        } else {
            self.base
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

    #[test]
    fn equal_sizes_never_grow() {
        let mut s = Sizer::new(100, 100);
        for _ in 0..5 {
            assert_eq!(s.limit(), 100);
            s.claimed(100, 100);
        }
        assert_eq!(s.limit(), 100);
    }

    #[test]
    fn full_batches_double_up_to_the_maximum_and_short_ones_fall_back() {
        let mut s = Sizer::new(100, 5000);
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(s.limit());
            s.claimed(s.limit(), s.limit() as usize);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        s.claimed(5000, 4999);
        assert_eq!(s.limit(), 100);
        s.claimed(100, 100);
        assert_eq!(s.limit(), 200);
    }

    #[test]
    fn a_maximum_below_the_base_is_the_base() {
        let mut s = Sizer::new(100, 10);
        s.claimed(100, 100);
        assert_eq!(s.limit(), 100);
    }

    /// What happened to one claim of a drain.
    #[derive(Clone, Debug)]
    enum Event {
        /// The claim came back with this share (in 1/255ths, 255 = full) of what it asked for.
        Claimed(u8),
        Failed,
    }

    impl Arbitrary for Event {
        fn arbitrary(g: &mut Gen) -> Event {
            match u8::arbitrary(g) % 8 {
                0 => Event::Failed,
                1 | 2 => Event::Claimed(u8::arbitrary(g)),
                _ => Event::Claimed(255),
            }
        }
    }

    // **Feature: database-sync-process, Property 1: Batch size limit enforcement**
    // With growing batches the bound is BATCH_SIZE_MAX: every claim asks for at least BATCH_SIZE and at most
    // BATCH_SIZE_MAX readings; after a full claim the next asks for double (capped), after a short claim or a
    // failure exactly BATCH_SIZE; with BATCH_SIZE_MAX = BATCH_SIZE every claim asks for BATCH_SIZE.
    fn prop_claims_stay_within_the_bounds(base: u16, extra: u16, events: Vec<Event>) -> TestResult {
        let base = u32::from(base % 5000) + 1;
        let max = base + u32::from(extra % 3) * u32::from(extra);
        let mut s = Sizer::new(base, max);
        if s.limit() != base {
            return TestResult::error("the first claim must ask for BATCH_SIZE");
        }
        for e in events {
            let asked = s.limit();
            if asked < base || asked > max {
                return TestResult::error(format!("asked {asked} outside {base}..={max}"));
            }
            let expected = match e {
                Event::Failed => {
                    // What the drain does after an error (drain.rs: a fresh pipe).
                    s = Sizer::new(base, max);
                    base
                }
                Event::Claimed(share) => {
                    let got = (u64::from(asked) * u64::from(share) / 255) as usize;
                    s.claimed(asked, got);
                    if got >= asked as usize {
                        (asked * 2).min(max)
                    } else {
                        base
                    }
                }
            };
            if s.limit() != expected || (max == base && s.limit() != base) {
                return TestResult::error(format!("after {e:?} at {asked}: {} not {expected}", s.limit()));
            }
        }
        TestResult::passed()
    }

    #[test]
    fn prop_1_growing_batches_stay_within_the_bounds() {
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop_claims_stay_within_the_bounds as fn(u16, u16, Vec<Event>) -> TestResult);
    }
}
