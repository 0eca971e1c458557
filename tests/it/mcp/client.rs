//! [`Mcp`]: `sync-process mcp` as a child process that the tests talk to in raw JSON-RPC lines, as an MCP
//! client would (stdin and stdout piped, stderr to a file; killed and reaped on drop).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use super::{PATIENCE, SECRET_LOCAL, SECRET_REMOTE};
use crate::support::daemon::BIN;
use crate::support::unique_temp_dir;

/// `sync-process mcp` as a child with piped stdin/stdout; stderr goes to a file.
pub struct Mcp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Everything written on stdout so far.
    stdout: Arc<Mutex<String>>,
    dir: PathBuf,
    next_id: i64,
}

impl Mcp {
    pub fn start(args: &[&str], env: &BTreeMap<String, String>) -> Mcp {
        let dir = unique_temp_dir("sync-process-mcp");
        let stderr = File::create(dir.join("stderr")).expect("creating the stderr file");
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        let mut child = cmd
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        let all = Arc::new(Mutex::new(String::new()));
        let all2 = Arc::clone(&all);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                all2.lock().expect("stdout lock").push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Mcp {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: all,
            dir,
            next_id: 1,
        }
    }

    pub fn send(&mut self, raw: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(raw.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to the server's stdin");
    }

    /// The next message on stdout, parsed; each is one line of JSON.
    pub fn recv(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no message from the server; stderr:\n{}", self.stderr()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carries a line that is not JSON ({e}): {line}"))
    }

    /// Sends a request and returns the whole response (which must carry its id).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&format!(
            "{}\n",
            json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
        ));
        let v = self.recv();
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        v
    }

    pub fn initialize(&mut self, version: &str) -> Value {
        let v = self.request(
            "initialize",
            json!({ "protocolVersion": version, "capabilities": {}, "clientInfo": { "name": "it", "version": "1" } }),
        );
        self.send("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
        v["result"].clone()
    }

    /// The result of a tools/call.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let v = self.request("tools/call", json!({ "name": tool, "arguments": args }));
        let r = v["result"].clone();
        assert!(r["content"][0]["type"] == "text", "{tool}: {v}");
        r
    }

    /// The structured content of a call that must succeed.
    pub fn ok(&mut self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args);
        assert_eq!(r["isError"], false, "{tool}: {r}");
        assert!(r["structuredContent"].is_object(), "{tool}: {r}");
        r["structuredContent"].clone()
    }

    /// The text of a call that must fail as a tool (isError), not as a protocol error.
    pub fn tool_error(&mut self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args);
        assert_eq!(r["isError"], true, "{tool}: {r}");
        r["content"][0]["text"].as_str().unwrap_or_default().to_string()
    }

    pub fn tool_names(&mut self) -> Vec<String> {
        let v = self.request("tools/list", json!({}));
        v["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("stderr")).unwrap_or_default()).into_owned()
    }

    /// Closes stdin, expects exit 0, and checks that nothing it wrote holds a password.
    pub fn finish(mut self) -> (String, String) {
        self.close_stdin();
        let status = self.wait_exit(PATIENCE);
        assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr:\n{}", self.stderr());
        let (out, err) = (self.stdout(), self.stderr());
        assert_no_password(&out, &err);
        (out, err)
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- stderr of sync-process mcp ---\n{}", self.stderr());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn assert_no_password(stdout: &str, stderr: &str) {
    for secret in [SECRET_LOCAL, SECRET_REMOTE] {
        assert!(!stdout.contains(secret), "a password on stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "a password on stderr:\n{stderr}");
    }
}
