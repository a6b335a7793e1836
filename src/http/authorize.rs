//! GET /authorize and GET/POST /consent: the browser side of the authorization-code flow.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::pages::{self, ConsentPage, ScopeView};
use super::{forms, session, AppState};
use crate::audit::{AuditEvent, Event};
use crate::oauth::authorize::{self, AuthorizeOutcome};
use crate::oauth::context::Decision;
use crate::oauth::request::Params;

const CONSENT_FORM: &str = "consent";

pub async fn authorize(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let params = forms::query_params(&req);
    run(&req, &state, params, None).await
}

pub async fn consent_submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let purpose_of = |form: &Params| consent_purpose(&carried_request(form.clone()));
    let params = match forms::protected_form_for(&req, &state, &body, purpose_of) {
        Ok(params) => params,
        Err(refusal) => return *refusal,
    };
    let decision = match params.get("decision") {
        Some("allow") => Decision::Allow,
        Some("deny") => Decision::Deny,
        _ => {
            return pages::error_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "Choose Allow or Deny.",
            );
        }
    };
    run(&req, &state, params, Some(decision)).await
}

/// The consent form's own fields, never part of the authorization request it carries.
const FORM_FIELDS: [&str; 2] = ["csrf_token", "decision"];

/// The authorization request in a query or a consent form: without our own form fields,
/// which never travel inside one, nor fields the consent form could not carry back as given.
fn carried_request(params: Params) -> Params {
    params.without(&FORM_FIELDS).without_names(browser_alters)
}

/// Fields a browser does not submit as the page gave them (HTML form submission): an input
/// without a name is skipped, and a hidden `_charset_` gets the page's encoding for value.
/// Unknown parameters are ignored anyway (RFC 6749 3.1), so these are dropped from the
/// request before the consent page carries it.
fn browser_alters(name: &str) -> bool {
    name.is_empty() || name.eq_ignore_ascii_case("_charset_")
}

/// The consent form's CSRF purpose names the very request it shows, so its token is good
/// for that request only: a hidden field changed in the page (another client, a wider
/// scope), added or dropped makes the form invalid, and what the user approves is what
/// they saw.
fn consent_purpose(request: &Params) -> String {
    let mut pairs = request.pairs().to_vec();
    pairs.sort();
    let fields = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{CONSENT_FORM}:{fields}")
}

async fn run(
    req: &HttpRequest,
    state: &AppState,
    params: Params,
    decision: Option<Decision>,
) -> HttpResponse {
    let params = carried_request(params);
    let settings = state.settings.clone();
    let keys = state.keys.current();
    let clients = state.clients.clone();
    let cookie = session::cookie_value(req);
    let flow_params = params.clone();
    let outcome = super::run_blocking(&state.pool, move |conn| {
        let client = flow_params.get("client_id").and_then(|id| clients.get(id));
        let owner = session::resolve(conn, cookie.as_deref(), client.as_deref())?;
        // Without a session a decision cannot have come from the user.
        let decision = decision.filter(|_| owner.is_some());
        let outcome = authorize::authorize(
            conn,
            &settings,
            &clients,
            keys,
            flow_params,
            owner.clone(),
            decision,
        )?;
        Ok::<_, crate::storage::StorageError>((outcome, owner))
    })
    .await;
    let (outcome, owner) = match outcome {
        Ok(result) => result,
        Err(e) => return pages::failure_page(e),
    };
    match outcome {
        AuthorizeOutcome::Refuse(message) => pages::error_page(
            StatusCode::BAD_REQUEST,
            "This request cannot be completed",
            message,
        ),
        AuthorizeOutcome::Redirect(url) => {
            // Only a redirect carrying a code grants anything; an allowed request can still
            // end in an error redirect (invalid_scope, say), which grants nothing.
            let issued_code = || url.query_pairs().any(|(name, _)| name == "code");
            let outcome = match decision {
                Some(Decision::Allow) if issued_code() => Some("granted"),
                Some(Decision::Deny) => Some("denied"),
                _ => None,
            };
            if let (Some(outcome), Some(owner)) = (outcome, &owner) {
                AuditEvent::new(Event::Consent, outcome)
                    .user(Some(&owner.user_id))
                    .client(params.get("client_id"))
                    .ip(state.client_ip(req).as_deref())
                    .detail(format!("scope={}", params.get("scope").unwrap_or_default()))
                    .record();
            }
            pages::see_other(url.as_str())
        }
        AuthorizeOutcome::Login => {
            let return_to = format!("/authorize?{}", params.encode());
            let login = format!(
                "/login?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("return_to", &return_to)
                    .finish()
            );
            pages::see_other(&login)
        }
        AuthorizeOutcome::Consent { client, scopes } => {
            let username = owner.map(|o| o.username).unwrap_or_default();
            forms::page_with_form(req, state, &consent_purpose(&params), |csrf_token| {
                pages::html(
                    StatusCode::OK,
                    &ConsentPage {
                        client_name: &client.name,
                        username: &username,
                        scopes: scopes.iter().map(|s| ScopeView::new(s)).collect(),
                        csrf_token,
                        request_fields: params.pairs(),
                    },
                )
            })
        }
    }
}
