//! The recent cycles behind GET /history and the dashboard's charts: a bounded in-memory ring.
//!
//! Owns: [`History`] (at most [`HISTORY_LEN`] fixed-size [`CycleEntry`]s: no heap per entry, so its memory is
//! `HISTORY_LEN * size_of::<CycleEntry>()` = 720 * 40 B = 28.8 KB, allocated once), [`SharedHistory`] and the
//! JSON of GET /history (`HistoryItem`: {timestamp, success, recordsUploaded, queueSize, durationMs}, newest
//! last). Does not own: what a cycle measured (the scheduler pushes an entry after each cycle).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Cycles kept: 12 hours at the default interval of 60 s.
pub const HISTORY_LEN: usize = 720;

/// One cycle, as the charts need it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CycleEntry {
    /// When the cycle started, Unix milliseconds.
    pub started_unix_ms: u64,
    pub records_uploaded: u64,
    /// The local queue after the cycle.
    pub queue_size: u64,
    pub duration_ms: u64,
    pub success: bool,
}

/// The JSON of one entry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryItem {
    timestamp: String,
    success: bool,
    records_uploaded: u64,
    queue_size: u64,
    duration_ms: u64,
}

/// The ring: pushing beyond the capacity drops the oldest entry.
#[derive(Clone, Debug)]
pub struct History {
    ring: VecDeque<CycleEntry>,
    cap: usize,
}

/// The history shared by the scheduler (writer) and the status server (reader).
pub type SharedHistory = Arc<Mutex<History>>;

impl Default for History {
    fn default() -> History {
        History::new(HISTORY_LEN)
    }
}

impl History {
    pub fn new(cap: usize) -> History {
        let cap = cap.max(1);
        History {
            ring: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn shared() -> SharedHistory {
        Arc::new(Mutex::new(History::default()))
    }

    pub fn push(&mut self, e: CycleEntry) {
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &CycleEntry> {
        self.ring.iter()
    }

    /// GET /history: a JSON array, oldest first (newest last), timestamps RFC 3339 UTC with milliseconds.
    pub fn to_json(&self) -> String {
        let items: Vec<HistoryItem> = self
            .ring
            .iter()
            .map(|e| HistoryItem {
                timestamp: humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.started_unix_ms))
                    .to_string(),
                success: e.success,
                records_uploaded: e.records_uploaded,
                queue_size: e.queue_size,
                duration_ms: e.duration_ms,
            })
            .collect();
        serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
    }
}

/// Locks the history, ignoring poisoning.
pub fn lock_history(h: &SharedHistory) -> MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unix milliseconds of an RFC 3339 time (a cycle's `timestamp`), or of now when it does not parse.
pub fn unix_ms_of(rfc3339: &str) -> u64 {
    let t = humantime::parse_rfc3339_weak(rfc3339).unwrap_or_else(|_| SystemTime::now());
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::QuickCheck;

    fn entry(i: u64) -> CycleEntry {
        CycleEntry {
            started_unix_ms: 1_700_000_000_000 + i * 60_000,
            records_uploaded: i,
            queue_size: i * 3,
            duration_ms: i % 1000,
            success: i % 5 != 0,
        }
    }

    #[test]
    fn entry_size_is_what_the_docs_say() {
        assert_eq!(std::mem::size_of::<CycleEntry>(), 40);
    }

    // For any number of pushes and any capacity: the ring holds min(pushes, cap) entries, exactly the last ones,
    // oldest first; its JSON has as many items, newest last, with the documented field names only.
    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        fn prop(pushes: u16, cap: u8) -> bool {
            let (pushes, cap) = (u64::from(pushes % 2000), usize::from(cap % 50) + 1);
            let mut h = History::new(cap);
            (0..pushes).for_each(|i| h.push(entry(i)));
            let kept = usize::try_from(pushes).unwrap_or(0).min(cap);
            let first = pushes - kept as u64;
            let expected: Vec<CycleEntry> = (first..pushes).map(entry).collect();
            let json: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap_or_default();
            let items = json.as_array().cloned().unwrap_or_default();
            h.len() == kept
                && h.entries().copied().collect::<Vec<_>>() == expected
                && items.len() == kept
                && items.last().map_or(kept == 0, |last| {
                    last["recordsUploaded"] == pushes - 1
                        && last.as_object().map(|o| o.len()) == Some(5)
                        && ["timestamp", "success", "recordsUploaded", "queueSize", "durationMs"]
                            .iter()
                            .all(|k| last.get(*k).is_some())
                })
        }
        QuickCheck::new().tests(200).quickcheck(prop as fn(u16, u8) -> bool);
    }

    #[test]
    fn the_default_ring_stops_at_720() {
        let mut h = History::default();
        (0..2000).for_each(|i| h.push(entry(i)));
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.entries().next().map(|e| e.records_uploaded), Some(2000 - 720));
        let json: serde_json::Value = serde_json::from_str(&h.to_json()).expect("json");
        assert_eq!(json[0]["timestamp"], "2023-11-15T19:33:20.000Z");
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(unix_ms_of("2023-11-14T22:13:20.123Z"), 1_700_000_000_123);
    }
}
