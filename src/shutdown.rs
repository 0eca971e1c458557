//! The shutdown request: an atomic flag that every long wait checks.
//!
//! Owns: [`Shutdown`], shared by the signal thread (which requests it), the main loop, the upload drain
//! (checked between batches) and the retry backoff (its waits end early). A flag alone cannot wake a blocked
//! wait, so sleeping goes through a condition variable that `request` notifies. Does not own: signal
//! registration (scheduler.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks everything to stop at the next safe point; wakes every [`Shutdown::sleep`].
    pub fn request(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        let _guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.wake.notify_all();
    }

    pub fn is_requested(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Sleeps for `dur` unless shutdown is requested first. Returns true when woken by the request.
    pub fn sleep(&self, dur: Duration) -> bool {
        let deadline = Instant::now() + dur;
        let mut guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.is_requested() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = match self.inner.wake.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_early_on_request() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        s.request();
        assert!(t.join().expect("sleeper thread"));
        assert!(
            s.sleep(Duration::from_secs(30)),
            "a requested shutdown makes every later sleep return at once"
        );
    }

    #[test]
    fn sleep_runs_full_without_request() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(5)));
    }
}
