//! A minimal HTTP/1.1 keep-alive client over a blocking socket: the load generator shares
//! the machine with the server, so it must cost as little CPU per request as possible (no
//! TLS, no async runtime, no header maps; one write and usually one read per request).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub struct Reply {
    pub status: u16,
    head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// Every `Set-Cookie` as `name=value`.
    pub fn cookies(&self) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case("set-cookie").then(|| {
                    value
                        .trim()
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
            })
            .collect()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or_default()
    }

    /// A string field of a JSON body.
    pub fn json_str(&self, field: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value[field].as_str().map(str::to_owned)
    }
}

pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// `name=value` pairs sent as `Cookie`.
    pub cookies: Vec<String>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: Vec::with_capacity(16 * 1024),
            cookies: Vec::new(),
        })
    }

    pub fn get(&mut self, path: &str, headers: &str) -> io::Result<Reply> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\n{}{headers}\r\n",
            self.cookie_header()
        );
        self.exchange(request.as_bytes())
    }

    pub fn post_form(&mut self, path: &str, body: &str, headers: &str) -> io::Result<Reply> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{}{headers}\r\n{body}",
            body.len(),
            self.cookie_header()
        );
        self.exchange(request.as_bytes())
    }

    /// Keeps the cookies a reply sets (replacing any of the same name).
    pub fn keep_cookies(&mut self, reply: &Reply) {
        for cookie in reply.cookies() {
            let name = cookie.split('=').next().unwrap_or_default().to_owned();
            self.cookies
                .retain(|c| c.split('=').next().unwrap_or_default() != name);
            self.cookies.push(cookie);
        }
    }

    fn cookie_header(&self) -> String {
        if self.cookies.is_empty() {
            String::new()
        } else {
            format!("Cookie: {}\r\n", self.cookies.join("; "))
        }
    }

    /// Sends one request and reads its reply; reconnects once if the server had closed
    /// the kept-alive connection.
    fn exchange(&mut self, request: &[u8]) -> io::Result<Reply> {
        match self.try_exchange(request) {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.stream = TcpStream::connect(self.addr)?;
                self.stream.set_nodelay(true)?;
                self.try_exchange(request)
            }
        }
    }

    fn try_exchange(&mut self, request: &[u8]) -> io::Result<Reply> {
        self.stream.write_all(request)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {head}")))?;
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = reply
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while self.buf.len() < body_start + length {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        reply.body = self.buf[body_start..body_start + length].to_vec();
        Ok(reply)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `name=value` form encoding.
pub fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The value of every `<input type="hidden" name=... value=...>` in a page, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|input| {
            let name = input.split("name=\"").nth(1)?.split('"').next()?;
            let value = input.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find(';') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let entity = &rest[start + 1..start + end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}
