//! A cookie-keeping HTTP client that does not follow redirects, so each hop can be checked.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Response;

pub struct Browser {
    agent: ureq::Agent,
    pub cookies: BTreeMap<String, String>,
    /// Every Set-Cookie header seen, raw, for attribute checks.
    pub set_cookie_headers: Vec<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Browser {
            agent,
            cookies: BTreeMap::new(),
            set_cookie_headers: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, response: ureq::http::Response<ureq::Body>) -> Response {
        for value in response.headers().get_all("set-cookie") {
            let raw = value.to_str().unwrap_or_default().to_owned();
            let pair = raw.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let removal = raw.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
                if removal {
                    self.cookies.remove(name.trim());
                } else {
                    self.cookies
                        .insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
            self.set_cookie_headers.push(raw);
        }
        Response::from_ureq(response)
    }

    pub fn get(&mut self, url: &str) -> Response {
        let mut request = self.agent.get(url);
        if !self.cookies.is_empty() {
            request = request.header("Cookie", self.cookie_header());
        }
        let response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        self.absorb(response)
    }

    pub fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields.iter())
            .finish();
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded");
        if !self.cookies.is_empty() {
            request = request.header("Cookie", self.cookie_header());
        }
        let response = request
            .send(body.as_bytes())
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        self.absorb(response)
    }
}

/// The value of `<input type="hidden" name="NAME" value="...">`, unescaped.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// Every hidden field, in order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.match_indices("<input type=\"hidden\" name=\"")
        .filter_map(|(i, m)| {
            let rest = &html[i + m.len()..];
            let name_end = rest.find('"')?;
            let name = &rest[..name_end];
            hidden_field(&html[i..], name).map(|v| (html_unescape(name), v))
        })
        .collect()
}

/// Undoes HTML escaping: the named entities and decimal or hex character references.
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
