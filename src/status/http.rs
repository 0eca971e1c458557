//! The little HTTP/1.x the status server speaks: one request per connection, read within bounds.
//!
//! Owns: [`read_head`] (the request line and headers, at most [`MAX_HEAD`] bytes, all of it within a deadline
//! however slowly the client sends: a slowloris client holds one worker for at most that long), [`parse_head`]
//! (pure) and [`write_response`] (status line, the security headers on every response, `Connection: close`).
//! Does not own: what to answer (server.rs). A request body is never read: only GET and HEAD are served, and
//! the connection closes after each response.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line plus headers) accepted; beyond it: 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head from the moment a worker takes the connection.
pub const REQUEST_TIME: Duration = Duration::from_secs(2);
/// Time a client has to take the response.
pub const WRITE_TIME: Duration = Duration::from_secs(5);

/// What the server needs from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The Host header (the last one when several are sent: then the request is refused anyway).
    pub host: Option<String>,
    /// More than one Host header was sent.
    pub hosts_repeated: bool,
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// The head exceeds [`MAX_HEAD`].
    TooLarge,
    /// The client did not send a whole head within [`REQUEST_TIME`].
    TimedOut,
    /// Not an HTTP/1.x request head.
    Malformed(&'static str),
    /// The client closed the connection, or the socket failed.
    Gone,
}

/// Reads the request head from `stream`, giving up at `deadline` (each read waits only for what is left).
pub fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Head, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        stream.set_read_timeout(Some(left)).map_err(|_| ReadError::Gone)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Gone),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Gone),
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf[from..]).map(|e| e + from) {
            if end > MAX_HEAD {
                return Err(ReadError::TooLarge);
            }
            return parse_head(&buf[..end]).map_err(ReadError::Malformed);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge);
        }
    }
}

/// Index just past the blank line that ends a head (CRLF CRLF, or a bare LF LF).
fn find_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Parses a request head (pure).
pub fn parse_head(bytes: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the request line is not METHOD TARGET VERSION");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err("not an HTTP/1.x request");
    }
    let mut host = None;
    let mut hosts_repeated = false;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err("a header line without a colon");
        };
        if name.trim().eq_ignore_ascii_case("host") {
            hosts_repeated |= host.is_some();
            host = Some(value.trim().to_string());
        }
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        host,
        hosts_repeated,
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a whole response and closes the sending side. Every response carries the security headers:
/// `Content-Security-Policy: default-src 'self'` (the dashboard loads its script and style from this server
/// only, never inline) and `X-Content-Type-Options: nosniff`.
pub fn write_response(stream: &mut TcpStream, code: u16, content_type: &str, body: &[u8], head_only: bool) {
    let _ = stream.set_write_timeout(Some(WRITE_TIME));
    let mut out = Vec::with_capacity(body.len() + 320);
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: default-src 'self'\r\nX-Content-Type-Options: nosniff\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    if code == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    if let Err(e) = stream.write_all(&out).and_then(|_| stream.flush()) {
        log::debug!("status server: writing a response failed: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let h = parse_head(b"GET /status?x=1 HTTP/1.1\r\nHost: localhost:17461\r\nAccept: */*\r\n\r\n").expect("head");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/status?x=1");
        assert_eq!(h.host.as_deref(), Some("localhost:17461"));
        assert!(!h.hosts_repeated);
        let h = parse_head(b"HEAD / HTTP/1.0\n\n").expect("bare LF, no host");
        assert_eq!((h.method.as_str(), h.host), ("HEAD", None));
        let h = parse_head(b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n").expect("head");
        assert!(h.hosts_repeated);
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_head(b"get / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n").is_err());
    }

    #[test]
    fn the_end_of_a_head_is_found() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(find_end(b"a\n\n"), Some(3));
    }
}
