//! `sync-process mcp`: a Model Context Protocol server on stdin/stdout, for an AI assistant on or next to the
//! box (a desktop client, an IDE agent, or `ssh box sync-process mcp`, which opens no port).
//!
//! Owns: the protocol, in [`Session`] (pure: a line in, what to answer out): the handshake of 2025-11-25 and
//! earlier (`initialize` with version negotiation, `notifications/initialized`, `ping`), the per-request
//! `_meta` form of 2026-07-28 (`server/discover`, `resultType`, `serverInfo` in every result's `_meta`), the
//! JSON-RPC error codes, and the envelopes of `tools/list` and `tools/call` for each revision.
//! Does not own: stdin/stdout and the loop (transport.rs), the tools and what they read (tools.rs, schema.rs;
//! status.rs, quarantine.rs, config.rs).

mod schema;
pub mod tools;
mod transport;

pub use transport::serve;

use serde_json::{json, Map, Value};

/// Revisions answered with the `initialize` handshake, newest first.
pub const LEGACY_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Revisions spoken per request (`_meta`), without a handshake.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC and MCP error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// How long a client may cache `tools/list` and `server/discover` (2026-07-28): the list is fixed per process.
const CACHE_TTL_MS: u64 = 60_000;

const INSTRUCTIONS: &str = "\
This server looks at one edge box's sync-process daemon, which uploads meter readings from the local \
PostgreSQL to a central one (exactly once) and mirrors meters and tenants down. Start with get_status (the \
daemon's live status) or check_health (daemon, local and remote database). list_recent_cycles shows the last \
cycles from sync_logs; list_quarantined shows readings the remote rejected, with the ids that \
retry_quarantined and discard_quarantined take (those two exist only when the server runs with \
--allow-writes). Values are previews; passwords are never shown.";

/// The protocol revision a request is answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rev {
    pub version: &'static str,
    /// 2026-07-28 and later: `resultType` and `_meta.serverInfo` in every result, cache hints on lists.
    pub modern: bool,
}

impl Rev {
    /// `title`, `outputSchema` and `structuredContent` exist from 2025-06-18 (ISO dates compare as text).
    pub fn structured(&self) -> bool {
        self.version >= "2025-06-18"
    }

    /// Tool annotations exist from 2025-03-26.
    pub fn annotations(&self) -> bool {
        self.version >= "2025-03-26"
    }
}

/// What the loop does with one message.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Nothing is written (a notification, a stray response, a blank line).
    Nothing,
    /// Write this message.
    Reply(Value),
    /// Run the tool, then write [`Session::finish`] of its outcome.
    Call(Call),
}

/// A `tools/call` of a tool that exists and is enabled.
#[derive(Debug, PartialEq)]
pub struct Call {
    pub id: Value,
    pub tool: &'static tools::Tool,
    pub args: Map<String, Value>,
    pub rev: Rev,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    allow_writes: bool,
    /// The version agreed by `initialize` (legacy era); requests before it use the newest legacy version.
    negotiated: Option<&'static str>,
}

/// An error reply still lacking its id.
pub(super) struct Fail(i64, String, Option<Value>);

pub(super) fn fail(code: i64, message: impl Into<String>) -> Fail {
    Fail(code, message.into(), None)
}

impl Session {
    pub fn new(allow_writes: bool) -> Session {
        Session {
            allow_writes,
            negotiated: None,
        }
    }

    /// One line from stdin (without its newline).
    pub fn handle(&mut self, line: &[u8]) -> Action {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Action::Nothing;
        }
        let msg: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return Action::Reply(error(
                    Value::Null,
                    Fail(code::PARSE_ERROR, format!("Parse error: not JSON ({e})"), None),
                ))
            }
        };
        let obj = match msg {
            Value::Object(obj) => obj,
            Value::Array(_) => {
                return Action::Reply(error(
                    Value::Null,
                    fail(
                        code::INVALID_REQUEST,
                        "Invalid Request: JSON-RPC batches are not supported; send one message per line",
                    ),
                ))
            }
            _ => {
                return Action::Reply(error(
                    Value::Null,
                    fail(code::INVALID_REQUEST, "Invalid Request: a message is a JSON object"),
                ))
            }
        };
        let id = match obj.get("id") {
            None => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
            Some(Value::Null) => {
                return Action::Reply(error(
                    Value::Null,
                    fail(code::INVALID_REQUEST, "Invalid Request: the id must not be null"),
                ))
            }
            Some(_) => {
                return Action::Reply(error(
                    Value::Null,
                    fail(
                        code::INVALID_REQUEST,
                        "Invalid Request: the id must be a string or a number",
                    ),
                ))
            }
        };
        let reply_id = id.clone().unwrap_or(Value::Null);
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Action::Reply(error(
                reply_id,
                fail(code::INVALID_REQUEST, "Invalid Request: \"jsonrpc\" must be \"2.0\""),
            ));
        }
        let method = match obj.get("method") {
            Some(Value::String(m)) => m.as_str(),
            Some(_) => {
                return Action::Reply(error(
                    reply_id,
                    fail(code::INVALID_REQUEST, "Invalid Request: \"method\" must be a string"),
                ))
            }
            None if obj.contains_key("result") || obj.contains_key("error") => {
                log::debug!("mcp: ignoring a response from the client (this server sends no requests)");
                return Action::Nothing;
            }
            None => {
                return Action::Reply(error(
                    reply_id,
                    fail(code::INVALID_REQUEST, "Invalid Request: a request needs a \"method\""),
                ))
            }
        };
        let empty = Map::new();
        let params = match obj.get("params") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(p)) => p,
            Some(_) if id.is_none() => return Action::Nothing,
            Some(_) => {
                return Action::Reply(error(
                    reply_id,
                    fail(
                        code::INVALID_PARAMS,
                        format!("Invalid params: {method}: \"params\" must be an object"),
                    ),
                ))
            }
        };
        let Some(id) = id else {
            match method {
                "notifications/initialized" => log::debug!("mcp: the client finished initialization"),
                "notifications/cancelled" => {
                    log::debug!("mcp: cancellation ignored: every request is answered before the next is read")
                }
                other => log::debug!("mcp: notification {other:?} ignored"),
            }
            return Action::Nothing;
        };
        match self.dispatch(method, params, &id) {
            Ok(action) => action,
            Err(f) => Action::Reply(error(id, f)),
        }
    }

    fn dispatch(&mut self, method: &str, params: &Map<String, Value>, id: &Value) -> Result<Action, Fail> {
        let rev = self.rev_for(params)?;
        let answer = |result: Value| Ok(Action::Reply(response(id.clone(), decorate(rev, result))));
        match method {
            "initialize" => {
                let requested = params.get("protocolVersion").and_then(Value::as_str).ok_or_else(|| {
                    fail(
                        code::INVALID_PARAMS,
                        "Invalid params: initialize needs \"protocolVersion\" (a string such as \"2025-11-25\")",
                    )
                })?;
                let version = negotiate(requested);
                self.negotiated = Some(version);
                let client = params
                    .get("clientInfo")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("an unnamed client");
                log::info!("mcp: initialize from {client:?}: asked for {requested:?}, answering {version}");
                let rev = Rev { version, modern: false };
                Ok(Action::Reply(response(
                    id.clone(),
                    json!({
                        "protocolVersion": version,
                        "capabilities": { "tools": { "listChanged": false } },
                        "serverInfo": server_info(rev),
                        "instructions": INSTRUCTIONS,
                    }),
                )))
            }
            "ping" => answer(json!({})),
            "server/discover" => {
                let mut supported: Vec<&str> = MODERN_VERSIONS.to_vec();
                supported.extend(LEGACY_VERSIONS);
                answer(json!({
                    "supportedVersions": supported,
                    "capabilities": { "tools": { "listChanged": false } },
                    "instructions": INSTRUCTIONS,
                    "ttlMs": CACHE_TTL_MS,
                    "cacheScope": "private",
                }))
            }
            "tools/list" => {
                match params.get("cursor") {
                    None | Some(Value::Null) => {}
                    Some(c) => {
                        return Err(fail(
                            code::INVALID_PARAMS,
                            format!("Invalid params: unknown cursor {c}: the tool list has one page and no cursors"),
                        ))
                    }
                }
                let mut result = json!({
                    "tools": tools::list(self.allow_writes, rev.structured(), rev.annotations()),
                });
                if rev.modern {
                    result["ttlMs"] = json!(CACHE_TTL_MS);
                    result["cacheScope"] = json!("private");
                }
                answer(result)
            }
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).ok_or_else(|| {
                    fail(
                        code::INVALID_PARAMS,
                        "Invalid params: tools/call needs \"name\" (a string)",
                    )
                })?;
                let args = match params.get("arguments") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(a)) => a.clone(),
                    Some(_) => {
                        return Err(fail(
                            code::INVALID_PARAMS,
                            format!("Invalid params: tools/call {name}: \"arguments\" must be an object"),
                        ))
                    }
                };
                match tools::lookup(name, self.allow_writes) {
                    tools::Lookup::Unknown => {
                        let mut f = fail(code::INVALID_PARAMS, format!("Unknown tool: {name}"));
                        f.2 = Some(json!({ "tools": tools::names(self.allow_writes) }));
                        Err(f)
                    }
                    tools::Lookup::Disabled(tool) => {
                        let call = Call {
                            id: id.clone(),
                            tool,
                            args,
                            rev,
                        };
                        Ok(Action::Reply(self.finish(&call, tools::Outcome::disabled(tool))))
                    }
                    tools::Lookup::Enabled(tool) => Ok(Action::Call(Call {
                        id: id.clone(),
                        tool,
                        args,
                        rev,
                    })),
                }
            }
            other => Err(fail(code::METHOD_NOT_FOUND, format!("Method not found: {other}"))),
        }
    }

    /// The revision of a request: the one in its `_meta` (the per-request form), else the one negotiated by
    /// `initialize`, else the newest legacy one.
    fn rev_for(&self, params: &Map<String, Value>) -> Result<Rev, Fail> {
        let meta = params.get("_meta").and_then(Value::as_object);
        let Some(asked) = meta.and_then(|m| m.get(META_VERSION)) else {
            return Ok(Rev {
                version: self.negotiated.unwrap_or(LEGACY_VERSIONS[0]),
                modern: false,
            });
        };
        let asked = asked.as_str().ok_or_else(|| {
            fail(
                code::INVALID_PARAMS,
                format!("Invalid params: _meta[\"{META_VERSION}\"] must be a string"),
            )
        })?;
        if let Some(v) = MODERN_VERSIONS.iter().find(|v| **v == asked) {
            if !meta
                .and_then(|m| m.get(META_CAPABILITIES))
                .is_some_and(Value::is_object)
            {
                return Err(fail(
                    code::INVALID_PARAMS,
                    format!("Invalid params: a {v} request needs _meta[\"{META_CAPABILITIES}\"] (an object)"),
                ));
            }
            if let Some(name) = meta
                .and_then(|m| m.get(META_CLIENT_INFO))
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
            {
                log::debug!("mcp: {v} request from {name:?}");
            }
            return Ok(Rev {
                version: v,
                modern: true,
            });
        }
        if let Some(v) = LEGACY_VERSIONS.iter().find(|v| **v == asked) {
            return Ok(Rev {
                version: v,
                modern: false,
            });
        }
        let mut supported: Vec<&str> = MODERN_VERSIONS.to_vec();
        supported.extend(LEGACY_VERSIONS);
        Err(Fail(
            code::UNSUPPORTED_PROTOCOL_VERSION,
            format!("Unsupported protocol version: {asked}"),
            Some(json!({ "supported": supported, "requested": asked })),
        ))
    }

    /// The reply to a tool call: its outcome as a `CallToolResult` of the call's revision.
    pub fn finish(&self, call: &Call, outcome: tools::Outcome) -> Value {
        let mut result = json!({
            "content": [{ "type": "text", "text": outcome.text }],
            "isError": outcome.is_error,
        });
        if let (Some(structured), true) = (outcome.structured, call.rev.structured()) {
            result["structuredContent"] = structured;
        }
        response(call.id.clone(), decorate(call.rev, result))
    }
}

/// The version answered to `initialize`: the client's when this server speaks it, else the newest it has.
pub fn negotiate(requested: &str) -> &'static str {
    LEGACY_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LEGACY_VERSIONS[0])
}

fn server_info(rev: Rev) -> Value {
    let mut info = json!({ "name": "sync-process", "version": env!("CARGO_PKG_VERSION") });
    if rev.structured() {
        info["title"] = json!("sync-process (edge database sync)");
    }
    info
}

/// Adds what every result of 2026-07-28 carries.
fn decorate(rev: Rev, mut result: Value) -> Value {
    if rev.modern {
        result["resultType"] = json!("complete");
        result["_meta"] = json!({ META_SERVER_INFO: server_info(rev) });
    }
    result
}

fn response(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

pub(super) fn error(id: Value, Fail(code, message, data): Fail) -> Value {
    let mut e = json!({ "code": code, "message": message });
    if let Some(d) = data {
        e["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &mut Session, line: &str) -> Value {
        match s.handle(line.as_bytes()) {
            Action::Reply(v) => v,
            other => panic!("{line}: expected a reply, got {other:?}"),
        }
    }

    fn code_of(v: &Value) -> i64 {
        v["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("not an error: {v}"))
    }

    #[test]
    fn negotiation_echoes_a_known_version_else_the_newest() {
        assert_eq!(negotiate("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate("2024-11-05"), "2024-11-05");
        assert_eq!(
            negotiate("2026-07-28"),
            "2025-11-25",
            "no handshake in the modern revision"
        );
        assert_eq!(negotiate("1999-01-01"), "2025-11-25");
        let mut s = Session::new(false);
        let v = reply(
            &mut s,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        );
        assert_eq!(v["id"], 1);
        assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(v["result"]["serverInfo"]["name"], "sync-process");
        assert!(v["result"]["capabilities"]["tools"].is_object());
        // The negotiated revision shapes later answers: no outputSchema before 2025-06-18.
        let list = reply(&mut s, r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
        let first = &list["result"]["tools"][0];
        assert!(first["inputSchema"].is_object() && first["annotations"].is_object());
        assert!(first.get("outputSchema").is_none(), "{first}");
    }

    #[test]
    fn error_codes() {
        let mut s = Session::new(false);
        for (line, code, id) in [
            ("{not json", code::PARSE_ERROR, Value::Null),
            ("[1,2]", code::INVALID_REQUEST, Value::Null),
            ("42", code::INVALID_REQUEST, Value::Null),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                r#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#,
                code::INVALID_REQUEST,
                json!(3),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":7}"#,
                code::INVALID_REQUEST,
                json!("a"),
            ),
            (r#"{"jsonrpc":"2.0","id":4}"#, code::INVALID_REQUEST, json!(4)),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"prompts/list"}"#,
                code::METHOD_NOT_FOUND,
                json!(5),
            ),
            (
                r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{}}"#,
                code::INVALID_PARAMS,
                json!(6),
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":[1]}"#,
                code::INVALID_PARAMS,
                json!(7),
            ),
            (
                r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"nope"}}"#,
                code::INVALID_PARAMS,
                json!(8),
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{}}"#,
                code::INVALID_PARAMS,
                json!(9),
            ),
            (
                r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"get_status","arguments":[]}}"#,
                code::INVALID_PARAMS,
                json!(10),
            ),
            (
                r#"{"jsonrpc":"2.0","id":11,"method":"tools/list","params":{"cursor":"x"}}"#,
                code::INVALID_PARAMS,
                json!(11),
            ),
        ] {
            let v = reply(&mut s, line);
            assert_eq!(code_of(&v), code, "{line}: {v}");
            assert_eq!(v["id"], id, "{line}: {v}");
            assert_eq!(v["jsonrpc"], "2.0");
        }
    }

    #[test]
    fn notifications_responses_and_blank_lines_get_no_answer() {
        let mut s = Session::new(false);
        for line in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            r#"{"jsonrpc":"2.0","method":"whatever"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            "",
            "  ",
        ] {
            assert_eq!(s.handle(line.as_bytes()), Action::Nothing, "{line}");
        }
        let v = reply(&mut s, r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#);
        assert_eq!(v, json!({"jsonrpc":"2.0","id":"p","result":{}}));
    }

    #[test]
    fn the_per_request_form() {
        let mut s = Session::new(false);
        let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}"#;
        let v = reply(
            &mut s,
            &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{{{meta}}}}}"#),
        );
        let r = &v["result"];
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["supportedVersions"][0], "2026-07-28");
        assert!(r["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("2025-11-25"))));
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "sync-process");
        assert!(r["ttlMs"].is_u64() && r["cacheScope"] == "private");
        let v = reply(
            &mut s,
            &format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{{meta}}}}}"#),
        );
        assert_eq!(v["result"]["resultType"], "complete");
        assert!(v["result"]["ttlMs"].is_u64());
        assert!(v["result"]["tools"][0]["outputSchema"].is_object());

        let v = reply(
            &mut s,
            r#"{"jsonrpc":"2.0","id":3,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        );
        assert_eq!(code_of(&v), code::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(v["error"]["data"]["requested"], "2099-01-01");
        assert_eq!(v["error"]["data"]["supported"][0], "2026-07-28");
        let v = reply(
            &mut s,
            r#"{"jsonrpc":"2.0","id":4,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(code_of(&v), code::INVALID_PARAMS, "clientCapabilities is required: {v}");
    }

    #[test]
    fn write_tools_are_listed_and_called_only_with_the_flag() {
        let names = |s: &mut Session| -> Vec<String> {
            reply(s, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)["result"]["tools"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t["name"].as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let mut ro = Session::new(false);
        let mut rw = Session::new(true);
        assert!(!names(&mut ro)
            .iter()
            .any(|n| n.ends_with("_quarantined") && n != "list_quarantined"));
        assert!(names(&mut rw).contains(&"discard_quarantined".to_string()));
        let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"discard_quarantined","arguments":{"ids":[1]}}}"#;
        let v = reply(&mut ro, call);
        assert_eq!(v["result"]["isError"], true, "{v}");
        assert!(
            v["result"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("--allow-writes")),
            "{v}"
        );
        assert!(matches!(rw.handle(call.as_bytes()), Action::Call(c) if c.tool.name == "discard_quarantined"));
    }
}
