//! The authorization endpoint's logic (RFC 6749 4.1.1, RFC 9700 2.1 and 4.1): requests that
//! cannot be trusted to redirect are refused outright; everything else ends in a redirect
//! to the client, carrying `iss` (RFC 9207), or in a login or consent page.

use std::sync::Arc;

use oxide_auth::endpoint::{AuthorizationFlow, OAuthError};
use oxide_auth_actix::{OAuthResponse, WebError};
use url::Url;

use super::client::Client;
use super::client::ClientRegistry;
use super::context::{Decision, FlowContext, Interaction, Owner};
use super::endpoint::GatehouseEndpoint;
use super::request::{FlowRequest, Params};
use crate::config::{GrantType, Settings};
use crate::keys::KeyState;
use crate::storage::{DbConnection, StorageError};

#[derive(Debug)]
pub enum AuthorizeOutcome {
    /// The client or redirect URI cannot be trusted: show an error page, never redirect.
    Refuse(&'static str),
    /// Send the user agent back to the client.
    Redirect(Url),
    /// The user must sign in first.
    Login,
    /// The user must approve (or deny) the client's access.
    Consent {
        client: Arc<Client>,
        scopes: Vec<String>,
    },
}

/// The longest parameter name or value an authorization request may carry: room for any
/// state or nonce a client makes, and a bound on what a code row stores, a login link
/// carries and a redirect echoes.
pub const MAX_PARAM_BYTES: usize = 2048;

/// Why a parameter cannot be part of an authorization request, if one cannot: too long,
/// or not text (RFC 6749 appendix A: control characters, NUL among them, are never
/// allowed; bytes that were not UTF-8 were decoded as U+FFFD).
fn unacceptable(text: &str) -> Option<&'static str> {
    if text.len() > MAX_PARAM_BYTES {
        Some("a parameter is too long")
    } else if text
        .chars()
        .any(|c| c.is_control() || c == char::REPLACEMENT_CHARACTER)
    {
        Some("a parameter holds control characters or is not UTF-8")
    } else {
        None
    }
}

/// Judges the authorization request `params` (without the consent form's own fields) for
/// `owner`, with the user's `decision` when the consent form carried one.
pub fn authorize(
    conn: &mut DbConnection,
    settings: &Settings,
    clients: &ClientRegistry,
    keys: Arc<KeyState>,
    params: Params,
    owner: Option<Owner>,
    decision: Option<Decision>,
) -> Result<AuthorizeOutcome, StorageError> {
    let mut ctx = FlowContext::new(conn, settings, clients, keys);
    ctx.owner = owner;
    ctx.decision = decision;

    // RFC 6749 4.1.2.1: without a valid client and redirect URI, tell the user, not the client.
    let Some(client_id) = params.get("client_id") else {
        return Ok(AuthorizeOutcome::Refuse(
            "The request does not name exactly one client (client_id).",
        ));
    };
    let client = match ctx.client(client_id) {
        Ok(Some(client)) => client,
        Ok(None) => {
            return Ok(AuthorizeOutcome::Refuse(
                "The application that sent you here is not registered.",
            ))
        }
        Err(()) => return Err(take_failure(&ctx)),
    };
    if params.is_repeated("redirect_uri") {
        return Ok(AuthorizeOutcome::Refuse(
            "The request names more than one redirect_uri.",
        ));
    }
    let Some(redirect) = client.redirect_uri_for(params.get("redirect_uri")) else {
        return Ok(AuthorizeOutcome::Refuse(
            "The redirect_uri is missing or is not registered for this application.",
        ));
    };
    let redirect = Url::parse(&redirect)
        .map_err(|_| StorageError::Corrupt("registered redirect_uri".into()))?;
    let state = params.get("state");

    if let Some(repeated) = params.first_repeated() {
        let description = format!("parameter {repeated} was sent more than once");
        return Ok(AuthorizeOutcome::Redirect(error_redirect(
            redirect,
            "invalid_request",
            &description,
            state,
            &settings.issuer,
        )));
    }
    if let Some(problem) = params
        .pairs()
        .iter()
        .find_map(|(k, v)| unacceptable(k).or_else(|| unacceptable(v)))
    {
        // The state is echoed only when it is itself acceptable.
        return Ok(AuthorizeOutcome::Redirect(error_redirect(
            redirect,
            "invalid_request",
            problem,
            state.filter(|s| unacceptable(s).is_none()),
            &settings.issuer,
        )));
    }
    if params.get("response_type").is_none() {
        return Ok(AuthorizeOutcome::Redirect(error_redirect(
            redirect,
            "invalid_request",
            "response_type is required",
            state,
            &settings.issuer,
        )));
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Ok(AuthorizeOutcome::Redirect(error_redirect(
            redirect,
            "unauthorized_client",
            "this client may not use the authorization code grant",
            state,
            &settings.issuer,
        )));
    }

    let flow_result = AuthorizationFlow::prepare(GatehouseEndpoint::new(&ctx))
        .and_then(|mut flow| flow.execute(FlowRequest::new(params, Params::default(), None)));
    let notes = ctx.take_notes();
    if let Some(failure) = notes.failure {
        return Err(failure);
    }
    let response = match flow_result {
        Ok(response) => response,
        Err(WebError::Endpoint(OAuthError::DenySilently)) => {
            return Ok(AuthorizeOutcome::Refuse(
                "The authorization request is malformed.",
            ))
        }
        Err(e) => {
            return Err(StorageError::Corrupt(format!(
                "authorization flow failed: {e:?}"
            )))
        }
    };
    match notes.interaction {
        Some(Interaction::Login) => return Ok(AuthorizeOutcome::Login),
        Some(Interaction::Consent { scope }) => {
            return Ok(AuthorizeOutcome::Consent {
                client,
                scopes: scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        }
        None => {}
    }
    match location(&response) {
        Some(location) => Ok(AuthorizeOutcome::Redirect(finish_redirect(
            location,
            notes.error_description,
            &settings.issuer,
        ))),
        None => Err(StorageError::Corrupt(
            "authorization flow ended without a redirect".into(),
        )),
    }
}

fn take_failure(ctx: &FlowContext<'_>) -> StorageError {
    ctx.take_notes()
        .failure
        .unwrap_or_else(|| StorageError::Corrupt("client lookup failed".into()))
}

fn location(response: &OAuthResponse) -> Option<Url> {
    response
        .get_headers()
        .get(actix_web::http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Url::parse(v).ok())
}

/// RFC 6749 4.1.2.1 names the field `error_description` (oxide-auth writes `description`);
/// RFC 9207 adds `iss` to every authorization response.
fn finish_redirect(location: Url, description: Option<&str>, issuer: &str) -> Url {
    let mut pairs: Vec<(String, String)> = location
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "description" {
                ("error_description".to_owned(), v)
            } else {
                (k, v)
            }
        })
        .collect();
    let is_error = pairs.iter().any(|(k, _)| k == "error");
    if is_error {
        let default = match pairs
            .iter()
            .find(|(k, _)| k == "error")
            .map(|(_, v)| v.as_str())
        {
            Some("invalid_scope") => Some("the requested scope is not allowed for this client"),
            Some("access_denied") => Some("the user denied the request"),
            Some("unsupported_response_type") => Some("only response_type=code is supported"),
            _ => None,
        };
        if let Some(text) = description.or(default) {
            pairs.retain(|(k, _)| k != "error_description");
            pairs.push(("error_description".to_owned(), text.to_owned()));
        }
    }
    pairs.retain(|(k, _)| k != "iss");
    pairs.push(("iss".to_owned(), issuer.to_owned()));
    let mut url = location;
    url.set_query(None);
    url.query_pairs_mut().extend_pairs(pairs);
    url
}

fn error_redirect(
    redirect: Url,
    error: &str,
    description: &str,
    state: Option<&str>,
    issuer: &str,
) -> Url {
    let mut url = redirect;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("error", error);
        query.append_pair("error_description", description);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", issuer);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_must_be_short_text() {
        assert_eq!(unacceptable("a state, with spaces & caf\u{e9}"), None);
        assert_eq!(unacceptable(&"x".repeat(MAX_PARAM_BYTES)), None);
        assert!(unacceptable(&"x".repeat(MAX_PARAM_BYTES + 1)).is_some());
        assert!(unacceptable("a\0b").is_some());
        assert!(unacceptable("line\nbreak").is_some());
        assert!(unacceptable("not utf-8: \u{fffd}").is_some());
    }

    #[test]
    fn redirects_use_rfc_field_names_and_carry_iss() {
        let url = Url::parse(
            "https://app.example.com/cb?keep=1&error=invalid_request&description=x&state=s",
        )
        .unwrap();
        let done = finish_redirect(url, Some("precise"), "https://auth.example.com");
        let pairs: Vec<(String, String)> = done.query_pairs().into_owned().collect();
        assert!(pairs.contains(&("keep".into(), "1".into())));
        assert!(pairs.contains(&("error_description".into(), "precise".into())));
        assert!(!pairs.iter().any(|(k, _)| k == "description"));
        assert!(pairs.contains(&("state".into(), "s".into())));
        assert_eq!(
            pairs.last().unwrap(),
            &("iss".to_owned(), "https://auth.example.com".to_owned())
        );
    }
}
