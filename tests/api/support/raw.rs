//! HTTP/1.1 spoken by hand over a `TcpStream`, for requests an HTTP client library refuses
//! to send: raw non-ASCII or NUL bytes in the request line or headers, repeated headers,
//! bodies the server stops reading.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A request as bytes: `METHOD TARGET HTTP/1.1`, `Host`, the given headers (sent verbatim,
/// in order, repeats included), `Content-Length` unless a header already frames the body,
/// `Connection: close`, then `body`.
pub fn raw_request(
    method: &str,
    target: &[u8],
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() + body.len() + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let framed = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
    });
    for (name, value) in headers {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !framed && (!body.is_empty() || method == "POST") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends `request` on a fresh connection to `addr` (`IP:PORT`) and reads the answer. The
/// request is written from another thread, so a server that answers before reading the
/// whole body (413) is heard; write errors after the answer are ignored.
pub fn raw_exchange(addr: &str, request: Vec<u8>) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let request_head = request[..request.len().min(16)].to_vec();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        let _ = writer.flush();
    });
    let head_only = request_method_is_head(&request_head);
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    // Read until the answer is complete (the server may linger before closing).
    let read_error = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break None,
            Ok(n) => {
                received.extend_from_slice(&buffer[..n]);
                skip_interim(&mut received);
                if is_complete(&received, head_only) {
                    break None;
                }
            }
            Err(e) => break Some(e),
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    let _ = sender.join();
    skip_interim(&mut received);
    match parse_response(&received) {
        Some(mut response) => {
            if head_only {
                response.body.clear();
            }
            Ok(response)
        }
        None => Err(format!(
            "no complete HTTP response ({} bytes received{})",
            received.len(),
            read_error
                .map(|e| format!(", then {e}"))
                .unwrap_or_default()
        )),
    }
}

fn request_method_is_head(request: &[u8]) -> bool {
    request.starts_with(b"HEAD ")
}

/// Drops `1xx` interim answers (`100 Continue`) before the final one.
fn skip_interim(received: &mut Vec<u8>) {
    while received.starts_with(b"HTTP/1.1 1") && !received.starts_with(b"HTTP/1.1 101") {
        match received.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => {
                received.drain(..end + 4);
            }
            None => return,
        }
    }
}

/// Whether `bytes` hold a whole response: the head and the body its framing announces.
fn is_complete(bytes: &[u8], head_only: bool) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head_only {
        return true;
    }
    let Some(response) = parse_response(bytes) else {
        return false;
    };
    let body_len = bytes.len() - head_end - 4;
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        return bytes.ends_with(b"0\r\n\r\n");
    }
    match response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(length) => body_len >= length,
        // Without framing the body ends when the connection does.
        None => matches!(response.status, 204 | 304),
    }
}

/// Parses the first response in `bytes`; `None` when the head is incomplete.
pub fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[head_end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..length.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    body
}

/// Reads until the server closes the connection (or 10 s pass, which fails the test).
pub fn read_until_closed(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server kept the connection open: {e}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}
