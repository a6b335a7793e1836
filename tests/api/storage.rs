use diesel::prelude::*;
use gatehouse::storage::schema::*;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(the_diesel_schema_matches_both_migrations);

/// Every table and column diesel knows must exist in the migrated database of each backend.
fn the_diesel_schema_matches_both_migrations(db: TestDb) {
    let mut conn = db.connect();
    let applied = gatehouse::storage::run_migrations(&mut conn).unwrap();
    assert!(applied >= 1);
    macro_rules! probe {
        ($($table:ident),*) => {$(
            $table::table
                .select($table::all_columns)
                .limit(0)
                .execute(&mut conn)
                .unwrap_or_else(|e| panic!("{}: {e}", stringify!($table)));
        )*};
    }
    probe!(
        clients,
        users,
        browser_sessions,
        consents,
        token_families,
        authorization_codes,
        refresh_tokens,
        access_tokens,
        signing_keys,
        sealing_keys,
        auth_failures,
        audit_events
    );
    gatehouse::storage::ensure_migrated(&mut conn).expect("nothing pending after migrating");
}

/// A migrated database with one user, `username`, and the demo client, which exists only
/// with the built-in config (a test config has none), so it is written by hand through the
/// library. Returns the config, a connection, the user's id and the time.
fn with_user_and_demo_client(
    db: &TestDb,
    username: &str,
) -> (
    std::path::PathBuf,
    gatehouse::storage::DbConnection,
    String,
    i64,
) {
    let config = write_config(db, "gatehouse.toml", "");
    drop(TestServer::start(db, &config));
    let mut conn = db.connect();
    let user =
        gatehouse::accounts::add_user(&mut conn, username, "a long enough password").unwrap();
    let now = gatehouse::storage::now_unix();
    let settings_text = std::fs::read_to_string(&config).unwrap();
    assert!(!settings_text.contains("[[clients]]"));
    diesel::insert_into(clients::table)
        .values(gatehouse::storage::clients::ClientRow {
            id: "demo".into(),
            name: "demo".into(),
            secret_hash: None,
            redirect_uris: "[]".into(),
            grant_types: "[]".into(),
            scopes: "[]".into(),
            default_scopes: "[]".into(),
            audience: "[]".into(),
            allowed_origins: "[]".into(),
            skip_consent: false,
            enabled: false,
            updated_at: now,
        })
        .execute(&mut conn)
        .unwrap();
    (config, conn, user.id, now)
}

/// A family of the demo client for `user_id`, live from `created_at` to `expires_at`.
fn demo_family(
    id: &str,
    user_id: &str,
    created_at: i64,
    expires_at: i64,
) -> gatehouse::storage::tokens::FamilyRow {
    gatehouse::storage::tokens::FamilyRow {
        id: id.to_owned(),
        client_id: "demo".to_owned(),
        user_id: Some(user_id.to_owned()),
        grant_type: "authorization_code".to_owned(),
        scope: "read".to_owned(),
        created_at,
        expires_at,
        revoked_at: None,
        refresh_hash: None,
        refresh_generation: 0,
        refresh_created_at: None,
        refresh_idle_expires_at: None,
    }
}

/// A family's live refresh token of digest `hash`.
fn live_refresh(hash: &str, generation: i64, now: i64) -> gatehouse::storage::tokens::LiveRefresh {
    gatehouse::storage::tokens::LiveRefresh {
        token_hash: hash.to_owned(),
        generation,
        created_at: now,
        idle_expires_at: now + 600,
    }
}

/// The family's token of digest `hash` and `generation`, as the issuer finds it.
fn presented_in_family(
    conn: &mut gatehouse::storage::DbConnection,
    family_id: &str,
    generation: i64,
    hash: &str,
) -> Option<gatehouse::storage::tokens::PresentedRefresh> {
    use gatehouse::storage::tokens::{find_refresh, RefreshLookup};
    let lookup = RefreshLookup::InFamily {
        family_id,
        generation,
        token_hash: hash,
    };
    find_refresh(conn, lookup).unwrap()
}

/// A refresh token of the earlier format for the demo client: its own row, by digest `hash`.
fn legacy_refresh(hash: &str, family_id: &str, now: i64) -> gatehouse::storage::tokens::RefreshRow {
    gatehouse::storage::tokens::RefreshRow {
        token_hash: hash.to_owned(),
        family_id: family_id.to_owned(),
        client_id: "demo".to_owned(),
        scope: "read".to_owned(),
        created_at: now - 60,
        idle_expires_at: now + 600,
        rotated_at: None,
    }
}

/// A code of the demo client for `user_id`, as opened from its seal: not yet recorded.
fn demo_code(hash: &str, user_id: &str, expires_at: i64) -> gatehouse::storage::codes::CodeRow {
    gatehouse::storage::codes::CodeRow {
        code_hash: hash.to_owned(),
        client_id: "demo".to_owned(),
        user_id: user_id.to_owned(),
        redirect_uri: "http://127.0.0.1:8081/callback".to_owned(),
        redirect_uri_sent: true,
        scope: "read".to_owned(),
        code_challenge: Some("challenge".to_owned()),
        nonce: None,
        auth_time: expires_at - 65,
        created_at: expires_at - 60,
        expires_at,
        redeemed_at: None,
        replayed_at: None,
        family_id: None,
    }
}

on_both_backends!(a_refresh_token_never_rotates_into_a_revoked_family);

/// The storage layer's own guards, below the issuer's checks: between reading a token and
/// rotating it, its family may be revoked, or the token rotated by another request; the
/// rotation must then write nothing.
fn a_refresh_token_never_rotates_into_a_revoked_family(db: TestDb) {
    use gatehouse::storage::tokens;

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "rotator");
    let family = demo_family("family", &user_id, now, now + 3600)
        .with_refresh(&live_refresh("first", 1, now));
    assert!(tokens::create_family(&mut conn, &family, None).unwrap());
    let first = presented_in_family(&mut conn, "family", 1, "first").unwrap();
    assert_eq!((first.token.rotated_at, first.generation), (None, Some(1)));
    assert!(
        tokens::rotate_refresh(&mut conn, &first, now, &live_refresh("second", 2, now)).unwrap(),
        "a live family rotates"
    );
    // The same token again, as a concurrent request read it before the rotation.
    assert!(
        !tokens::rotate_refresh(&mut conn, &first, now, &live_refresh("other", 2, now)).unwrap(),
        "a rotated token rotated again"
    );
    let first_again = presented_in_family(&mut conn, "family", 1, "first").unwrap();
    assert!(
        first_again.token.rotated_at.is_some(),
        "an older generation is a rotated token"
    );
    // A token the family never had: a live generation with another digest, or a later one.
    assert!(presented_in_family(&mut conn, "family", 2, "other").is_none());
    assert!(presented_in_family(&mut conn, "family", 3, "third").is_none());

    let second = presented_in_family(&mut conn, "family", 2, "second").unwrap();
    assert!(tokens::revoke_family(&mut conn, &family.id, now).unwrap());
    assert!(
        !tokens::rotate_refresh(&mut conn, &second, now, &live_refresh("third", 3, now)).unwrap(),
        "a revoked family rotated"
    );
    let second = presented_in_family(&mut conn, "family", 2, "second").unwrap();
    assert_eq!(second.token.rotated_at, None, "the refused rotation wrote");
    assert!(presented_in_family(&mut conn, "family", 3, "third").is_none());
}

on_both_backends!(a_token_is_rotated_as_it_is_read_only_if_every_check_holds);

/// The rotation that reads the token as it rotates it (`rotate_redeemable`) carries every
/// check a refresh grant makes of the token: each one failing alone leaves the family as it
/// was, and when all hold the family's row comes back as the rotation left it, the
/// successor's idle limit capped at the family's end.
fn a_token_is_rotated_as_it_is_read_only_if_every_check_holds(db: TestDb) {
    use gatehouse::storage::tokens::{self, RedeemableToken};

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "one-step");
    let ends = now + 3600;
    let family = demo_family("family", &user_id, now - 60, ends).with_refresh(&live_refresh(
        "first",
        1,
        now - 60,
    ));
    assert!(tokens::create_family(&mut conn, &family, None).unwrap());
    let presented = RedeemableToken {
        family_id: "family",
        generation: 1,
        token_hash: "first",
        client_id: "demo",
    };
    // The successor would idle out after the family's end: capped.
    let successor = gatehouse::storage::tokens::LiveRefresh {
        idle_expires_at: ends + 1000,
        ..live_refresh("second", 2, now)
    };
    let rotate = |conn: &mut _, presented: RedeemableToken<'_>, now: i64, until: i64| {
        tokens::rotate_redeemable(conn, presented, &successor, now, until).unwrap()
    };
    let refused = [
        (
            "another client",
            RedeemableToken {
                client_id: "webapp",
                ..presented
            },
            now,
            now,
        ),
        (
            "another generation",
            RedeemableToken {
                generation: 2,
                ..presented
            },
            now,
            now,
        ),
        (
            "another digest",
            RedeemableToken {
                token_hash: "other",
                ..presented
            },
            now,
            now,
        ),
        ("idled out", presented, now + 600, now),
        ("the family ends too soon", presented, now, ends),
    ];
    for (why, presented, now, until) in refused {
        assert_eq!(rotate(&mut conn, presented, now, until), None, "{why}");
        assert_eq!(
            presented_in_family(&mut conn, "family", 1, "first")
                .unwrap()
                .family,
            family
        );
    }
    gatehouse::storage::users::set_disabled(&mut conn, "one-step", true, now).unwrap();
    assert_eq!(
        rotate(&mut conn, presented, now, now),
        None,
        "a disabled user"
    );
    gatehouse::storage::users::set_disabled(&mut conn, "one-step", false, now).unwrap();

    let rotated = rotate(&mut conn, presented, now, now + 60).expect("every check holds");
    let expected = family.clone().with_refresh(&live_refresh("second", 2, now));
    let expected = gatehouse::storage::tokens::FamilyRow {
        refresh_idle_expires_at: Some(ends),
        ..expected
    };
    assert_eq!(rotated, expected);
    assert_eq!(
        presented_in_family(&mut conn, "family", 2, "second")
            .unwrap()
            .family,
        expected
    );
    assert_eq!(
        rotate(&mut conn, presented, now, now),
        None,
        "rotated twice"
    );

    assert!(tokens::revoke_family(&mut conn, "family", now).unwrap());
    let second = RedeemableToken {
        generation: 2,
        token_hash: "second",
        ..presented
    };
    assert_eq!(
        rotate(&mut conn, second, now, now),
        None,
        "a revoked family"
    );
}

on_both_backends!(a_token_of_the_earlier_format_rotates_into_its_family_once);

/// A refresh token issued before tokens named their family has a row of its own. Its first
/// rotation marks that row and moves the successor into the family's row, once: presented
/// again it is a rotated token, and a revoked family does not rotate it.
fn a_token_of_the_earlier_format_rotates_into_its_family_once(db: TestDb) {
    use gatehouse::storage::tokens::{self, find_refresh, RefreshLookup};

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "veteran");
    for family in ["kept", "revoked"] {
        let row = demo_family(family, &user_id, now - 60, now + 3600);
        assert!(tokens::create_family(&mut conn, &row, None).unwrap());
        diesel::insert_into(refresh_tokens::table)
            .values(legacy_refresh(&format!("{family}-legacy"), family, now))
            .execute(&mut conn)
            .unwrap();
    }
    let legacy = |conn: &mut _, hash: &str| {
        find_refresh(conn, RefreshLookup::Legacy { token_hash: hash })
            .unwrap()
            .unwrap()
    };
    let presented = legacy(&mut conn, "kept-legacy");
    assert_eq!(presented.token, legacy_refresh("kept-legacy", "kept", now));
    assert_eq!(presented.generation, None);
    assert!(
        tokens::rotate_refresh(&mut conn, &presented, now, &live_refresh("next", 1, now)).unwrap()
    );
    assert!(legacy(&mut conn, "kept-legacy").token.rotated_at.is_some());
    let next = presented_in_family(&mut conn, "kept", 1, "next").unwrap();
    assert_eq!(next.token.rotated_at, None);
    assert_eq!(next.token.idle_expires_at, now + 600);
    assert!(
        !tokens::rotate_refresh(&mut conn, &presented, now, &live_refresh("twice", 1, now))
            .unwrap(),
        "the earlier token rotated twice"
    );
    assert!(presented_in_family(&mut conn, "kept", 1, "next").is_some());

    let doomed = legacy(&mut conn, "revoked-legacy");
    assert!(tokens::revoke_family(&mut conn, "revoked", now).unwrap());
    assert!(
        !tokens::rotate_refresh(&mut conn, &doomed, now, &live_refresh("late", 1, now)).unwrap()
    );
    assert_eq!(legacy(&mut conn, "revoked-legacy").token.rotated_at, None);
    assert!(presented_in_family(&mut conn, "revoked", 1, "late").is_none());
}

on_both_backends!(concurrent_rotations_of_a_token_of_the_earlier_format_succeed_once);

/// Two clients (or an attacker and its victim) presenting the same token of the earlier
/// format at once, each on its own connection: exactly one rotation commits, the family's
/// row holds that one's successor and no other, and the earlier token's row is marked. On
/// PostgreSQL the losers wait on the winner's row lock and find the row changed; SQLite
/// runs them one after another.
fn concurrent_rotations_of_a_token_of_the_earlier_format_succeed_once(db: TestDb) {
    use gatehouse::storage::tokens::{self, find_refresh, RefreshLookup};
    use std::sync::Barrier;

    const RACERS: usize = 6;
    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "racer");
    let family = demo_family("contested", &user_id, now - 60, now + 3600);
    assert!(tokens::create_family(&mut conn, &family, None).unwrap());
    diesel::insert_into(refresh_tokens::table)
        .values(legacy_refresh("contested-legacy", "contested", now))
        .execute(&mut conn)
        .unwrap();
    let presented = find_refresh(
        &mut conn,
        RefreshLookup::Legacy {
            token_hash: "contested-legacy",
        },
    )
    .unwrap()
    .unwrap();

    let barrier = Barrier::new(RACERS);
    let rotated: Vec<bool> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (db, presented, barrier) = (&db, &presented, &barrier);
                s.spawn(move || {
                    let mut own = db.connect();
                    let successor = live_refresh(&format!("successor-{racer}"), 1, now);
                    barrier.wait();
                    tokens::rotate_refresh(&mut own, presented, now, &successor).unwrap()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..RACERS).filter(|&r| rotated[r]).collect();
    assert_eq!(winners.len(), 1, "rotations that committed: {rotated:?}");

    let live: (Option<String>, i64) = token_families::table
        .find("contested")
        .select((
            token_families::refresh_hash,
            token_families::refresh_generation,
        ))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(live, (Some(format!("successor-{}", winners[0])), 1));
    let marked: Option<i64> = refresh_tokens::table
        .find("contested-legacy")
        .select(refresh_tokens::rotated_at)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(marked, Some(now));
}

on_both_backends!(reverting_the_refresh_migration_keeps_the_live_tokens);

/// Rolling the migration back gives each family's live refresh token a row of its own
/// again, which a version before it redeems (it finds a token by its digest alone).
fn reverting_the_refresh_migration_keeps_the_live_tokens(db: TestDb) {
    use diesel::connection::SimpleConnection;
    use gatehouse::storage::tokens;

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "downgrader");
    let live = demo_family("live", &user_id, now, now + 3600).with_refresh(&live_refresh(
        "live-digest",
        4,
        now,
    ));
    assert!(tokens::create_family(&mut conn, &live, None).unwrap());
    let without = demo_family("without", &user_id, now, now + 3600);
    assert!(tokens::create_family(&mut conn, &without, None).unwrap());

    let backend = if db.url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgresql"
    };
    let down = std::fs::read_to_string(format!(
        "{}/migrations/{backend}/2026-12-06-000001_refresh_in_family/down.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    conn.batch_execute(&down).unwrap();
    let rows: Vec<tokens::RefreshRow> = refresh_tokens::table
        .select(tokens::RefreshRow::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        rows,
        [tokens::RefreshRow {
            created_at: now,
            ..legacy_refresh("live-digest", "live", now)
        }]
    );
}

on_both_backends!(a_family_revocation_reaches_its_access_tokens_without_a_row_each);

/// Issuing writes no access-token row; revoking a family still reaches every access token
/// whose jti names it, alone or in a batch, beside tokens revoked one by one and tokens of
/// other families.
fn a_family_revocation_reaches_its_access_tokens_without_a_row_each(db: TestDb) {
    use gatehouse::storage::tokens::{self, access_jti};
    use std::collections::HashSet;

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "revoker");
    let family = |id: &str| {
        demo_family(id, &user_id, now, now + 3600).with_refresh(&live_refresh(id, 1, now))
    };
    for id in ["doomed", "spared"] {
        assert!(tokens::create_family(&mut conn, &family(id), None).unwrap());
    }
    let doomed_token = presented_in_family(&mut conn, "doomed", 1, "doomed").unwrap();
    assert!(tokens::rotate_refresh(
        &mut conn,
        &doomed_token,
        now,
        &live_refresh("doomed-2", 2, now)
    )
    .unwrap());
    let rows: i64 = access_tokens::table.count().get_result(&mut conn).unwrap();
    assert_eq!(rows, 0, "issuing wrote access-token rows");

    let doomed = access_jti(Some("doomed"), "a1");
    let doomed_too = access_jti(Some("doomed"), "a2");
    let spared = access_jti(Some("spared"), "b1");
    let alone = access_jti(None, "c1");
    let revoked_among = |conn: &mut _, jtis: &[&str]| -> HashSet<String> {
        tokens::revoked_among(conn, jtis).unwrap()
    };
    assert!(revoked_among(&mut conn, &[&doomed]).is_empty());
    assert!(revoked_among(&mut conn, &[&doomed, &spared, &alone]).is_empty());
    // A family that is gone (deleted by hand with its user: the sweep waits until its
    // tokens have expired) takes its tokens with it, alone and in a batch.
    let orphan = access_jti(Some("gone"), "d1");
    assert_eq!(
        revoked_among(&mut conn, &[&orphan]),
        HashSet::from([orphan.clone()])
    );
    assert_eq!(
        revoked_among(&mut conn, &[&doomed, &orphan, &spared, &alone]),
        HashSet::from([orphan.clone()])
    );

    assert!(tokens::revoke_family(&mut conn, "doomed", now).unwrap());
    tokens::revoke_access(&mut conn, &alone, "demo", now + 300, now).unwrap();
    assert_eq!(
        revoked_among(&mut conn, &[&doomed]),
        HashSet::from([doomed.clone()])
    );
    assert_eq!(
        revoked_among(&mut conn, &[&alone]),
        HashSet::from([alone.clone()])
    );
    assert!(revoked_among(&mut conn, &[&spared]).is_empty());
    assert_eq!(
        revoked_among(&mut conn, &[&doomed, &spared, &alone, &doomed_too, &doomed]),
        HashSet::from([doomed.clone(), alone.clone(), doomed_too.clone()])
    );

    // A token issued before family-scoped jtis: a random jti and a row naming its family.
    diesel::insert_into(access_tokens::table)
        .values(tokens::AccessRow {
            jti: "legacy".to_owned(),
            family_id: Some("spared".to_owned()),
            client_id: "demo".to_owned(),
            expires_at: now + 300,
            revoked_at: None,
        })
        .execute(&mut conn)
        .unwrap();
    assert!(revoked_among(&mut conn, &["legacy"]).is_empty());
    assert!(tokens::revoke_family(&mut conn, "spared", now).unwrap());
    assert_eq!(
        revoked_among(&mut conn, &["legacy"]),
        HashSet::from(["legacy".to_owned()])
    );
    assert_eq!(
        revoked_among(&mut conn, &["legacy", &spared]),
        HashSet::from(["legacy".to_owned(), spared.clone()])
    );
}

on_both_backends!(a_presented_code_is_recorded_once);

/// A code's row is written when the code is first presented: by the exchange that issues
/// its tokens, in the same commit, or by a failed exchange. Whatever comes second is told
/// so and writes nothing, on either backend.
fn a_presented_code_is_recorded_once(db: TestDb) {
    use gatehouse::storage::codes::{self, CodeRow, Redemption};
    use gatehouse::storage::tokens::create_family;

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "presenter");
    let code = |hash: &str| demo_code(hash, &user_id, now + 59);
    let family = |id: &str| demo_family(id, &user_id, now, now + 86400);
    let families = |conn: &mut gatehouse::storage::DbConnection| -> Vec<String> {
        token_families::table
            .select(token_families::id)
            .order(token_families::id)
            .load(conn)
            .unwrap()
    };

    // Exchanged first: recorded with its family. A failed presentation later is a replay of
    // that redemption, and a second exchange records nothing.
    assert!(create_family(&mut conn, &family("f1"), Some(&code("exchanged"))).unwrap());
    match codes::spend(&mut conn, &code("exchanged"), now + 1).unwrap() {
        Redemption::Replay(row) => assert_eq!(
            *row,
            CodeRow {
                redeemed_at: Some(now),
                replayed_at: Some(now + 1),
                family_id: Some("f1".to_owned()),
                ..code("exchanged")
            }
        ),
        other => panic!("not a replay: {other:?}"),
    }
    assert!(!create_family(&mut conn, &family("f2"), Some(&code("exchanged"))).unwrap());
    assert_eq!(
        families(&mut conn),
        ["f1"],
        "the second exchange wrote nothing"
    );

    // Spent first by a failed exchange: an exchange later records nothing either.
    assert_eq!(
        codes::spend(&mut conn, &code("spent"), now).unwrap(),
        Redemption::First
    );
    assert!(!create_family(&mut conn, &family("f3"), Some(&code("spent"))).unwrap());
    assert_eq!(families(&mut conn), ["f1"]);

    // The same digest presented as another client's marks nothing.
    let foreign = CodeRow {
        client_id: "someone-else".to_owned(),
        ..code("spent")
    };
    assert_eq!(
        codes::spend(&mut conn, &foreign, now + 2).unwrap(),
        Redemption::Unrecorded
    );
    let replayed_at: Option<i64> = authorization_codes::table
        .find("spent")
        .select(authorization_codes::replayed_at)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(replayed_at, None);

    // A code whose user no longer exists is neither exchanged nor recorded, and no foreign
    // key fails.
    let orphan = CodeRow {
        user_id: "erased-user".to_owned(),
        ..code("orphan")
    };
    let orphan_family = gatehouse::storage::tokens::FamilyRow {
        user_id: Some("erased-user".to_owned()),
        ..family("f4")
    };
    assert!(!create_family(&mut conn, &orphan_family, Some(&orphan)).unwrap());
    assert_eq!(
        codes::spend(&mut conn, &orphan, now + 3).unwrap(),
        Redemption::Unrecorded
    );
    assert_eq!(families(&mut conn), ["f1"]);
    let orphan_rows: i64 = authorization_codes::table
        .find("orphan")
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(orphan_rows, 0);
}

on_both_backends!(expired_sessions_and_old_codes_are_swept);

fn expired_sessions_and_old_codes_are_swept(db: TestDb) {
    use gatehouse::storage::sessions::SessionRow;

    let (config, mut conn, user_id, now) = with_user_and_demo_client(&db, "sweeper");
    let session = |id: &str, expires_at: i64| SessionRow {
        id_hash: id.to_owned(),
        user_id: user_id.clone(),
        authenticated_at: now - 100,
        expires_at,
        last_seen_at: now - 100,
    };
    gatehouse::storage::sessions::insert(&mut conn, &session("expired", now - 1)).unwrap();
    gatehouse::storage::sessions::insert(&mut conn, &session("live", now + 3600)).unwrap();
    // Codes are stored only once presented (spent, here).
    for (hash, expires_at) in [("ancient", now - 2 * 24 * 3600), ("recent", now - 60)] {
        let spent = gatehouse::storage::codes::spend(
            &mut conn,
            &demo_code(hash, &user_id, expires_at),
            now,
        );
        assert_eq!(spent.unwrap(), gatehouse::storage::codes::Redemption::First);
    }

    let old_family = demo_family("old-family", &user_id, now - 100 * 86400, now - 86400);
    gatehouse::storage::tokens::create_family(&mut conn, &old_family, None).unwrap();
    // A refresh token of the earlier format: a row of its own, which goes with its family.
    diesel::insert_into(refresh_tokens::table)
        .values(gatehouse::storage::tokens::RefreshRow {
            created_at: now - 2 * 86400,
            idle_expires_at: now - 86400,
            ..legacy_refresh("old-refresh", "old-family", now)
        })
        .execute(&mut conn)
        .unwrap();
    // A row as versions before family-scoped jtis wrote for every token: it goes with its
    // family.
    diesel::insert_into(access_tokens::table)
        .values(gatehouse::storage::tokens::AccessRow {
            jti: "old-jti".into(),
            family_id: Some("old-family".into()),
            client_id: "demo".into(),
            expires_at: now + 86400,
            revoked_at: None,
        })
        .execute(&mut conn)
        .unwrap();

    let _server = TestServer::start(&db, &config);
    let swept = eventually(std::time::Duration::from_secs(15), || {
        let sessions: Vec<String> = browser_sessions::table
            .select(browser_sessions::id_hash)
            .load(&mut conn)
            .unwrap();
        let codes: Vec<String> = authorization_codes::table
            .select(authorization_codes::code_hash)
            .load(&mut conn)
            .unwrap();
        let families: i64 = token_families::table.count().get_result(&mut conn).unwrap();
        let refreshes: i64 = refresh_tokens::table.count().get_result(&mut conn).unwrap();
        let accesses: i64 = access_tokens::table.count().get_result(&mut conn).unwrap();
        (sessions == ["live"]
            && codes == ["recent"]
            && families == 0
            && refreshes == 0
            && accesses == 0)
            .then_some(())
    });
    assert!(
        swept.is_some(),
        "the expired session, the day-old code and the ended family are deleted, the others kept"
    );
}

/// The server's SQLite connections do not checkpoint the write-ahead log on commit (the
/// request that did so held up every other writer); a timer does it instead. What the
/// server writes must still reach the database file itself, not only the log.
#[test]
fn sqlite_writes_reach_the_database_file_itself() {
    let app = OAuthServer::start(TestDb::create(Backend::Sqlite).unwrap());
    let tokens = app.webapp_tokens("read");
    assert!(tokens["refresh_token"].is_string());
    let database = app.db.url.strip_prefix("sqlite://").unwrap().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    // A copy of the main file alone, without its -wal, holds only what was checkpointed.
    let families_in_file = || -> Option<i64> {
        let copy = scratch.path().join("copy.db");
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(&database, &copy).ok()?;
        let mut conn = SqliteConnection::establish(copy.to_str()?).ok()?;
        token_families::table.count().get_result(&mut conn).ok()
    };
    let checkpointed = eventually(std::time::Duration::from_secs(10), || {
        families_in_file().filter(|&n| n >= 1)
    });
    assert_eq!(
        checkpointed,
        Some(1),
        "the token family never reached {database} (last seen: {:?})",
        families_in_file()
    );
}

/// The `i`th of the audit rows the write-ahead log tests fill the log with (each over 500
/// bytes, so that every write adds pages).
fn wal_filler(i: usize) -> gatehouse::storage::audit::AuditRow {
    gatehouse::storage::audit::AuditRow {
        id: format!("{i:06}"),
        occurred_at: 1_700_000_000 + i as i64,
        event: "token_issued".into(),
        outcome: "success".into(),
        user_id: None,
        client_id: None,
        ip: None,
        detail: Some("x".repeat(500)),
    }
}

/// Under constant reading and writing, the timed checkpoint must recycle the write-ahead
/// log, not only copy it back: checkpoints that could never finish while some reader was
/// inside the log let the -wal file grow by every write (800 MB in ten seconds of
/// authorization-code flows; here about 110 MB), and each write into fresh file space cost
/// the kernel a zeroed page. Recycled, it stays near what a few ticks write (7-35 MB here).
/// The readers' transactions take milliseconds, and longer when the machine is busy, so
/// under load this can also fail if the checkpoint's wait for them stays at its first few
/// milliseconds (52-78 MB when the test binary ran beside eight busy loops).
#[test]
fn sqlite_write_ahead_log_is_recycled_while_readers_overlap() {
    use gatehouse::storage::audit::insert_all;
    use std::sync::atomic::{AtomicBool, Ordering};
    const WRITES: usize = 8000;
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let pool = gatehouse::storage::open_pool(&db.url, 4).unwrap();
    gatehouse::storage::run_migrations(&mut pool.get().unwrap()).unwrap();
    let writing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Two readers whose transactions overlap, so that some reader is always inside the log.
        for _ in 0..2 {
            scope.spawn(|| {
                let mut conn = pool.get().unwrap();
                while writing.load(Ordering::Relaxed) {
                    conn.transaction(|c| {
                        audit_events::table.count().get_result::<i64>(c)?;
                        std::thread::sleep(std::time::Duration::from_micros(300));
                        audit_events::table.count().get_result::<i64>(c)
                    })
                    .unwrap();
                }
            });
        }
        // The checkpoints and the writes go through the pool's dedicated writer, as in the
        // server.
        scope.spawn(|| {
            let mut conn = pool.get().unwrap();
            let _writes = gatehouse::storage::writes_through(&pool);
            let checkpoints = gatehouse::storage::Checkpoints::default();
            while writing.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                checkpoints.run(&mut conn).unwrap();
            }
        });
        // Stops the other threads however the writes end, so that a failed write fails the
        // test instead of leaving the readers running forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&writing);
        let mut conn = pool.get().unwrap();
        let _writes = gatehouse::storage::writes_through(&pool);
        for i in 0..WRITES {
            insert_all(&mut conn, &[wal_filler(i)]).unwrap();
        }
    });
    let path = db.url.strip_prefix("sqlite://").unwrap();
    let wal = std::fs::metadata(format!("{path}-wal")).unwrap().len();
    assert!(
        wal < 40 << 20,
        "the -wal file is {wal} bytes after {WRITES} writes: it is not being recycled"
    );
}

/// A checkpoint cannot restart the log while a reader stays inside it, gives up within its
/// wait, and leaves the writer's busy timeout as it found it; once the reader leaves, the
/// next checkpoint restarts the log, and the next write starts it from its beginning.
#[test]
fn a_checkpoint_restarts_the_log_once_its_readers_leave() {
    use diesel::connection::SimpleConnection;
    use gatehouse::storage::audit::insert_all;
    #[derive(diesel::QueryableByName)]
    struct Log {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        log: i32,
    }
    #[derive(diesel::QueryableByName)]
    struct Timeout {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        timeout: i32,
    }
    let db = TestDb::create(Backend::Sqlite).unwrap();
    let pool = gatehouse::storage::open_pool(&db.url, 4).unwrap();
    gatehouse::storage::run_migrations(&mut pool.get().unwrap()).unwrap();
    let _writes = gatehouse::storage::writes_through(&pool);
    let mut conn = pool.get().unwrap();
    let write = |conn: &mut gatehouse::storage::DbConnection, i: usize| {
        insert_all(conn, &[wal_filler(i)]).unwrap();
    };
    // Frames in the log, as a PASSIVE checkpoint (which never waits) reports them.
    let frames = |conn: &mut gatehouse::storage::DbConnection| {
        diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
            .get_result::<Log>(conn)
            .unwrap()
            .log
    };
    let writers_busy_timeout = |conn: &mut gatehouse::storage::DbConnection| {
        gatehouse::storage::write(conn, |c| {
            Ok(diesel::sql_query("PRAGMA busy_timeout").get_result::<Timeout>(c)?)
        })
        .unwrap()
        .timeout
    };
    for i in 0..200 {
        write(&mut conn, i);
    }
    let timeout = writers_busy_timeout(&mut conn);
    assert!(timeout > 0, "the writer waits for locks ({timeout})");

    let mut reader = pool.get().unwrap();
    let gatehouse::storage::DbConnection::Sqlite(sqlite_reader) = &mut *reader else {
        unreachable!("a SQLite pool")
    };
    sqlite_reader
        .batch_execute("BEGIN; SELECT count(*) FROM audit_events;")
        .unwrap();
    write(&mut conn, 200);
    let checkpoints = gatehouse::storage::Checkpoints::default();
    assert!(
        !checkpoints.run(&mut conn).unwrap(),
        "the log restarted under a reader"
    );
    assert_eq!(writers_busy_timeout(&mut conn), timeout);
    write(&mut conn, 201);
    assert!(frames(&mut conn) > 200, "the log restarted under a reader");

    sqlite_reader.batch_execute("COMMIT").unwrap();
    assert!(
        checkpoints.run(&mut conn).unwrap(),
        "the log did not restart with no reader inside"
    );
    assert_eq!(writers_busy_timeout(&mut conn), timeout);
    write(&mut conn, 202);
    let after = frames(&mut conn);
    assert!(after < 20, "the log did not start again: {after} frames");
}

on_both_backends!(audit_rows_go_in_many_at_a_time);

/// The audit writer appends a batch in one call (PostgreSQL: one statement over an array
/// per column; SQLite: a prepared statement per row); every row arrives whole, its missing
/// fields as NULL, and so does a batch of one.
fn audit_rows_go_in_many_at_a_time(db: TestDb) {
    use gatehouse::storage::audit::{insert_all, latest, AuditRow};
    let mut conn = db.connect();
    gatehouse::storage::run_migrations(&mut conn).unwrap();
    let rows: Vec<AuditRow> = (0..600)
        .map(|i| AuditRow {
            id: format!("{i:04}"),
            occurred_at: 1_700_000_000 + i,
            event: "token_issued".into(),
            outcome: "success".into(),
            user_id: (i % 2 == 0).then(|| format!("user-{i}")),
            client_id: (i % 3 != 0).then(|| format!("client-{i}")),
            ip: (i % 5 == 0).then(|| format!("192.0.2.{}", i % 256)),
            detail: (i % 7 != 0).then(|| format!("row {i}")),
        })
        .collect();
    insert_all(&mut conn, &rows).unwrap();
    // Each optional column is NULL on its own rows: a column shifted against the others
    // (PostgreSQL's arrays are zipped by position) would show.
    assert_eq!(latest(&mut conn, 1000).unwrap(), rows);
    let one = AuditRow {
        id: "0600".into(),
        occurred_at: 1_700_000_600,
        ..rows[0].clone()
    };
    insert_all(&mut conn, std::slice::from_ref(&one)).unwrap();
    assert_eq!(latest(&mut conn, 1).unwrap(), [one]);
}

on_both_backends!(a_live_session_is_read_with_the_consent_for_the_named_client);

/// /authorize reads the session, its user and the user's consent for the client it names
/// in one query: the consent is that client's only, and a session of a disabled user is
/// not live.
fn a_live_session_is_read_with_the_consent_for_the_named_client(db: TestDb) {
    use gatehouse::storage::consents::{self, ConsentRow};
    use gatehouse::storage::sessions::{self, SessionRow};

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "reader");
    sessions::insert(
        &mut conn,
        &SessionRow {
            id_hash: "session".to_owned(),
            user_id: user_id.clone(),
            authenticated_at: now,
            expires_at: now + 3600,
            last_seen_at: now,
        },
    )
    .unwrap();
    let read = |conn: &mut _, client_id: &str| {
        sessions::find_live(conn, "session", now, client_id)
            .unwrap()
            .map(|live| (live.user_id, live.consented_scope))
    };
    assert_eq!(read(&mut conn, "demo"), Some((user_id.clone(), None)));
    let live = sessions::find_live(&mut conn, "session", now, "demo")
        .unwrap()
        .unwrap();
    assert_eq!(
        (live.username.as_str(), live.authenticated_at),
        ("reader", now)
    );
    consents::remember(
        &mut conn,
        &ConsentRow {
            user_id: user_id.clone(),
            client_id: "demo".to_owned(),
            scope: "openid read".to_owned(),
            granted_at: now,
        },
    )
    .unwrap();
    assert_eq!(
        read(&mut conn, "demo"),
        Some((user_id.clone(), Some("openid read".to_owned())))
    );
    assert_eq!(read(&mut conn, "another"), Some((user_id.clone(), None)));
    diesel::update(users::table.find(&user_id))
        .set(users::disabled.eq(true))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(read(&mut conn, "demo"), None);
}

on_both_backends!(failed_attempts_are_recorded_counted_and_withdrawn);

/// The rate limiter's rows: one per bucket in one statement, counted per bucket together
/// with the account the username names, and withdrawn when the attempt succeeds. On
/// PostgreSQL both writes skip the WAL flush for their own transaction only, never for the
/// session that later writes tokens.
fn failed_attempts_are_recorded_counted_and_withdrawn(db: TestDb) {
    use gatehouse::storage::auth_failures;

    let (_config, mut conn, user_id, now) = with_user_and_demo_client(&db, "guesser");
    let buckets = ["user:guesser".to_owned(), "ip:192.0.2.7".to_owned()];
    let first = auth_failures::record(&mut conn, &buckets, now).unwrap();
    auth_failures::record(&mut conn, &buckets[..1], now).unwrap();
    // One more, too old to count.
    auth_failures::record(&mut conn, &buckets, now - 120).unwrap();
    assert_eq!(first.len(), 2);
    let read = |conn: &mut _, username, ip_bucket| {
        auth_failures::counts_and_user(conn, username, &buckets[0], ip_bucket, now - 60).unwrap()
    };
    // `updated_at` made to differ from `created_at`, so that neither can stand in for the other.
    assert!(gatehouse::storage::users::set_disabled(&mut conn, "guesser", false, now + 5).unwrap());
    let (counts, user) = read(&mut conn, "guesser", Some(buckets[1].as_str()));
    assert_eq!(counts, [2, 1]);
    // Column for column the row every other read of a user returns: the statement names
    // its columns by hand, in `UserRow`'s order.
    let by_name = gatehouse::storage::users::find_by_username(&mut conn, "guesser").unwrap();
    assert_eq!(user, by_name);
    assert_eq!(
        user.map(|u| (u.id, u.username)),
        Some((user_id, "guesser".into()))
    );
    // Without an address there is no second count; an unknown name reads no account.
    let (counts, user) = read(&mut conn, "nobody", None);
    assert_eq!((counts, user), (vec![2], None));
    auth_failures::delete(&mut conn, &first).unwrap();
    let (counts, _) = read(&mut conn, "guesser", Some(buckets[1].as_str()));
    assert_eq!(counts, [1, 0]);
    assert_session_waits_for_the_flush(&mut conn);
}

on_both_backends!(a_password_attempts_statements_keep_generic_plans);

/// Every password attempt reads its budgets and, when it succeeds, deletes its provisional
/// rows; PostgreSQL once planned both afresh at (nearly) each execution, a tenth of a
/// millisecond each, since an array parameter made every generic plan look dearer than a
/// custom one. After the five custom plans PostgreSQL always tries first, a statement it
/// keeps prepared must run on a generic plan. On a table this small PostgreSQL would pick a
/// generic plan for the old `id = ANY($1)` DELETE too, so only the reading's half of this
/// check would have caught the old statements (the count got no generic plan at all).
fn a_password_attempts_statements_keep_generic_plans(db: TestDb) {
    use diesel::sql_types::{BigInt, Text};
    use gatehouse::storage::{auth_failures, DbConnection};

    let (_config, mut conn, _user_id, now) = with_user_and_demo_client(&db, "planned");
    let buckets = ["user:planned".to_owned(), "ip:192.0.2.8".to_owned()];
    for _ in 0..8 {
        let ids = auth_failures::record(&mut conn, &buckets, now).unwrap();
        let (counts, user) = auth_failures::counts_and_user(
            &mut conn,
            "planned",
            &buckets[0],
            Some(&buckets[1]),
            now - 60,
        )
        .unwrap();
        assert_eq!((counts, user.is_some()), (vec![1, 1], true));
        auth_failures::delete(&mut conn, &ids).unwrap();
    }
    let DbConnection::Postgresql(pg) = &mut conn else {
        return; // SQLite compiles a statement once and has no plans to choose between.
    };
    #[derive(diesel::QueryableByName)]
    struct Plans {
        #[diesel(sql_type = BigInt)]
        generic_plans: i64,
        #[diesel(sql_type = BigInt)]
        custom_plans: i64,
        #[diesel(sql_type = Text)]
        statement: String,
    }
    let plans: Vec<Plans> = diesel::sql_query(
        "SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements \
         WHERE statement LIKE '%auth_failures%' AND statement NOT LIKE 'INSERT%' \
         ORDER BY statement",
    )
    .load(pg)
    .unwrap();
    let kinds: Vec<&str> = plans.iter().map(|p| &p.statement[..6]).collect();
    assert_eq!(kinds, ["DELETE", "SELECT"]);
    for statement in &plans {
        assert!(
            statement.generic_plans >= 3 && statement.custom_plans <= 5,
            "{} generic and {} custom plans for {}",
            statement.generic_plans,
            statement.custom_plans,
            statement.statement
        );
    }
}

/// On PostgreSQL, the session still waits for the WAL flush on commit (`synchronous_commit`
/// on): a statement that skips it must do so for its own transaction only.
fn assert_session_waits_for_the_flush(conn: &mut gatehouse::storage::DbConnection) {
    if let gatehouse::storage::DbConnection::Postgresql(pg) = conn {
        let setting: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_setting('synchronous_commit')",
        ))
        .get_result(pg)
        .unwrap();
        assert_eq!(setting, "on");
    }
}
