//! Retry with exponential backoff: the schedule and the loop.
//!
//! Owns: [`RetryPolicy`] (base delay and retry count, from RETRY_BASE_DELAY_MS and MAX_CONNECTION_RETRIES /
//! MAX_QUERY_RETRIES) and [`retry`], which runs an operation, and after each transient failure logs it,
//! waits base·2^(n-1) — ending early on shutdown — and tries again. Errors that are not transient are
//! returned at once. Does not own: what counts as transient (error.rs).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    /// Retries after the first attempt (0: one attempt only).
    pub max_retries: u32,
    /// SYNC_JITTER_PERCENT: each wait is shortened by a random share of up to this (jitter.rs).
    pub jitter_percent: u8,
}

impl RetryPolicy {
    /// The wait before retry `n` (1-based): base·2^(n-1), saturating.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor)
    }

    /// The whole schedule: the waits before retry 1, 2, ... max_retries.
    pub fn delays(&self) -> Vec<Duration> {
        (1..=self.max_retries).map(|n| self.delay(n)).collect()
    }
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or has failed `1 + max_retries`
/// times. `what` names the operation in the log lines (never with a password: callers pass host:port).
/// Returns `Error::Shutdown` when shutdown is requested during a wait.
pub fn retry<T>(what: &str, policy: RetryPolicy, shutdown: &Shutdown, op: impl FnMut() -> Result<T>) -> Result<T> {
    retry_if(what, policy, shutdown, Error::is_transient, op)
}

/// [`retry`], with the caller deciding which errors are worth another attempt.
pub fn retry_if<T>(
    what: &str,
    policy: RetryPolicy,
    shutdown: &Shutdown,
    should_retry: impl Fn(&Error) -> bool,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0u32;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if should_retry(&e) && attempt < policy.max_retries => {
                attempt += 1;
                let wait = crate::jitter::spread(policy.delay(attempt), policy.jitter_percent);
                log::warn!(
                    "{what} failed ({kind} error, attempt {attempt} of {total}): {e}; retrying in {wait:?}",
                    kind = e.kind(),
                    total = policy.max_retries + 1
                );
                if shutdown.sleep(wait) {
                    return Err(Error::Shutdown);
                }
            }
            Err(e) => {
                if attempt > 0 {
                    log::error!("{what} failed after {} attempts ({} error): {e}", attempt + 1, e.kind());
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};
    use std::cell::Cell;

    #[test]
    fn default_schedule_is_2_4_8_16_32() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            max_retries: 5,
            jitter_percent: 0,
        };
        let secs: Vec<u64> = p.delays().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32]);
        let q = RetryPolicy {
            base: Duration::from_secs(2),
            max_retries: 3,
            jitter_percent: 0,
        };
        assert_eq!(
            q.delays().iter().map(Duration::as_secs).collect::<Vec<_>>(),
            vec![2, 4, 8]
        );
    }

    // **Feature: database-sync-process, Property 5: Retry with exponential backoff**
    // For any base and retry count, each delay is base * 2^(n-1): the first is the base, each is double the
    // one before, and there are exactly max_retries of them.
    fn prop_backoff_doubles(base_ms: u16, retries: u8) -> TestResult {
        let retries = u32::from(retries % 21);
        let base = Duration::from_millis(u64::from(base_ms) + 1);
        let d = RetryPolicy {
            base,
            max_retries: retries,
            jitter_percent: 0,
        }
        .delays();
        let doubles = d.windows(2).all(|w| w[1] == w[0] * 2);
        TestResult::from_bool(d.len() == retries as usize && d.first().is_none_or(|f| *f == base) && doubles)
    }

    #[test]
    fn property_5_backoff_schedule() {
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop_backoff_doubles as fn(u16, u8) -> TestResult);
    }

    fn transient() -> Error {
        Error::io(
            "test",
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        )
    }

    // **Feature: database-sync-process, Property 5: Retry with exponential backoff**
    // For any number of transient failures before success and any retry limit, the operation is attempted
    // min(failures, limit) + 1 times and succeeds exactly when failures <= limit.
    fn prop_retry_attempts(failures: u8, limit: u8) -> bool {
        let (failures, limit) = (u32::from(failures % 8), u32::from(limit % 8));
        let calls = Cell::new(0u32);
        let policy = RetryPolicy {
            base: Duration::from_micros(1),
            max_retries: limit,
            jitter_percent: ((limit * 37) % 101) as u8,
        };
        let r = retry("test op", policy, &Shutdown::new(), || {
            calls.set(calls.get() + 1);
            if calls.get() <= failures {
                Err(transient())
            } else {
                Ok(())
            }
        });
        calls.get() == failures.min(limit) + 1 && r.is_ok() == (failures <= limit)
    }

    #[test]
    fn property_5_retry_attempts() {
        QuickCheck::new()
            .tests(100)
            .quickcheck(prop_retry_attempts as fn(u8, u8) -> bool);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let policy = RetryPolicy {
            base: Duration::from_micros(1),
            max_retries: 5,
            jitter_percent: 0,
        };
        let r: Result<()> = retry("op", policy, &Shutdown::new(), || {
            calls.set(calls.get() + 1);
            Err(Error::Other("bad".into()))
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn shutdown_ends_the_backoff_wait() {
        let s = Shutdown::new();
        s.request();
        let policy = RetryPolicy {
            base: Duration::from_secs(3600),
            max_retries: 5,
            jitter_percent: 0,
        };
        let started = std::time::Instant::now();
        let r: Result<()> = retry("op", policy, &s, || Err(transient()));
        assert!(matches!(r, Err(Error::Shutdown)));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
