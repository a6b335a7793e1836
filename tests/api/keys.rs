use std::time::Duration;

use diesel::prelude::*;
use gatehouse::crypto::secret_box::SecretBox;
use gatehouse::keys::SigningKey;
use gatehouse::storage::schema::signing_keys;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    token_signed_with_the_active_key_verifies_with_only_the_jwks,
    rotation_keeps_old_tokens_verifiable,
    retired_key_leaves_the_jwks_when_its_window_passes,
    keys_survive_a_restart_and_are_sealed_at_rest,
    a_different_system_secret_refuses_to_start,
);

fn seal() -> SecretBox {
    SecretBox::new(SYSTEM_SECRET, gatehouse::keys::SEAL_PURPOSE)
}

/// Signs a token the way the server does, with the key the database says is active.
fn sign_with_active_key(db: &TestDb) -> (String, String) {
    let mut conn = db.connect();
    let row = gatehouse::storage::keys::active(&mut conn)
        .unwrap()
        .expect("an active key");
    let key = SigningKey::from_row(&row, &seal()).expect("unseal with the system secret");
    let now = gatehouse::storage::now_unix();
    let claims = json!({
        "iss": "http://127.0.0.1:8080",
        "sub": "user-1",
        "aud": ["http://127.0.0.1:8080/api"],
        "exp": now + 600,
        "iat": now,
        "jti": "jti-1",
        "client_id": "demo",
        "scope": "read",
    });
    (key.sign_access_token(&claims).unwrap(), row.kid)
}

/// What a resource server does: find the token's kid in the JWK Set and verify RS256.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, String> {
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| format!("kid {kid} not in the JWK Set"))?;
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["http://127.0.0.1:8080"]);
    validation.set_audience(&["http://127.0.0.1:8080/api"]);
    decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

fn fetch_jwks(server: &TestServer) -> Value {
    get(&server.url("/.well-known/jwks.json"), &[]).json()
}

fn token_signed_with_the_active_key_verifies_with_only_the_jwks(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let (token, kid) = sign_with_active_key(&db);

    let header = decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));

    let jwks = fetch_jwks(&server);
    let claims = verify_with_jwks(&token, &jwks).expect("verifies");
    assert_eq!(claims["sub"], "user-1");

    // The check can fail: a token with an altered payload does not verify.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = base64_url(
        &json!({"sub": "admin", "iss": "http://127.0.0.1:8080", "aud": "http://127.0.0.1:8080/api", "exp": 4102444800u64}),
    );
    parts[1] = &forged;
    assert!(verify_with_jwks(&parts.join("."), &jwks).is_err());
}

fn base64_url(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn active_kid_of(server: &TestServer) -> String {
    get(&server.url("/readyz"), &[]).json()["signing_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rotation_keeps_old_tokens_verifiable(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let (old_token, old_kid) = sign_with_active_key(&db);
    assert_eq!(active_kid_of(&server), old_kid);

    let rotate = run_cli(&db, &config, &["keys", "rotate"]);
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    let new_kid = stdout(&rotate).trim().to_owned();
    assert_ne!(new_kid, old_kid);

    // The running server notices within its refresh interval (1s in tests).
    let jwks = eventually(Duration::from_secs(15), || {
        let jwks = fetch_jwks(&server);
        (jwks["keys"].as_array().unwrap().len() == 2).then_some(jwks)
    })
    .expect("the JWK Set publishes the new key beside the old one");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    assert!(
        eventually(Duration::from_secs(15), || (active_kid_of(&server)
            == new_kid)
            .then_some(()))
        .is_some(),
        "the server signs with the new key"
    );

    verify_with_jwks(&old_token, &jwks).expect("a token signed before the rotation still verifies");
    let (new_token, signed_by) = sign_with_active_key(&db);
    assert_eq!(signed_by, new_kid);
    verify_with_jwks(&new_token, &jwks).expect("a token signed after the rotation verifies");

    let list = run_cli(&db, &config, &["keys", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let listing = stdout(&list);
    let line_of = |kid: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line_of(&new_kid).contains("active"), "{listing}");
    assert!(line_of(&old_kid).contains("retired"), "{listing}");
}

fn retired_key_leaves_the_jwks_when_its_window_passes(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let server = TestServer::start(&db, &config);
    let (_, old_kid) = sign_with_active_key(&db);
    let rotate = run_cli(&db, &config, &["keys", "rotate"]);
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    eventually(Duration::from_secs(15), || {
        (fetch_jwks(&server)["keys"].as_array().unwrap().len() == 2).then_some(())
    })
    .expect("both keys published");

    // Move the retired key's window into the past, as time would.
    let mut conn = db.connect();
    diesel::update(signing_keys::table.find(&old_kid))
        .set(signing_keys::publish_until.eq(gatehouse::storage::now_unix() - 1))
        .execute(&mut conn)
        .unwrap();

    let jwks = eventually(Duration::from_secs(15), || {
        let jwks = fetch_jwks(&server);
        (jwks["keys"].as_array().unwrap().len() == 1).then_some(jwks)
    })
    .expect("the expired key is dropped");
    assert_ne!(jwks["keys"][0]["kid"], old_kid.as_str());
    let list = stdout(&run_cli(&db, &config, &["keys", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with(&old_kid) && l.contains("expired")),
        "{list}"
    );
}

fn keys_survive_a_restart_and_are_sealed_at_rest(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    let first_kid = {
        let server = TestServer::start(&db, &config);
        fetch_jwks(&server)["keys"][0]["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let server = TestServer::start(&db, &config);
    let jwks = fetch_jwks(&server);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        jwks["keys"][0]["kid"],
        first_kid.as_str(),
        "the restart reuses the stored key"
    );

    let mut conn = db.connect();
    let row = gatehouse::storage::keys::find(&mut conn, &first_kid)
        .unwrap()
        .unwrap();
    // A plaintext PKCS#8 key contains the modulus verbatim; the sealed one must not.
    use base64::Engine;
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&row.public_n)
        .unwrap();
    assert!(!row
        .encrypted_private_key
        .windows(32)
        .any(|w| w == &modulus[..32]));
    assert!(SigningKey::from_row(&row, &seal()).is_ok());
    let wrong = SecretBox::new(
        "some-other-system-secret-0123456789abcdef",
        gatehouse::keys::SEAL_PURPOSE,
    );
    assert!(SigningKey::from_row(&row, &wrong).is_err());
}

fn a_different_system_secret_refuses_to_start(db: TestDb) {
    let config = write_config(&db, "gatehouse.toml", "");
    drop(TestServer::start(&db, &config));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        SYSTEM_SECRET,
        "another-secret-that-is-long-enough-0123456789",
    );
    std::fs::write(&config, text).unwrap();
    let error = TestServer::try_start(&db, &config)
        .err()
        .expect("start must fail");
    assert!(error.contains("secrets.system"), "{error}");
}
