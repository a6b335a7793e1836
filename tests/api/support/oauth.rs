//! An authorization server with a known set of clients and a user, and the steps of the
//! authorization-code flow as a browser and a client would take them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::*;

pub const USERNAME: &str = "alice";
pub const PASSWORD: &str = "correct horse battery";
pub const WEBAPP: &str = "webapp";
pub const WEBAPP_SECRET: &str = "webapp-secret-0123456789";
pub const WEBAPP_REDIRECT: &str = "https://app.example.com/callback";
pub const SPA: &str = "spa";
pub const SPA_REDIRECT: &str = "http://127.0.0.1/callback";
pub const FIRST_PARTY: &str = "console";
pub const FIRST_PARTY_REDIRECT: &str = "https://console.example.com/cb";
pub const OTHER: &str = "other";
pub const OTHER_SECRET: &str = "other-secret-0123456789";
pub const AUDIENCE: &str = "https://api.example.com";
pub const SERVICE: &str = "service";
pub const SERVICE_SECRET: &str = OTHER_SECRET;
pub const SERVICE_AUDIENCE: &str = "https://service.example.com";
pub const LEGACY: &str = "legacy";
pub const LEGACY_SECRET: &str = OTHER_SECRET;

fn secret_hash(secret: &'static str, cell: &'static OnceLock<String>) -> &'static str {
    cell.get_or_init(|| gatehouse::crypto::password::hash(secret))
}

/// `tokens_extra` adds lines to the `[tokens]` table.
pub fn clients_toml(tokens_extra: &str) -> String {
    static WEBAPP_HASH: OnceLock<String> = OnceLock::new();
    static OTHER_HASH: OnceLock<String> = OnceLock::new();
    format!(
        r#"
[tokens]
audience = ["{AUDIENCE}"]
{tokens_extra}

[[clients]]
id = "{WEBAPP}"
name = "Example Web App"
secret_hash = "{webapp_hash}"
redirect_uris = ["{WEBAPP_REDIRECT}", "https://app.example.com/other"]
grant_types = ["authorization_code", "refresh_token"]
scopes = ["openid", "profile", "read", "write"]
default_scopes = ["read"]

[[clients]]
id = "{SPA}"
name = "Single Page App"
redirect_uris = ["{SPA_REDIRECT}"]
grant_types = ["authorization_code"]
scopes = ["read"]
default_scopes = ["read"]

[[clients]]
id = "{FIRST_PARTY}"
name = "Admin Console"
secret_hash = "{other_hash}"
redirect_uris = ["{FIRST_PARTY_REDIRECT}"]
grant_types = ["authorization_code"]
scopes = ["read"]
default_scopes = ["read"]
skip_consent = true

[[clients]]
id = "{SERVICE}"
name = "Batch Service"
secret_hash = "{other_hash}"
grant_types = ["client_credentials"]
scopes = ["read", "write"]
default_scopes = ["read"]
audience = ["{SERVICE_AUDIENCE}"]

[[clients]]
id = "{LEGACY}"
name = "Legacy App"
secret_hash = "{other_hash}"
grant_types = ["password", "refresh_token"]
scopes = ["read", "write"]
default_scopes = ["read"]

[[clients]]
id = "{OTHER}"
name = "Another App"
secret_hash = "{other_hash}"
redirect_uris = ["https://other.example.com/cb"]
grant_types = ["authorization_code"]
scopes = ["read"]
default_scopes = ["read"]
"#,
        webapp_hash = secret_hash(WEBAPP_SECRET, &WEBAPP_HASH),
        other_hash = secret_hash(OTHER_SECRET, &OTHER_HASH),
    )
}

/// A running server with the clients above and the user alice.
pub struct OAuthServer {
    /// Shared by every instance started on it; dropped with the last one.
    pub db: Arc<TestDb>,
    pub server: TestServer,
    pub user_id: String,
    pub config: PathBuf,
}

impl OAuthServer {
    pub fn start(db: TestDb) -> OAuthServer {
        OAuthServer::start_with(db, "")
    }

    /// `tokens_extra` adds lines to the `[tokens]` table, e.g. `code_ttl = "1s"`.
    pub fn start_with(db: TestDb, tokens_extra: &str) -> OAuthServer {
        OAuthServer::start_configured(db, tokens_extra, "")
    }

    /// `sections` is TOML placed before the clients, e.g. a `[limits]` table.
    pub fn start_configured(db: TestDb, tokens_extra: &str, sections: &str) -> OAuthServer {
        OAuthServer::start_full(db, "", tokens_extra, sections)
    }

    /// `server` adds lines to the `[server]` table (see `write_config_with`).
    pub fn start_full(db: TestDb, server: &str, tokens_extra: &str, sections: &str) -> OAuthServer {
        OAuthServer::start_with_options(
            db,
            server,
            tokens_extra,
            sections,
            "info,gatehouse=debug",
            &[],
        )
    }

    /// `start_configured` with a `log.level` filter and extra environment variables.
    pub fn start_logging(
        db: TestDb,
        tokens_extra: &str,
        sections: &str,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> OAuthServer {
        OAuthServer::start_with_options(db, "", tokens_extra, sections, log_level, env)
    }

    fn start_with_options(
        db: TestDb,
        server: &str,
        tokens_extra: &str,
        sections: &str,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> OAuthServer {
        let config = write_config_full(
            &db,
            "gatehouse.toml",
            server,
            log_level,
            &format!("{sections}\n{}", clients_toml(tokens_extra)),
        );
        let server = TestServer::start_with_env(&db, &config, env);
        let user = gatehouse::accounts::add_user(&mut db.connect(), USERNAME, PASSWORD)
            .expect("create alice");
        OAuthServer {
            db: Arc::new(db),
            server,
            user_id: user.id,
            config,
        }
    }

    /// A second `gatehouse serve` on the same database, with the same configuration.
    pub fn another_instance(&self) -> OAuthServer {
        self.another_instance_with_env(&[])
    }

    /// `another_instance`, with extra environment variables.
    pub fn another_instance_with_env(&self, env: &[(&str, &str)]) -> OAuthServer {
        OAuthServer {
            db: Arc::clone(&self.db),
            server: TestServer::start_with_env(&self.db, &self.config, env),
            user_id: self.user_id.clone(),
            config: self.config.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn authorize_url(&self, params: &[(&str, &str)]) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        self.url(&format!("/authorize?{query}"))
    }

    /// Signs alice in through the login form the authorization request led to.
    pub fn login(&self, browser: &mut Browser, login_redirect: &Response) -> Response {
        assert_eq!(
            login_redirect.status, 303,
            "expected a redirect to /login: {}",
            login_redirect.body
        );
        let location = login_redirect.header("location").unwrap().to_owned();
        assert!(location.starts_with("/login?"), "{location}");
        let page = browser.get(&self.url(&location));
        assert_eq!(page.status, 200);
        let csrf = hidden_field(&page.body, "csrf_token").expect("csrf_token");
        let return_to = hidden_field(&page.body, "return_to").expect("return_to");
        browser.post_form(
            &self.url("/login"),
            &[
                ("username", USERNAME),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
                ("return_to", &return_to),
            ],
        )
    }

    /// Posts the consent form shown in `page` with `decision`.
    pub fn decide(&self, browser: &mut Browser, page: &Response, decision: &str) -> Response {
        assert_eq!(page.status, 200, "expected the consent page: {}", page.body);
        let fields = hidden_fields(&page.body);
        let mut form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        form.push(("decision", decision));
        browser.post_form(&self.url("/consent"), &form)
    }

    /// authorize -> login -> consent (allow) -> the redirect back to the client.
    pub fn authorize_with_consent(
        &self,
        browser: &mut Browser,
        params: &[(&str, &str)],
    ) -> url::Url {
        let first = browser.get(&self.authorize_url(params));
        let after_login = if first
            .header("location")
            .is_some_and(|l| l.starts_with("/login?"))
        {
            self.login(browser, &first)
        } else {
            first
        };
        let next = match after_login.header("location") {
            Some(location) if location.starts_with("/authorize?") => {
                browser.get(&self.url(location))
            }
            _ => after_login,
        };
        let redirect = if next.status == 200 {
            self.decide(browser, &next, "allow")
        } else {
            next
        };
        assert_eq!(
            redirect.status, 303,
            "expected the redirect to the client: {}",
            redirect.body
        );
        url::Url::parse(redirect.header("location").unwrap()).expect("absolute client redirect")
    }

    /// POST /token with a form and optional Basic credentials.
    pub fn token(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Response {
        self.post_form("/token", form, basic)
    }

    /// POST a urlencoded form to `path` with optional Basic credentials.
    pub fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let mut request = http()
            .post(&self.url(path))
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            request = request.header("Authorization", basic_auth(id, secret));
        }
        Response::from_ureq(
            request
                .send(body.as_bytes())
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
    }
}

impl OAuthServer {
    /// What a resource server (the service client) learns from /introspect about `token`.
    pub fn introspect(&self, token: &str) -> serde_json::Value {
        self.introspect_as(token, (SERVICE, SERVICE_SECRET))
    }

    /// /introspect's answer to `client` (id and secret).
    pub fn introspect_as(&self, token: &str, client: (&str, &str)) -> serde_json::Value {
        let response = self.post_form("/introspect", &[("token", token)], Some(client));
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header("cache-control"), Some("no-store"));
        response.json()
    }

    /// Introspections of an access token this server answered from memory so far.
    pub fn introspections_from_memory(&self) -> f64 {
        let scraped = get(&self.url("/metrics"), &[]);
        super::sample(&scraped.body, "gatehouse_introspections_from_memory_total")
            .unwrap_or_else(|| panic!("no introspection counter in\n{}", scraped.body))
    }

    /// A copy of this server's configuration without the client `id`, for another server.
    pub fn config_without_client(&self, id: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let kept: Vec<&str> = text
            .split("[[clients]]")
            .filter(|block| !block.contains(&format!("id = \"{id}\"")))
            .collect();
        assert_eq!(kept.len() + 1, text.split("[[clients]]").count());
        let config = self.config.with_file_name(format!("without-{id}.toml"));
        std::fs::write(&config, kept.join("[[clients]]")).unwrap();
        config
    }

    /// Token families not revoked.
    pub fn live_families(&self) -> i64 {
        use diesel::prelude::*;
        use gatehouse::storage::schema::token_families;
        token_families::table
            .filter(token_families::revoked_at.is_null())
            .count()
            .get_result(&mut self.db.connect())
            .unwrap()
    }

    /// The token response of a complete authorization-code flow for webapp and alice.
    pub fn webapp_tokens(&self, scope: &str) -> serde_json::Value {
        let mut browser = Browser::new();
        let p = pkce();
        let redirect = self.authorize_with_consent(
            &mut browser,
            &[
                ("response_type", "code"),
                ("client_id", WEBAPP),
                ("redirect_uri", WEBAPP_REDIRECT),
                ("scope", scope),
                ("code_challenge", &p.challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        let code = query_value(&redirect, "code").expect("a code");
        let response = self.redeem_webapp_code(&code, &p.verifier);
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }

    /// Redeems a code webapp received for WEBAPP_REDIRECT, with Basic credentials.
    pub fn redeem_webapp_code(&self, code: &str, verifier: &str) -> Response {
        self.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", WEBAPP_REDIRECT),
                ("code_verifier", verifier),
            ],
            Some((WEBAPP, WEBAPP_SECRET)),
        )
    }

    /// Submits the sign-in form directly (no pending authorization request).
    pub fn sign_in(&self, browser: &mut Browser, username: &str, password: &str) -> Response {
        let page = browser.get(&self.url("/login"));
        let csrf = hidden_field(&page.body, "csrf_token").expect("csrf_token");
        browser.post_form(
            &self.url("/login"),
            &[
                ("username", username),
                ("password", password),
                ("csrf_token", &csrf),
                ("return_to", ""),
            ],
        )
    }

    /// POST /token with grant_type=refresh_token as webapp (Basic).
    pub fn refresh(&self, refresh_token: &str, scope: Option<&str>) -> Response {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.token(&form, Some((WEBAPP, WEBAPP_SECRET)))
    }
}

/// An `Authorization: Basic` value for `id` and `secret`.
pub fn basic_auth(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        + &URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let challenge = gatehouse::oauth::pkce::s256(&verifier);
    Pkce {
        verifier,
        challenge,
    }
}

pub fn query_value(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}
