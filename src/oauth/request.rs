//! Parameters as received, and the request type handed to oxide-auth's flows. Parsing is
//! ours so that a repeated parameter is an error (oxide-auth would treat it as absent) and
//! so that a flow can run on parameters carried through a login or consent form.

use std::borrow::Cow;

use oxide_auth::endpoint::{NormalizedParameter, QueryParameter, WebRequest};
use oxide_auth_actix::{OAuthResponse, WebError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// `application/x-www-form-urlencoded`, as in a query string or a form body.
    pub fn parse(encoded: &[u8]) -> Params {
        Params(url::form_urlencoded::parse(encoded).into_owned().collect())
    }

    /// The value of a parameter sent exactly once.
    pub fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.iter().filter(|(k, _)| k == key);
        match (values.next(), values.next()) {
            (Some((_, v)), None) => Some(v),
            _ => None,
        }
    }

    pub fn is_repeated(&self, key: &str) -> bool {
        self.0.iter().filter(|(k, _)| k == key).count() > 1
    }

    /// The first parameter name that appears more than once (RFC 6749 3.1 and 3.2).
    pub fn first_repeated(&self) -> Option<&str> {
        // One pass: bodies may hold thousands of fields and this runs on an async worker.
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !seen.insert(*k))
    }

    pub fn without(self, keys: &[&str]) -> Params {
        self.without_names(|name| keys.contains(&name))
    }

    /// Without the pairs whose name `drop` picks.
    pub fn without_names(mut self, drop: impl Fn(&str) -> bool) -> Params {
        self.0.retain(|(k, _)| !drop(k));
        self
    }

    pub fn with(mut self, key: &str, value: &str) -> Params {
        self.0.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn encode(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.0.iter())
            .finish()
    }

    fn normalized(self) -> NormalizedParameter {
        self.0.into_iter().collect()
    }
}

/// What oxide-auth's flows read: query, form body and Authorization header.
pub struct FlowRequest {
    query: NormalizedParameter,
    body: NormalizedParameter,
    authorization: Option<String>,
}

impl FlowRequest {
    pub fn new(query: Params, body: Params, authorization: Option<String>) -> FlowRequest {
        FlowRequest {
            query: query.normalized(),
            body: body.normalized(),
            authorization,
        }
    }
}

impl WebRequest for FlowRequest {
    type Error = WebError;
    type Response = OAuthResponse;

    fn query(&mut self) -> Result<Cow<'_, dyn QueryParameter + 'static>, WebError> {
        Ok(Cow::Borrowed(&self.query))
    }

    fn urlbody(&mut self) -> Result<Cow<'_, dyn QueryParameter + 'static>, WebError> {
        Ok(Cow::Borrowed(&self.body))
    }

    fn authheader(&mut self) -> Result<Option<Cow<'_, str>>, WebError> {
        Ok(self.authorization.as_deref().map(Cow::Borrowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_found_and_never_read() {
        let params = Params::parse(b"a=1&b=2&a=3&c=%20x");
        assert_eq!(params.first_repeated(), Some("a"));
        assert_eq!(params.get("a"), None);
        assert_eq!(params.get("b"), Some("2"));
        assert_eq!(params.get("c"), Some(" x"));
        assert_eq!(Params::parse(b"a=1&b=2").first_repeated(), None);
        assert_eq!(Params::parse(b"x=a+b&y=%26").encode(), "x=a+b&y=%26");
    }
}
