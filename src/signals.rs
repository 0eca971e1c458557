//! Signals: the thread that turns SIGTERM/SIGINT into a shutdown.
//!
//! Owns: [`SignalThread`] (the thread `signals`; `run_daemon` starts it before any other thread: pools, status
//! server, webhook). The first SIGTERM/SIGINT requests shutdown (ending backoff waits and the drain after the
//! batch in flight) and calls the caller's `wake`; a second one exits at once with 128 + signal, which is safe
//! because uploads are exactly-once (the next start recovers a claimed batch). Does not own: what shutdown
//! means to the loop (scheduler.rs), the flag itself (shutdown.rs).

use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// The running signal thread; closing it (on drop) unregisters the handlers' iterator.
pub struct SignalThread {
    handle: signal_hook::iterator::Handle,
}

impl SignalThread {
    /// Registers SIGTERM/SIGINT and starts the thread. `wake` is called once, after the first signal has
    /// requested shutdown (the loop uses it to leave its wait at once).
    pub fn start(shutdown: Shutdown, wake: impl Fn() + Send + 'static) -> Result<SignalThread> {
        let mut signals =
            Signals::new([SIGTERM, SIGINT]).map_err(|e| Error::io("registering the SIGTERM/SIGINT handlers", e))?;
        let handle = signals.handle();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0u32;
                for sig in signals.forever() {
                    seen += 1;
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    if seen == 1 {
                        log::info!(
                            "{name} received: shutting down after the batch in flight (send it again to exit at once)"
                        );
                        shutdown.request();
                        wake();
                    } else {
                        log::warn!(
                            "second {name} received: exiting now; an upload in flight is recovered at the next start"
                        );
                        std::process::exit(128 + sig);
                    }
                }
            })
            .map_err(|e| Error::io("starting the signal thread", e))?;
        Ok(SignalThread { handle })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
    }
}
