//! Growing batches (BATCH_SIZE_MAX): how many readings the drain's next claim asks for.
//!
//! Owns: [`Sizer`], pure. While a backlog remains (a claim came back full), the next claim asks for twice as
//! many, up to BATCH_SIZE_MAX; a claim the byte bound cut (its row data within one average reading of
//! `sql::CLAIM_MAX_BYTES`) keeps that size; a short claim (the end of the queue) or a failed batch falls
//! back to BATCH_SIZE. Once a claim's row data is known, no claim asks for more than about as many readings
//! of that size as fit the byte bound: a claim reads every row it asks for, so asking for 5,000 where 2,200
//! fit reads 2,800 rows only to drop them. With several batches in flight they share the bound. Each batch is still one exactly-once unit, whatever its size.
//! With BATCH_SIZE_MAX = BATCH_SIZE (the default) every claim asks for BATCH_SIZE, or fewer only where the
//! byte bound cut the claim before. Does not own: the claim itself and its byte bound (sql.rs), when claims
//! happen (drain.rs).

use super::sql::CLAIM_MAX_BYTES;

/// The limit of the next claim of one drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizer {
    base: u32,
    max: u32,
    /// The size growth has reached (BATCH_SIZE up to BATCH_SIZE_MAX).
    next: u32,
    /// About how many readings fit the byte bound, from the last claim's row data; None before any is known.
    fit: Option<u32>,
}

impl Sizer {
    /// BATCH_SIZE and BATCH_SIZE_MAX (a maximum below the base counts as the base).
    pub fn new(base: u32, max: u32) -> Sizer {
        let base = base.max(1);
        Sizer {
            base,
            max: max.max(base),
            next: base,
            fit: None,
        }
    }

    /// How many readings the next claim asks for when `sharing` batches (those in flight:
    /// UPLOAD_BATCHES_IN_FLIGHT, as the drain's width now is) share the byte bound: each about its share of
    /// what fits, so that N batches in flight hold about as much row data as one (the daemon's memory).
    pub fn limit(&self, sharing: usize) -> u32 {
        let sharing = u32::try_from(sharing.max(1)).unwrap_or(u32::MAX);
        self.fit.map_or(self.next, |fit| self.next.min((fit / sharing).max(1)))
    }

    /// A claim that asked for `asked` readings came back with `claimed`, whose row data (as the byte bound
    /// counts it; 0 when not known) is `row_bytes`. Full: the backlog remains and the next one doubles (up to
    /// the maximum). Cut by the byte bound: the backlog remains, the size stays. Otherwise short: the queue is
    /// nearly drained and the next one asks for the base again.
    pub fn claimed(&mut self, asked: u32, claimed: usize, row_bytes: u64) {
        let n = claimed as u64;
        let bound = CLAIM_MAX_BYTES as u64;
        // Readings of this batch's average size that fit, and a sixteenth more (sizes vary; at least one).
        let fit = (n > 0 && row_bytes > 0).then(|| {
            let f = n.saturating_mul(bound) / row_bytes;
            u32::try_from(f + f / 16 + 1).unwrap_or(u32::MAX)
        });
        let cut_by_bytes = n > 0 && row_bytes.saturating_add(row_bytes / n) > bound;
        if claimed >= asked as usize {
            self.next = self.next.saturating_mul(2).min(self.max);
            self.fit = fit;
        } else if cut_by_bytes {
            self.fit = fit;
        } else {
            self.next = self.base;
            self.fit = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

    const BOUND: u64 = CLAIM_MAX_BYTES as u64;

    #[test]
    fn equal_sizes_never_grow() {
        let mut s = Sizer::new(100, 100);
        for _ in 0..5 {
            assert_eq!(s.limit(1), 100);
            s.claimed(100, 100, 100 * 500);
        }
        assert_eq!(s.limit(1), 100);
    }

    #[test]
    fn full_batches_double_up_to_the_maximum_and_short_ones_fall_back() {
        let mut s = Sizer::new(100, 5000);
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(s.limit(1));
            s.claimed(s.limit(1), s.limit(1) as usize, u64::from(s.limit(1)) * 100);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        s.claimed(5000, 4999, 4999 * 100);
        assert_eq!(s.limit(1), 100);
        s.claimed(100, 100, 0);
        assert_eq!(s.limit(1), 200);
    }

    #[test]
    fn a_maximum_below_the_base_is_the_base() {
        let mut s = Sizer::new(100, 10);
        s.claimed(100, 100, 0);
        assert_eq!(s.limit(1), 100);
    }

    /// Fleet-shaped rows of ~480 bytes: 5,000 asked, the byte bound takes 2,184. The growth stays (it was not
    /// the end of the queue) and the next claims ask for about what fits, not 5,000 again.
    #[test]
    fn a_claim_cut_by_the_byte_bound_keeps_the_size_and_asks_for_about_what_fits() {
        let per = 480u64;
        let fits = (BOUND / per) as usize;
        for (base, max) in [(5000, 5000), (100, 5000)] {
            let mut s = Sizer::new(base, max);
            for _ in 0..12 {
                let asked = s.limit(1);
                let n = fits.min(asked as usize);
                s.claimed(asked, n, n as u64 * per);
            }
            let asked = s.limit(1) as usize;
            assert!(
                (fits..=fits + fits / 8).contains(&asked),
                "{base}/{max}: asks {asked}, {fits} fit"
            );
        }
        // A reading larger than the bound alone: the claim takes it, the next asks for one again.
        let mut s = Sizer::new(100, 100);
        s.claimed(100, 1, 5 * BOUND);
        assert_eq!(s.limit(1), 1);
        s.claimed(1, 1, 200);
        assert_eq!(s.limit(1), 100);
    }

    #[test]
    fn batches_in_flight_share_the_byte_bound() {
        let mut s = Sizer::new(100, 5000);
        assert_eq!(s.limit(4), 100, "nothing known yet: the growth alone");
        s.claimed(100, 100, 100 * 480);
        let one = s.limit(1);
        assert_eq!(one, 200);
        s.claimed(one, one as usize, u64::from(one) * 480);
        for _ in 0..6 {
            let n = s.limit(1) as usize;
            s.claimed(
                s.limit(1),
                n.min((BOUND / 480) as usize),
                n.min((BOUND / 480) as usize) as u64 * 480,
            );
        }
        let fits = BOUND / 480;
        assert!(
            u64::from(s.limit(4)) * 4 <= fits + fits / 8 + 4,
            "{} each for 4",
            s.limit(4)
        );
        assert!(s.limit(4) > 0 && s.limit(8) > 0);
    }

    /// What happened to one claim of a drain.
    #[derive(Clone, Debug)]
    enum Event {
        /// The queue held this share (in 1/255ths, 255 = all) of what the claim asked for, readings of about
        /// this many bytes each (the byte bound cuts the claim where they pass it).
        Claimed {
            share: u8,
            bytes: u32,
        },
        Failed,
    }

    impl Arbitrary for Event {
        fn arbitrary(g: &mut Gen) -> Event {
            let bytes = match u8::arbitrary(g) % 4 {
                0 => 1 + u32::arbitrary(g) % 100,
                1 => 100 + u32::arbitrary(g) % 2000,
                2 => 1 + u32::arbitrary(g) % (4 * CLAIM_MAX_BYTES as u32),
                _ => 0, // not known (a claim that did not report its row data)
            };
            match u8::arbitrary(g) % 8 {
                0 => Event::Failed,
                1 | 2 => Event::Claimed {
                    share: u8::arbitrary(g),
                    bytes,
                },
                _ => Event::Claimed { share: 255, bytes },
            }
        }
    }

    // **Feature: database-sync-process, Property 1: Batch size limit enforcement**
    // With growing batches the bound is BATCH_SIZE_MAX: every claim asks for at most BATCH_SIZE_MAX readings
    // and for at least BATCH_SIZE, or fewer only where the claim before it was cut by the byte bound (and then
    // never fewer than that claim took); after the end of the queue or a failure exactly BATCH_SIZE; once
    // the row data is known, never more than an eighth above what fits the byte bound; with BATCH_SIZE_MAX =
    // BATCH_SIZE never more than BATCH_SIZE.
    fn prop_claims_stay_within_the_bounds(base: u16, extra: u16, events: Vec<Event>) -> TestResult {
        let base = u32::from(base % 5000) + 1;
        let max = base + u32::from(extra % 3) * u32::from(extra);
        let mut s = Sizer::new(base, max);
        if s.limit(1) != base {
            return TestResult::error("the first claim must ask for BATCH_SIZE");
        }
        // What the claim before the next one did: (readings taken, their bytes) when it was full or cut by the
        // byte bound; None after the end of the queue, a failure, or at the start.
        let mut before: Option<(u64, u64)> = None;
        for e in events {
            let asked = s.limit(1);
            let floor = before.map_or(base, |(n, _)| base.min(n as u32));
            if asked < floor.max(1) || asked > max {
                return TestResult::error(format!("asked {asked} outside {floor}..={max} after {before:?}"));
            }
            if before.is_none() && asked != base {
                return TestResult::error(format!("asked {asked}, not BATCH_SIZE {base}, after {before:?}"));
            }
            if let Some((n, bytes)) = before.filter(|(_, b)| *b > 0) {
                let fits = n * BOUND / bytes;
                if u64::from(asked) > fits + fits / 8 + 1 {
                    return TestResult::error(format!("asked {asked} where {fits} fit ({n} readings, {bytes} B)"));
                }
                // Batches in flight share what fits.
                for sharing in 2..=8u64 {
                    let each = u64::from(s.limit(sharing as usize));
                    if each == 0 || each > u64::from(asked) || each > (fits + fits / 8 + 1) / sharing + 1 {
                        return TestResult::error(format!("{each} each for {sharing} in flight where {fits} fit"));
                    }
                }
            }
            before = match e {
                Event::Failed => {
                    // What the drain does after an error (drain.rs: a fresh pipe).
                    s = Sizer::new(base, max);
                    None
                }
                Event::Claimed { share, bytes } => {
                    let available = if share == 255 {
                        u64::MAX
                    } else {
                        u64::from(asked) * u64::from(share) / 255
                    };
                    let by_bytes = if bytes == 0 {
                        u64::MAX
                    } else {
                        (BOUND / u64::from(bytes)).max(1)
                    };
                    let n = u64::from(asked).min(available).min(by_bytes);
                    let total = n * u64::from(bytes);
                    s.claimed(asked, n as usize, total);
                    let cut = n > 0 && total + total / n > BOUND;
                    (n >= u64::from(asked) || cut).then_some((n, total))
                }
            };
        }
        TestResult::passed()
    }

    #[test]
    fn prop_1_growing_batches_stay_within_the_bounds() {
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop_claims_stay_within_the_bounds as fn(u16, u16, Vec<Event>) -> TestResult);
    }
}
