use diesel::prelude::*;
use gatehouse::storage::schema::{access_tokens, token_families};
use serde_json::Value;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    a_refresh_token_is_bound_to_its_client,
    scope_may_narrow_but_not_widen,
    concurrent_refreshes_cannot_both_succeed,
    idle_lifetime_is_enforced,
    absolute_lifetime_is_enforced,
    a_forged_token_naming_a_live_family_revokes_nothing,
    a_refresh_token_of_the_earlier_format_still_rotates,
);

fn refresh_of(body: &Value) -> String {
    body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned()
}

/// A refresh token names its family, and an access token's `jti` names it too, so anyone who
/// saw an access token could make a token of the family's id claiming an older generation.
/// Were that taken for a rotated token presented again, it would revoke the family. The
/// token's tag tells it apart: every such token is refused as unknown, and nothing changes.
fn a_forged_token_naming_a_live_family_revokes_nothing(db: TestDb) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    let app = OAuthServer::start(db);
    let token = refresh_of(&app.webapp_tokens("read"));
    let rotated = app.refresh(&token, None);
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let live = refresh_of(&rotated.json());
    let bytes = URL_SAFE_NO_PAD.decode(&live).unwrap();
    assert_eq!(bytes.len(), 72, "family, generation, random part, tag");
    assert_eq!(bytes[16..24], 2u64.to_be_bytes(), "the second generation");
    let altered = |position: usize, value: u8| {
        let mut forged = bytes.clone();
        forged[position] = value;
        URL_SAFE_NO_PAD.encode(forged)
    };
    // An older generation, a changed random part, a changed tag.
    for forged in [
        altered(23, 1),
        altered(40, bytes[40] ^ 1),
        altered(71, bytes[71] ^ 1),
    ] {
        let refused = app.refresh(&forged, None);
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert_eq!(refused.json()["error"], "invalid_grant");
        assert_eq!(app.live_families(), 1, "a forged token revoked its family");
    }
    let still = app.refresh(&live, None);
    assert_eq!(still.status, 200, "{}", still.body);
}

/// A refresh token issued before tokens named their family (32 random bytes with a row of
/// its own) keeps working after an upgrade: it rotates once into the new format, and
/// presented again it is reuse, as any rotated token is.
fn a_refresh_token_of_the_earlier_format_still_rotates(db: TestDb) {
    use gatehouse::storage::schema::refresh_tokens;

    let app = OAuthServer::start(db);
    app.webapp_tokens("read");
    // The family as an earlier version left it: its live token in refresh_tokens.
    let legacy = gatehouse::crypto::random::token::<32>();
    let mut conn = app.db.connect();
    let (family_id, idle): (String, Option<i64>) = token_families::table
        .select((token_families::id, token_families::refresh_idle_expires_at))
        .first(&mut conn)
        .unwrap();
    diesel::update(token_families::table)
        .set((
            token_families::refresh_hash.eq(None::<String>),
            token_families::refresh_generation.eq(0),
            token_families::refresh_created_at.eq(None::<i64>),
            token_families::refresh_idle_expires_at.eq(None::<i64>),
        ))
        .execute(&mut conn)
        .unwrap();
    diesel::insert_into(refresh_tokens::table)
        .values(gatehouse::storage::tokens::RefreshRow {
            token_hash: gatehouse::crypto::mac::digest_secret(&legacy),
            family_id,
            client_id: WEBAPP.to_owned(),
            scope: "read".to_owned(),
            created_at: gatehouse::storage::now_unix(),
            idle_expires_at: idle.unwrap(),
            rotated_at: None,
        })
        .execute(&mut conn)
        .unwrap();

    // Introspected by its own client, as RFC 7662 allows for a refresh token.
    let introspect = |token: &str| app.introspect_as(token, (WEBAPP, WEBAPP_SECRET));
    assert_eq!(introspect(&legacy)["active"], true);
    assert_eq!(introspect(&legacy)["token_type"], "refresh_token");

    let rotated = app.refresh(&legacy, None);
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.json()["scope"], "read");
    let next = refresh_of(&rotated.json());
    assert_ne!(next.len(), legacy.len(), "rotated into the new format");
    assert_eq!(introspect(&legacy), serde_json::json!({"active": false}));
    assert_eq!(introspect(&next)["active"], true);
    let again = app.refresh(&next, None);
    assert_eq!(again.status, 200, "{}", again.body);
    // An older generation of the new format is inactive too.
    assert_eq!(introspect(&next), serde_json::json!({"active": false}));

    let reuse = app.refresh(&legacy, None);
    assert_eq!(reuse.json()["error"], "invalid_grant", "{}", reuse.body);
    assert_eq!(app.live_families(), 0, "reuse of the earlier token revokes");
}

fn refresh_tokens_rotate_and_reuse_revokes_the_family(db: TestDb) {
    let app = OAuthServer::start(db);
    let first = app.webapp_tokens("read");
    let r1 = refresh_of(&first);

    let second = app.refresh(&r1, None);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("cache-control"), Some("no-store"));
    let second = second.json();
    assert_eq!(second["token_type"], "Bearer");
    assert_eq!(second["scope"], "read");
    let r2 = refresh_of(&second);
    assert_ne!(r1, r2, "rotated on use");
    assert_ne!(first["access_token"], second["access_token"]);

    let third = app.refresh(&r2, None);
    assert_eq!(third.status, 200, "{}", third.body);
    let r3 = refresh_of(&third.json());

    // r1 was rotated long ago: reuse. The whole family dies, the newest token too.
    let reuse = app.refresh(&r1, None);
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.json()["error"], "invalid_grant");
    assert_eq!(app.live_families(), 0);
    let newest = app.refresh(&r3, None);
    assert_eq!(
        newest.json()["error"],
        "invalid_grant",
        "the newest token is revoked too"
    );
    for tokens in [&first, &second, &third.json()] {
        assert_eq!(
            app.introspect(tokens["access_token"].as_str().unwrap()),
            serde_json::json!({"active": false}),
            "every access token of the family is revoked"
        );
    }
    let rows: i64 = access_tokens::table
        .count()
        .get_result(&mut app.db.connect())
        .unwrap();
    assert_eq!(
        rows, 0,
        "no row per access token, before or after the revocation"
    );

    let garbage = app.refresh("not-a-refresh-token", None);
    assert_eq!(garbage.json()["error"], "invalid_grant");
}

fn a_refresh_token_is_bound_to_its_client(db: TestDb) {
    let app = OAuthServer::start(db);
    let token = refresh_of(&app.webapp_tokens("read"));
    // Another client that may refresh its own tokens: not this one.
    let other = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        Some((LEGACY, LEGACY_SECRET)),
    );
    assert_eq!(other.status, 400, "{}", other.body);
    assert_eq!(other.json()["error"], "invalid_grant");
    // One that may not refresh at all hears that first (RFC 6749 5.2).
    let cannot_refresh = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        Some((OTHER, OTHER_SECRET)),
    );
    assert_eq!(cannot_refresh.status, 400, "{}", cannot_refresh.body);
    assert_eq!(cannot_refresh.json()["error"], "unauthorized_client");
    let public = app.token(
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &token),
            ("client_id", SPA),
        ],
        None,
    );
    assert_eq!(public.json()["error"], "invalid_grant", "{}", public.body);
    let anonymous = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        None,
    );
    assert_eq!(
        anonymous.status, 401,
        "a confidential client's token needs its secret"
    );
    let wrong_secret = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        Some((WEBAPP, "wrong")),
    );
    assert_eq!(wrong_secret.status, 401);

    // client_secret_post works as well as Basic, and the token was not spent above.
    let post = app.token(
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &token),
            ("client_id", WEBAPP),
            ("client_secret", WEBAPP_SECRET),
        ],
        None,
    );
    assert_eq!(post.status, 200, "{}", post.body);
}

fn scope_may_narrow_but_not_widen(db: TestDb) {
    let app = OAuthServer::start(db);
    let token = refresh_of(&app.webapp_tokens("read write"));
    let wider = app.refresh(&token, Some("read write profile"));
    assert_eq!(wider.status, 400);
    assert_eq!(wider.json()["error"], "invalid_scope");

    let narrower = app.refresh(&token, Some("read"));
    assert_eq!(narrower.status, 200, "{}", narrower.body);
    let narrower = narrower.json();
    assert_eq!(narrower["scope"], "read");
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(
        narrower["access_token"].as_str().unwrap(),
    )
    .unwrap()
    .claims;
    assert_eq!(claims["scope"], "read");
    // RFC 6749 6: the new refresh token keeps the original scope.
    let again = app.refresh(&refresh_of(&narrower), None);
    assert_eq!(again.json()["scope"], "read write", "{}", again.body);

    // A blank scope is no scope: the grant's own, not none.
    let mut token = refresh_of(&again.json());
    for blank in ["", "  "] {
        let kept = app.refresh(&token, Some(blank));
        assert_eq!(kept.status, 200, "{blank:?}: {}", kept.body);
        assert_eq!(kept.json()["scope"], "read write", "{blank:?}");
        token = refresh_of(&kept.json());
    }
}

fn concurrent_refreshes_cannot_both_succeed(db: TestDb) {
    let app = OAuthServer::start(db);
    for _ in 0..3 {
        let token = refresh_of(&app.webapp_tokens("read"));
        let statuses = race(4, |_| app.refresh(&token, None).status);
        assert!(
            statuses.iter().filter(|s| **s == 200).count() <= 1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 400),
            "{statuses:?}"
        );
    }
    assert_eq!(
        app.live_families(),
        0,
        "every raced family was caught as reuse"
    );
}

/// Lifetimes are checked by moving stored times into the past, as waiting would, and the
/// configured values by reading what was stored.
fn idle_lifetime_is_enforced(db: TestDb) {
    let app = OAuthServer::start_with(db, "refresh_idle_ttl = \"2h\"");
    let token = refresh_of(&app.webapp_tokens("read"));
    let mut conn = app.db.connect();
    let (created, idle): (Option<i64>, Option<i64>) = token_families::table
        .select((
            token_families::refresh_created_at,
            token_families::refresh_idle_expires_at,
        ))
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        idle.unwrap() - created.unwrap(),
        2 * 3600,
        "tokens.refresh_idle_ttl applies"
    );

    diesel::update(token_families::table)
        .set(token_families::refresh_idle_expires_at.eq(gatehouse::storage::now_unix() - 1))
        .execute(&mut conn)
        .unwrap();
    let idle = app.refresh(&token, None);
    assert_eq!(idle.status, 400);
    assert_eq!(idle.json()["error"], "invalid_grant", "{}", idle.body);
}

fn absolute_lifetime_is_enforced(db: TestDb) {
    let app = OAuthServer::start_with(db, "refresh_absolute_ttl = \"30d\"");
    let token = refresh_of(&app.webapp_tokens("read"));
    let mut conn = app.db.connect();
    let (created, expires): (i64, i64) = token_families::table
        .select((token_families::created_at, token_families::expires_at))
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        expires - created,
        30 * 86400,
        "tokens.refresh_absolute_ttl applies"
    );

    // Idle-fresh, but the family's absolute end has passed.
    diesel::update(token_families::table)
        .set(token_families::expires_at.eq(gatehouse::storage::now_unix() - 1))
        .execute(&mut conn)
        .unwrap();
    let late = app.refresh(&token, None);
    assert_eq!(late.status, 400);
    assert_eq!(late.json()["error"], "invalid_grant", "{}", late.body);
}

on_both_backends!(
    a_disabled_user_keeps_no_working_token,
    an_unauthenticated_replay_revokes_nothing
);

fn a_disabled_user_keeps_no_working_token(db: TestDb) {
    let app = OAuthServer::start_with(db, "introspection_cache_ttl = \"1s\"");
    let tokens = app.webapp_tokens("read");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.introspect(access)["active"], true);
    // Disabled outside the server, as `gatehouse users disable` does: the server answered
    // from memory for tokens.introspection_cache_ttl (1s), and no longer after it.
    gatehouse::accounts::set_disabled(&mut app.db.connect(), USERNAME, true).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        app.introspect(access),
        serde_json::json!({"active": false}),
        "the access token of a disabled user's grant"
    );
    let refreshed = app.refresh(tokens["refresh_token"].as_str().unwrap(), None);
    assert_eq!(
        refreshed.json()["error"],
        "invalid_grant",
        "{}",
        refreshed.body
    );
    assert_eq!(
        app.live_families(),
        0,
        "disabling revokes the user's grants"
    );
}

fn an_unauthenticated_replay_revokes_nothing(db: TestDb) {
    let app = OAuthServer::start(db);
    let r1 = refresh_of(&app.webapp_tokens("read"));
    let r2 = refresh_of(&app.refresh(&r1, None).json());
    let anonymous = app.token(
        &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
        None,
    );
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(app.live_families(), 1, "no credentials, no revocation");
    assert_eq!(app.refresh(&r2, None).status, 200);
}

/// Another process holding SQLite's write lock past the busy timeout (a backup, a hand-run
/// `sqlite3` session) gets the client a 503 `temporarily_unavailable`, which it may retry,
/// not a 500; and nothing is spent: the refresh token rotates once the lock is gone.
#[test]
fn a_locked_sqlite_database_is_503_and_spends_nothing() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let r1 = refresh_of(&app.webapp_tokens("read"));

    let lock = SqliteWriteLock::take(&app.db);
    let refused = app.refresh(&r1, None);
    drop(lock);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    assert_eq!(refused.json()["error"], "temporarily_unavailable");

    let rotated = app.refresh(&r1, None);
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(app.live_families(), 1);
}
