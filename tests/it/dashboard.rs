//! Integration tests: the dashboard (GET /) in a real browser — headless Chromium (Debian's `chromium`) loads
//! the page from a running daemon, the test reads the DOM after the page's script ran, and a screenshot is
//! kept under target/ (target/dashboard.png, target/dashboard-phone.png).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::status::{daemon_env, get, insert_readings, wait_for_first_cycle};
use crate::support::daemon::Daemon;
use crate::support::env::Env;
use crate::support::{unique_temp_dir, wait_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_PATIENCE: Duration = Duration::from_secs(120);

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium"
    );
    CHROMIUM
}

/// Runs headless Chromium on `url` with `extra` arguments (a fresh profile, nothing from the network but
/// the page) and returns its stdout.
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = unique_temp_dir("sync-process-chromium");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < BROWSER_PATIENCE => thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within {BROWSER_PATIENCE:?} on {url}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap_or_default()
}

/// The DOM after the page's script ran (virtual time lets its timers and fetches run).
fn dom(url: &str) -> String {
    run_chromium(url, &["--virtual-time-budget=6000".into(), "--dump-dom".into()])
}

/// Text of the first element carrying `data-field="<name>"`.
fn field<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-field=\"{name}\""))?;
    let rest = &dom[at..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')?;
    Some(rest[open..open + close].trim())
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

// The page against a live daemon idle between cycles: the queue size in `data-field="queueSize"` is the live
// one after the script ran (the script marks <body data-refreshed> when it applied /status and /history), and it
// changes after readings are inserted. Then screenshots of a daemon with a recent history (uploads, a remote
// outage marking failed cycles), desktop and phone width.
#[test]
fn the_dashboard_shows_the_live_queue_in_a_real_browser() {
    chromium();
    let mut env = Env::builder()
        .remote_via_proxy()
        .vars(&[("BATCH_SIZE", "50"), ("UPLOAD_CONFIRM_SECONDS", "3600")])
        .build();
    let (mut map, addr) = daemon_env(&env);
    let url = format!("http://{addr}/");
    {
        // Seven readings go up in the first cycle and wait there for their confirmation (an hour).
        insert_readings(&mut env.local, 7, false);
        let _d = Daemon::spawn(&["run"], &map);
        wait_for_first_cycle(addr);
        insert_readings(&mut env.local, 42, false);
        let page = dom(&url);
        assert!(
            page.contains("data-refreshed="),
            "the script ran and refreshed the page:\n{page}"
        );
        assert_eq!(field(&page, "queueSize"), Some("42"), "{page}");
        assert_eq!(field(&page, "stale"), Some("no"));
        assert_eq!(field(&page, "localDbConnected"), Some("yes"));
        assert_eq!(field(&page, "awaitingConfirmation"), Some("7"), "{page}");
        let age = field(&page, "oldestAwaitingConfirmationAge").and_then(|a| a.parse::<u64>().ok());
        assert!(
            age.is_some_and(|a| a < 3600),
            "the age of the oldest acknowledgement, in seconds: {page}"
        );
        assert!(page.contains("<polyline"), "the queue chart is drawn from /history");
        assert!(page.contains("1 cycles from "), "{page}");
        insert_readings(&mut env.local, 8, false);
        let page = dom(&url);
        assert_eq!(field(&page, "queueSize"), Some("50"), "{page}");
        // Without the script (a terminal browser), the values are in the served HTML.
        let served = get(addr, "/").expect("GET /");
        assert_eq!(field(&served.body, "queueSize"), Some("50"));
    }

    // A recent history worth a picture: a cycle a second, readings arriving, the remote refused for a while.
    map.insert("SYNC_INTERVAL_SECONDS".into(), "1".into());
    map.insert("DB_CONNECTION_TIMEOUT_MS".into(), "300".into());
    map.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    map.insert("MAX_QUERY_RETRIES".into(), "0".into());
    let _d = Daemon::spawn(&["run"], &map);
    for round in 0..16 {
        insert_readings(&mut env.local, 40 + (round * 37) % 120, false);
        if round == 5 {
            env.proxy().set_refuse(true);
            env.proxy().cut_all();
        }
        if round == 11 {
            env.proxy().set_refuse(false);
        }
        thread::sleep(Duration::from_millis(800));
    }
    let ok = wait_until(Duration::from_secs(30), || {
        get(addr, "/history").is_some_and(|a| a.json().as_array().is_some_and(|c| c.len() >= 12))
    });
    assert!(ok, "a dozen cycles in /history");
    let dir = target_dir();
    std::fs::create_dir_all(&dir).expect("target/ exists");
    for (name, size) in [("dashboard.png", "1100,1250"), ("dashboard-phone.png", "400,2000")] {
        let shot = dir.join(name);
        let _ = std::fs::remove_file(&shot);
        run_chromium(
            &url,
            &[
                "--virtual-time-budget=3000".into(),
                format!("--window-size={size}"),
                format!("--screenshot={}", shot.display()),
            ],
        );
        let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} was written ({len} bytes)", shot.display());
    }
}
