//! Signals: the thread that turns SIGTERM/SIGINT into a shutdown, and SIGHUP into a reload.
//!
//! Owns: [`SignalThread`] (the thread `signals`; `run_daemon` starts it before any other thread: pools, status
//! server, webhook). The first SIGTERM/SIGINT requests shutdown (ending backoff waits and the drain after the
//! batch in flight) and calls the caller's `wake`; a second one exits at once with 128 + signal, which is safe
//! because uploads are exactly-once (the next start recovers a claimed batch). SIGHUP (`systemctl reload`)
//! calls the caller's `reload` (the loop then closes its idle connections, so the next ones read the
//! password and certificate files anew). Does not own: what shutdown and reload mean to the loop
//! (scheduler.rs), the flag itself (shutdown.rs).

use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// The running signal thread; closing it (on drop) unregisters the handlers' iterator.
pub struct SignalThread {
    handle: signal_hook::iterator::Handle,
}

impl SignalThread {
    /// Registers SIGTERM/SIGINT/SIGHUP and starts the thread. `wake` is called once, after the first
    /// SIGTERM/SIGINT has requested shutdown (the loop uses it to leave its wait at once); `reload` at every
    /// SIGHUP.
    pub fn start(
        shutdown: Shutdown,
        wake: impl Fn() + Send + 'static,
        reload: impl Fn() + Send + 'static,
    ) -> Result<SignalThread> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| Error::io("registering the SIGTERM/SIGINT/SIGHUP handlers", e))?;
        let handle = signals.handle();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut seen = 0u32;
                for sig in signals.forever() {
                    if sig == SIGHUP {
                        log::info!(
                            "SIGHUP received: idle connections close; new ones read the password and certificate \
                             files again"
                        );
                        reload();
                        continue;
                    }
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
