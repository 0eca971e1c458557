//! systemd integration: readiness and watchdog notifications, and handing freed memory back.
//!
//! Owns: [`sd_notify`] / [`notify_to`] (one datagram to NOTIFY_SOCKET, path or abstract, never waiting for
//! the reader; no libsystemd),
//! [`systemd_status`] (the `STATUS=` line `systemctl status` shows after a cycle), [`watchdog_period`] (half
//! of WATCHDOG_USEC when the watchdog is meant for this process) and [`release_free_memory`] (glibc's
//! `malloc_trim(0)`; the crate's other FFI call is gethostname(2) in config/read.rs). Does not own: when they
//! are called (scheduler.rs: READY=1 when the loop starts, WATCHDOG=1 from the loop, STOPPING=1 when it ends;
//! memory release after a cycle that leaves no backlog), the unit file (packaging/).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use crate::report::{part_summaries, SyncCycleResult};

/// The `STATUS=` line systemd shows in `systemctl status` after a cycle: when, and what went wrong if anything.
pub fn systemd_status(cycle: u64, r: &SyncCycleResult) -> String {
    let failed: Vec<&str> = part_summaries(r)
        .iter()
        .filter(|p| !p.success)
        .map(|p| p.sync_type)
        .collect();
    let outcome = if r.success && failed.is_empty() {
        "ok".to_string()
    } else if failed.is_empty() {
        "failed".to_string()
    } else {
        format!("failed: {}", failed.join(", "))
    };
    format!(
        "STATUS=cycle {cycle} at {}: {outcome}; {} readings uploaded",
        r.timestamp, r.upload_result.records_uploaded
    )
}

/// Sends `state` (e.g. `READY=1`) to systemd when NOTIFY_SOCKET is set; failures are only debug lines.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path, state) {
        log::debug!("sd_notify {state}: {e}");
    }
}

/// One datagram to the notify socket; a leading '@' names an abstract socket.
pub fn notify_to(path: &OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    // Never wait for the reader: a full queue (10 datagrams by default) would stop the sync loop.
    sock.set_nonblocking(true)?;
    match path.as_bytes().strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract sockets need Linux",
            ))
        }
        None => {
            sock.send_to(state.as_bytes(), Path::new(path))?;
        }
    }
    Ok(())
}

/// Half of WATCHDOG_USEC when systemd asks this process for watchdog pings.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Gives the memory freed by a cycle back to the system before the daemon sleeps: glibc keeps freed pages in
/// its arenas, and a daemon that cycles for years would otherwise hold its high-water mark of fragments.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim takes no pointer and only walks glibc's own arenas under their locks; it is safe
        // to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::{MeterSyncResult, TenantSyncResult};
    use crate::report::not_run;
    use crate::upload::UploadSyncResult;

    #[test]
    fn systemd_status_names_the_cycle_and_the_failed_parts() {
        let ok = SyncCycleResult {
            success: true,
            upload_result: UploadSyncResult {
                success: true,
                records_uploaded: 540,
                ..Default::default()
            },
            meter_download_result: MeterSyncResult {
                success: true,
                ..Default::default()
            },
            tenant_download_result: TenantSyncResult {
                success: true,
                ..Default::default()
            },
            total_duration: 39,
            timestamp: "2026-12-01T22:01:53.467Z".into(),
        };
        assert_eq!(
            systemd_status(7, &ok),
            "STATUS=cycle 7 at 2026-12-01T22:01:53.467Z: ok; 540 readings uploaded"
        );
        let down = not_run("remote down", "2026-12-01T22:02:00.000Z".into(), Duration::ZERO);
        let line = systemd_status(8, &down);
        assert!(
            line.starts_with("STATUS=cycle 8 at 2026-12-01T22:02:00.000Z: failed: "),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[test]
    fn abstract_and_path_notify_sockets() {
        let dir = std::env::temp_dir().join(format!("sp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        notify_to(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let name = format!("sp-notify-test-{}", std::process::id());
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
            let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
            notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send abstract");
            let n = rx.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], b"STOPPING=1");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
