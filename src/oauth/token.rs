//! The token endpoint's logic (RFC 6749 3.2, 4.1.3, 5): parameters checked, client
//! credentials normalised, the grant run through oxide-auth, and the answer made RFC-exact.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use oxide_auth::endpoint::{AccessTokenFlow, RefreshFlow};
use oxide_auth_actix::{OAuthResponse, WebError};
use serde_json::{json, Map, Value};

use super::client::{Client, ClientRegistry};
use super::context::{FlowContext, Notes};
use super::endpoint::GatehouseEndpoint;
use super::issuer::DbIssuer;
use super::registrar::DbRegistrar;
use super::request::{FlowRequest, Params};
use crate::config::GrantType;
use crate::config::Settings;
use crate::keys::KeyState;
use crate::storage::{DbConnection, StorageError};
use oxide_auth::endpoint::{Issuer, Registrar};
use oxide_auth::primitives::grant::Grant;
use oxide_auth::primitives::registrar::RegistrarError;

/// A token endpoint answer: status and JSON body. `Cache-Control: no-store` and
/// `Pragma: no-cache` are added by the HTTP layer to every one of them.
#[derive(Debug)]
pub struct TokenAnswer {
    pub status: u16,
    pub body: Value,
    /// The user the tokens were issued to, for the audit trail; `None` for errors and for
    /// client_credentials, whose subject is the client.
    pub subject: Option<String>,
}

impl TokenAnswer {
    /// A 200 answer issued to no user (client_credentials, /introspect, /revoke), or one
    /// whose `subject` the caller sets.
    pub fn ok(body: Value) -> TokenAnswer {
        TokenAnswer {
            status: 200,
            body,
            subject: None,
        }
    }

    pub fn error(status: u16, error: &str, description: &str) -> TokenAnswer {
        TokenAnswer {
            status,
            body: json!({"error": error, "error_description": description}),
            subject: None,
        }
    }

    fn invalid_request(description: &str) -> TokenAnswer {
        TokenAnswer::error(400, "invalid_request", description)
    }

    pub fn invalid_client() -> TokenAnswer {
        TokenAnswer::error(401, "invalid_client", "client authentication failed")
    }
}

/// Client credentials from a Basic header, form-urldecoded as RFC 6749 2.3.1 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub client_id: String,
    pub secret: String,
}

impl BasicCredentials {
    /// `Ok(None)` without a Basic header; `Err` for one that cannot be read.
    pub(crate) fn from_header(header: Option<&str>) -> Result<Option<BasicCredentials>, ()> {
        let Some(header) = header else {
            return Ok(None);
        };
        let Some((scheme, encoded)) = header.split_once(' ') else {
            return Err(());
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(());
        }
        let decoded = STANDARD.decode(encoded.trim()).map_err(|_| ())?;
        let decoded = String::from_utf8(decoded).map_err(|_| ())?;
        let (id, secret) = decoded.split_once(':').ok_or(())?;
        let decode = |s: &str| -> Result<String, ()> {
            let plus_as_space = s.replace('+', " ");
            percent_decode(&plus_as_space)
        };
        let client_id = decode(id)?;
        if client_id.is_empty() || client_id.contains(':') {
            return Err(());
        }
        Ok(Some(BasicCredentials {
            client_id,
            secret: decode(secret)?,
        }))
    }

    /// The header oxide-auth reads: it splits on the first ':' and does not decode.
    fn to_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.client_id, self.secret))
        )
    }
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(
        format!("x={}", s.replace('&', "%26").replace('=', "%3D")).as_bytes(),
    )
    .next()
    .map(|(_, v)| v.into_owned().into_bytes())
    .unwrap_or_default();
    String::from_utf8(bytes).map_err(|_| ())
}

/// A token request whose parameters and client credentials are well-formed.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    body: Params,
    basic: Option<BasicCredentials>,
}

impl TokenRequest {
    /// Checks what needs no database: repeated parameters, the Authorization header, and
    /// that the client used one authentication method.
    pub fn parse(
        mut body: Params,
        authorization: Option<&str>,
    ) -> Result<TokenRequest, TokenAnswer> {
        if let Some(repeated) = body.first_repeated() {
            return Err(TokenAnswer::invalid_request(&format!(
                "parameter {repeated} was sent more than once"
            )));
        }
        let basic = BasicCredentials::from_header(authorization)
            .map_err(|()| TokenAnswer::invalid_client())?;
        if let Some(basic) = &basic {
            if body.get("client_secret").is_some() {
                return Err(TokenAnswer::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
            match body.get("client_id") {
                Some(id) if id != basic.client_id => {
                    return Err(TokenAnswer::invalid_request(
                        "client_id differs from the authenticated client",
                    ))
                }
                Some(_) => body = body.without(&["client_id"]),
                None => {}
            }
        }
        Ok(TokenRequest { body, basic })
    }

    /// A body parameter sent exactly once.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.body.get(name)
    }

    /// For the password grant, the username and password to verify.
    pub fn password_credentials(&self) -> Option<(&str, &str)> {
        if self.body.get("grant_type") != Some("password") {
            return None;
        }
        self.body.get("username").zip(self.body.get("password"))
    }

    /// The client this request says it comes from, authenticated or not.
    pub fn claimed_client_id(&self) -> Option<&str> {
        match &self.basic {
            Some(basic) => Some(&basic.client_id),
            None => self.body.get("client_id"),
        }
    }

    /// The client id and secret presented, by Basic or in the body.
    pub fn client_secret(&self) -> Option<(&str, &str)> {
        match &self.basic {
            Some(basic) => Some((&basic.client_id, &basic.secret)),
            None => self
                .body
                .get("client_id")
                .zip(self.body.get("client_secret")),
        }
    }
}

/// What the HTTP layer verified before the grant runs, each with no database connection
/// held while argon2 ran.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// The client whose secret, `request.client_secret()`, was verified.
    pub client: Option<Arc<Client>>,
    /// Without a secret: the registered public client the request named, if any.
    pub public_client: Option<Arc<Client>>,
    /// For the password grant: the outcome of checking `request.password_credentials()`.
    pub user: Option<UserCheck>,
    /// The caller's address, for the audit trail.
    pub client_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCheck {
    /// Unknown user, wrong password or disabled user: the same answer for all three.
    Failed,
    Passed {
        user_id: String,
    },
}

/// The client the caller authenticated, with the secret it presented.
struct Authenticated {
    secret: Option<(String, String)>,
    client: Option<Arc<Client>>,
    client_ip: Option<String>,
}

/// What every grant runs with.
struct GrantRun<'r> {
    conn: &'r mut DbConnection,
    settings: &'r Settings,
    clients: &'r ClientRegistry,
    keys: Arc<KeyState>,
    auth: Authenticated,
}

impl GrantRun<'_> {
    /// A flow context that already knows the authenticated client, so neither the
    /// registrar nor the grant reads it or verifies its secret again.
    fn context(&mut self) -> FlowContext<'_> {
        let mut ctx = FlowContext::new(self.conn, self.settings, self.clients, self.keys.clone());
        ctx.verified_secret = self.auth.secret.clone();
        ctx.client_ip = self.auth.client_ip.clone();
        ctx.notes.borrow_mut().client = self.auth.client.clone();
        ctx
    }
}

/// Runs the grant with what the caller verified beforehand.
pub fn token(
    conn: &mut DbConnection,
    settings: &Settings,
    clients: &ClientRegistry,
    keys: Arc<KeyState>,
    request: TokenRequest,
    verified: Verified,
) -> Result<TokenAnswer, StorageError> {
    let auth = Authenticated {
        secret: verified
            .client
            .as_ref()
            .zip(request.client_secret())
            .map(|(client, (_, secret))| (client.id.clone(), secret.to_owned())),
        client: verified.client,
        client_ip: verified.client_ip,
    };
    let grant = GrantRun {
        conn,
        settings,
        clients,
        keys,
        auth,
    };
    // RFC 6749 5.2: an authenticated client that may not use the grant is told so before
    // anything else about the request is judged (a code or refresh token it presents, say).
    let grant_type = request.body.get("grant_type");
    if let (Some(client), Some(grant_type)) = (
        grant.auth.client.as_deref(),
        grant_type.and_then(GrantType::parse),
    ) {
        if !client.allows(grant_type) {
            return Ok(unauthorized_client(grant_type));
        }
    }
    // RFC 6749 4.1.3 and 5.2: a code is redeemed by an authenticated client or by a public
    // client naming itself; a request from neither fails client authentication whatever
    // else it lacks (oxide-auth would judge a missing redirect_uri first).
    if grant_type == Some("authorization_code")
        && grant.auth.client.is_none()
        && verified.public_client.is_none()
    {
        return Ok(TokenAnswer::invalid_client());
    }
    match grant_type {
        None => Ok(TokenAnswer::invalid_request("grant_type is required")),
        Some("authorization_code") => authorization_code(grant, request.body, request.basic),
        Some("refresh_token") => refresh_token(grant, request.body, request.basic),
        Some("password") => password(grant, &request, verified.user),
        Some("client_credentials") => client_credentials(
            settings,
            &grant.keys,
            grant.auth.client.as_deref(),
            &request,
        ),
        Some(_) => Ok(TokenAnswer::error(
            400,
            "unsupported_grant_type",
            "this server does not support that grant_type",
        )),
    }
}

fn authorization_code(
    mut grant: GrantRun<'_>,
    mut body: Params,
    basic: Option<BasicCredentials>,
) -> Result<TokenAnswer, StorageError> {
    // RFC 6749 4.1.3: redirect_uri is required only if the authorization request had one;
    // oxide-auth always requires it, so supply the bound one when it was not sent. The code
    // opened for that is handed to `extract`, which would otherwise open it again.
    let mut opened = None;
    if body.get("redirect_uri").is_none() {
        if let Some(code) = body.get("code").map(str::to_owned) {
            if let Some(row) = super::sealed_code::open(&grant.keys.codes, &code) {
                if !row.redirect_uri_sent {
                    body = body.with("redirect_uri", &row.redirect_uri);
                }
                opened = Some((code, row));
            }
        }
    }
    let ctx = grant.context();
    ctx.notes.borrow_mut().opened_code = opened;
    let request = FlowRequest::new(
        Params::default(),
        body,
        basic.as_ref().map(BasicCredentials::to_header),
    );
    let result = AccessTokenFlow::prepare(GatehouseEndpoint::new(&ctx)).and_then(|mut flow| {
        flow.allow_credentials_in_body(true);
        flow.execute(request)
    });
    finish(&ctx, result)
}

/// RFC 6749 6 through oxide-auth's refresh flow. That flow reads client credentials only
/// from a Basic header, so credentials sent in the body are moved there first; a public
/// client's `client_id` is checked against the token's client by the issuer.
fn refresh_token(
    mut grant: GrantRun<'_>,
    body: Params,
    basic: Option<BasicCredentials>,
) -> Result<TokenAnswer, StorageError> {
    let posted = match (body.get("client_id"), body.get("client_secret")) {
        (Some(client_id), Some(secret)) if basic.is_none() => Some(BasicCredentials {
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
        }),
        _ => None,
    };
    // A blank scope is no scope, as everywhere else (`Client::negotiate_scope`): the new
    // tokens keep the grant's scope (RFC 6749 6), where oxide-auth would narrow it to none.
    let body = if body.get("scope").is_some_and(|s| s.trim().is_empty()) {
        body.without(&["scope"])
    } else {
        body
    };
    let mut ctx = grant.context();
    ctx.rotate_on_recovery = body.get("scope").is_none();
    let (basic, body) = match posted {
        Some(posted) => (Some(posted), body.without(&["client_id", "client_secret"])),
        None => {
            ctx.claimed_client = body.get("client_id").map(str::to_owned);
            (basic, body)
        }
    };
    let request = FlowRequest::new(
        Params::default(),
        body,
        basic.as_ref().map(BasicCredentials::to_header),
    );
    let result = RefreshFlow::prepare(GatehouseEndpoint::new(&ctx))
        .and_then(|mut flow| flow.execute(request));
    finish(&ctx, result)
}

/// RFC 6749 4.3, on oxide-auth's primitives: only for authenticated clients whose
/// grant_types list `password`; the user was verified by the caller (unknown users cost a
/// dummy verification, so body and timing match a wrong password).
fn password(
    mut grant: GrantRun<'_>,
    request: &TokenRequest,
    user: Option<UserCheck>,
) -> Result<TokenAnswer, StorageError> {
    let (Some(client), Some((_, secret))) = (grant.auth.client.clone(), request.client_secret())
    else {
        return Ok(TokenAnswer::invalid_client());
    };
    let mut ctx = grant.context();
    ctx.grant_type = GrantType::Password;
    // The client check goes through the Registrar, as in every oxide-auth flow (free here:
    // the secret was verified before the grant ran).
    match (DbRegistrar { ctx: &ctx }).check(&client.id, Some(secret.as_bytes())) {
        Ok(()) => {}
        Err(RegistrarError::Unspecified) => return Ok(TokenAnswer::invalid_client()),
        Err(_) => return Err(failure_of(&ctx)),
    }
    let user_id = match user {
        None => {
            return Ok(TokenAnswer::invalid_request(
                "username and password are required",
            ))
        }
        Some(UserCheck::Failed) => {
            return Ok(TokenAnswer::error(
                400,
                "invalid_grant",
                "invalid username or password",
            ))
        }
        Some(UserCheck::Passed { user_id }) => user_id,
    };
    let Some(scope) = client.negotiate_scope(request.body.get("scope")) else {
        return Ok(TokenAnswer::error(
            400,
            "invalid_scope",
            "the requested scope is not allowed for this client",
        ));
    };
    // Tokens come from the Issuer, which records the grant as a family of its own.
    let oauth_grant = Grant {
        owner_id: user_id,
        client_id: client.id.clone(),
        scope: super::scope::parse(&scope).ok_or_else(|| StorageError::Corrupt("scope".into()))?,
        redirect_uri: url::Url::parse(&ctx.settings.issuer)
            .map_err(|_| StorageError::Corrupt("issuer".into()))?,
        until: chrono::Utc::now(),
        extensions: Default::default(),
    };
    let issued = (DbIssuer { ctx: &ctx })
        .issue(oauth_grant)
        .map_err(|()| failure_of(&ctx))?;
    let mut body = json!({
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": ctx.settings.tokens.access_ttl.as_secs(),
        "scope": scope,
    });
    if let Some(refresh) = issued.refresh {
        body["refresh_token"] = Value::String(refresh);
    }
    Ok(TokenAnswer {
        // The issuer noted whom it issued to, as in the flows oxide-auth runs.
        subject: ctx.take_notes().issued_to,
        ..TokenAnswer::ok(body)
    })
}

fn failure_of(ctx: &FlowContext<'_>) -> StorageError {
    ctx.take_notes()
        .failure
        .unwrap_or_else(|| StorageError::Corrupt("an OAuth primitive failed".into()))
}

/// RFC 6749 4.4, on oxide-auth's primitives: the client authenticated with its secret
/// (public clients cannot use this grant), its scope negotiated by the same rules as every
/// grant. oxide-auth's own client-credentials flow insists on binding a redirect URI and
/// answers unknown clients with a 500, so it is not used. Nothing is read or written: the
/// cost is one RSA signature, so the HTTP layer may run this without a database connection.
pub fn client_credentials(
    settings: &Settings,
    keys: &KeyState,
    client: Option<&Client>,
    request: &TokenRequest,
) -> Result<TokenAnswer, StorageError> {
    let Some(client) = client else {
        return Ok(TokenAnswer::invalid_client());
    };
    if !client.allows(GrantType::ClientCredentials) {
        // HTTP calls this directly, without `token`'s check.
        return Ok(unauthorized_client(GrantType::ClientCredentials));
    }
    let Some(scope) = client.negotiate_scope(request.body.get("scope")) else {
        return Ok(TokenAnswer::error(
            400,
            "invalid_scope",
            "the requested scope is not allowed for this client",
        ));
    };
    let minted = match super::tokens::issue_for_client(settings, keys, client, &scope) {
        Ok(minted) => minted,
        Err(super::tokens::MintError::Storage(e)) => return Err(e),
        Err(e) => return Err(StorageError::Corrupt(e.to_string())),
    };
    Ok(TokenAnswer::ok(json!({
        "access_token": minted.access_token,
        "token_type": "Bearer",
        "expires_in": settings.tokens.access_ttl.as_secs(),
        "scope": scope,
    })))
}

fn unauthorized_client(grant_type: GrantType) -> TokenAnswer {
    TokenAnswer::error(
        400,
        "unauthorized_client",
        &format!("this client may not use the {} grant", grant_type.as_str()),
    )
}

/// Turns a flow's outcome and the notes its primitives left into the answer.
fn finish(
    ctx: &FlowContext<'_>,
    result: Result<OAuthResponse, WebError>,
) -> Result<TokenAnswer, StorageError> {
    let mut notes = ctx.take_notes();
    let unused_code = notes.redeemed_code.take();
    let answer = answer_of(ctx, result, notes);
    let issued = matches!(&answer, Ok(answer) if answer.status == 200);
    // A transient failure (503: the database locked or unreachable) invites a retry with
    // the same code, so it must not spend it; anything else that issued nothing does.
    let retry_invited = matches!(&answer, Err(e) if e.is_transient());
    if let Some(code) = unused_code.filter(|_| !issued && !retry_invited) {
        // The answer stands either way: a code that cannot be spent now is refused later
        // by its expiry.
        if let Err(error) = super::authorizer::spend_unused_code(ctx, &code) {
            tracing::warn!(%error, "cannot spend an authorization code after a failed exchange");
        }
    }
    answer
}

fn answer_of(
    ctx: &FlowContext<'_>,
    result: Result<OAuthResponse, WebError>,
    notes: Notes,
) -> Result<TokenAnswer, StorageError> {
    if let Some(failure) = notes.failure {
        return Err(failure);
    }
    if notes.unauthenticated {
        return Ok(TokenAnswer::invalid_client());
    }
    let response = match (result, notes.invalid_grant) {
        (Ok(response), _) => response,
        // A primitive refused (e.g. a refresh token rotated concurrently) and said why.
        (Err(_), Some(description)) => {
            return Ok(TokenAnswer::error(400, "invalid_grant", description))
        }
        (Err(e), None) => return Err(StorageError::Corrupt(format!("token flow failed: {e:?}"))),
    };
    let raw: Value = response
        .get_body()
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    let mut answer = rfc_answer(
        raw,
        notes.invalid_grant,
        ctx.settings.tokens.access_ttl.as_secs(),
    );
    if answer.status == 200 {
        answer.subject = notes.issued_to;
    }
    Ok(answer)
}

/// oxide-auth's JSON made RFC 6749-exact: `error_description` (not `description`),
/// `token_type: "Bearer"`, `expires_in` exactly the token's lifetime (oxide-auth measures it
/// against a later clock reading), and `invalid_grant` where RFC 6749 5.2 and RFC 7636 4.6
/// want it.
fn rfc_answer(raw: Value, invalid_grant: Option<&str>, access_ttl_secs: u64) -> TokenAnswer {
    let Value::Object(mut fields) = raw else {
        return TokenAnswer::error(
            500,
            "server_error",
            "unexpected response from the token flow",
        );
    };
    if let Some(error) = fields
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        if let Some(description) = invalid_grant.filter(|_| error != "invalid_client") {
            return TokenAnswer::error(400, "invalid_grant", description);
        }
        return match error.as_str() {
            "invalid_client" => TokenAnswer::invalid_client(),
            _ => {
                let description = fields
                    .remove("description")
                    .and_then(|d| d.as_str().map(str::to_owned))
                    .unwrap_or_else(|| default_description(&error).to_owned());
                TokenAnswer::error(400, &error, &description)
            }
        };
    }
    let mut body = Map::new();
    for key in [
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
    ] {
        if let Some(value) = fields.remove(key) {
            body.insert(key.to_owned(), value);
        }
    }
    body.insert("token_type".to_owned(), Value::String("Bearer".to_owned()));
    body.insert("expires_in".to_owned(), Value::from(access_ttl_secs));
    // oxide-auth prints scopes in hash-set order; the JWT and the database use sorted order.
    if let Some(Value::String(scope)) = body.get("scope") {
        let sorted = super::scope::normalize(scope.split(' '));
        body.insert("scope".to_owned(), Value::String(sorted));
    }
    TokenAnswer::ok(Value::Object(body))
}

fn default_description(error: &str) -> &'static str {
    match error {
        "invalid_request" => "the request is missing a required parameter or is malformed",
        "invalid_grant" => "the authorization grant is invalid, expired or revoked",
        "unsupported_grant_type" => "this server does not support that grant_type",
        "invalid_scope" => "the requested scope is not allowed",
        "unauthorized_client" => "this client may not use that grant_type",
        _ => "the request failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urldecoded() {
        let header = format!("Basic {}", STANDARD.encode("my%20app:p%40ss+word"));
        let creds = BasicCredentials::from_header(Some(&header))
            .unwrap()
            .unwrap();
        assert_eq!(creds.client_id, "my app");
        assert_eq!(creds.secret, "p@ss word");
        assert_eq!(BasicCredentials::from_header(None), Ok(None));
        assert!(BasicCredentials::from_header(Some("Basic !!!")).is_err());
        assert!(BasicCredentials::from_header(Some("Bearer abc")).is_err());
        assert!(BasicCredentials::from_header(Some(&format!(
            "Basic {}",
            STANDARD.encode("nocolon")
        )))
        .is_err());
    }

    #[test]
    fn oxide_answers_become_rfc_answers() {
        let raw = json!({"access_token": "a", "token_type": "bearer", "expires_in": 898, "scope": "write read"});
        let ok = rfc_answer(raw, None, 900);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body["token_type"], "Bearer");
        assert_eq!(ok.body["scope"], "read write");
        assert_eq!(ok.body["expires_in"], 900);
        let used = Some("the authorization code was already used");
        let replay = rfc_answer(json!({"error": "invalid_request"}), used, 900);
        assert_eq!(replay.status, 400);
        assert_eq!(replay.body["error"], "invalid_grant");
        let client = rfc_answer(json!({"error": "invalid_client"}), Some("ignored"), 900);
        assert_eq!(client.status, 401);
        let raw = json!({"error": "invalid_request", "description": "x"});
        let described = rfc_answer(raw, None, 900);
        assert_eq!(described.body["error_description"], "x");
        assert!(described.body.get("description").is_none());
    }
}
