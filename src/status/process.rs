//! The daemon process as Prometheus's standard `process_*` metrics see it, read from /proc at scrape time.
//!
//! Owns: [`ProcessStats`] (resident memory, CPU seconds, start time) and its parsers of `/proc/self/stat`,
//! `/proc/self/status` and `/proc/stat`. Does not own: rendering (metrics.rs). Off Linux, or when /proc cannot
//! be read, a value is None and its metric is left out of the scrape (never a made-up number).

use std::fs;

/// The standard process metrics, each None when it could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// `process_resident_memory_bytes`: VmRSS.
    pub resident_memory_bytes: Option<u64>,
    /// `process_cpu_seconds_total`: user + system time, in clock ticks turned into seconds.
    pub cpu_seconds: Option<f64>,
    /// `process_start_time_seconds`: Unix time the process started (boot time + start ticks).
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures from /proc.
    pub fn read() -> ProcessStats {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        let status = fs::read_to_string("/proc/self/status").ok();
        let boot = fs::read_to_string("/proc/stat").ok();
        let ticks = clock_ticks_per_second();
        let times = stat.as_deref().and_then(parse_stat);
        ProcessStats {
            resident_memory_bytes: status.as_deref().and_then(parse_vm_rss),
            cpu_seconds: times.map(|t| (t.utime + t.stime) as f64 / ticks),
            start_time_seconds: times
                .zip(boot.as_deref().and_then(parse_btime))
                .map(|(t, btime)| btime as f64 + t.starttime as f64 / ticks),
        }
    }
}

/// The fields of /proc/[pid]/stat that the metrics need, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatTimes {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// `pid (comm) state ...`: comm may hold spaces and parentheses, so the fields are counted after the last
/// `)`; there field 3 (state) has index 0, utime (14) 11, stime (15) 12, starttime (22) 19.
fn parse_stat(text: &str) -> Option<StatTimes> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(StatTimes {
        utime: field(11)?,
        stime: field(12)?,
        starttime: field(19)?,
    })
}

/// `VmRSS:     2228 kB` of /proc/[pid]/status, in bytes.
fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n = words.next()?.parse::<u64>().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// `btime <unix seconds>` of /proc/stat: when the system booted.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// USER_HZ, the unit of the times in /proc/[pid]/stat: sysconf(_SC_CLK_TCK) (100 on every architecture Debian
/// ships; 100 when sysconf has no answer).
fn clock_ticks_per_second() -> f64 {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
        }
        /// _SC_CLK_TCK in glibc's and musl's <unistd.h> on Linux.
        const SC_CLK_TCK: std::os::raw::c_int = 2;
        // SAFETY: sysconf takes an integer, touches no memory of ours and is thread-safe.
        let n = unsafe { sysconf(SC_CLK_TCK) };
        if n > 0 {
            return n as f64;
        }
    }
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "2688 (we (ir) d) R 2686 2686 20672 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 267328 3133440 394 \
                    18446744073709551615 94670187495424";
        assert_eq!(
            parse_stat(line),
            Some(StatTimes {
                utime: 7,
                stime: 3,
                starttime: 267328
            })
        );
        assert_eq!(parse_stat("12 (x) R 1 2"), None, "too short");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn rss_and_boot_time() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t    2228 kB\nVmSwap: 0 kB\n"),
            Some(2228 * 1024)
        );
        assert_eq!(parse_vm_rss("VmRSS: 12 MB\n"), None, "an unknown unit is not guessed");
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1796161611\nprocesses 9\n"),
            Some(1_796_161_611)
        );
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let p = ProcessStats::read();
        assert!(p.resident_memory_bytes.is_some_and(|b| b > 100 * 1024), "{p:?}");
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
        let now = crate::status::unix_now() as f64;
        assert!(
            p.start_time_seconds
                .is_some_and(|t| t > 1_500_000_000.0 && t <= now + 1.0),
            "{p:?}"
        );
    }
}
