//! The least server: a measured floor for the scenarios that sign. It answers the requests
//! of the client_credentials, refresh, authorization-code and password-grant scenarios with
//! only the work `floors::bound` names for them, on gatehouse's own parts: actix-web with the
//! same number of workers and blocking threads, the blocking pool for every database step,
//! gatehouse's connection pool (its default size), SQLite writer and timed checkpoints,
//! statements kept prepared on the native connection as gatehouse's hot paths keep theirs
//! (see `storage::prepared`), aws-lc-rs with the key parsed once, and gatehouse's pool of
//! argon2id hashers for the one password it checks per password grant. Besides that
//! password it checks no credentials, counts no failed attempts, keeps no audit trail, logs
//! nothing, keeps no metrics, and its tokens are a bare signature.
//!
//! Where `bound` adds up prices measured at other work (a /healthz request at 100,000/s
//! shares its wake-ups among many requests; one at a signature's pace does not), this is
//! the same work done the way a server must do it, beside the same load generator at the
//! same 8 connections. A target above what it reaches there is out of reach for a server
//! built on these parts on this machine.
//!
//! It runs as its own process (the benchmark's binary started again with
//! `--least-server URL PORT`), so that its CPU is counted apart from the load generator's
//! exactly as gatehouse's is.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sqlite::Sqlite;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, RunQueryDsl};
use gatehouse::storage::{self, DbConnection, Pool};

use crate::scenarios::Scenario;

/// The flag `main` recognises before any other.
pub const FLAG: &str = "--least-server";

/// The scenarios it serves.
pub const SCENARIOS: [Scenario; 4] = [
    Scenario::ClientCredentials,
    Scenario::Refresh,
    Scenario::AuthorizationCode,
    Scenario::Password,
];

diesel::table! {
    least_families (id) {
        id -> Text,
        generation -> BigInt,
    }
}

diesel::table! {
    least_sessions (id) {
        id -> Text,
    }
}

const TABLES: &str = "CREATE TABLE IF NOT EXISTS least_families \
    (id TEXT PRIMARY KEY NOT NULL, generation BIGINT NOT NULL); \
    CREATE TABLE IF NOT EXISTS least_sessions (id TEXT PRIMARY KEY NOT NULL)";

/// Leaves the database as the benchmark found it.
pub fn drop_tables(url: &str) -> Result<(), String> {
    storage::ConnectionManager::new(url)
        .and_then(|manager| manager.connect())
        .map_err(|e| e.to_string())?
        .batch_execute("DROP TABLE IF EXISTS least_families; DROP TABLE IF EXISTS least_sessions")
        .map_err(|e| e.to_string())
}

/// The rotation: one statement that advances a family and reads what it replaces. diesel
/// never keeps an UPDATE prepared, so it is written out with a static query id, as
/// gatehouse's own rotation is.
struct AdvanceFamily<'a> {
    id: &'a str,
}

impl QueryId for AdvanceFamily<'_> {
    type QueryId = AdvanceFamily<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for AdvanceFamily<'_> {
    type SqlType = diesel::sql_types::BigInt;
}

impl<Conn> RunQueryDsl<Conn> for AdvanceFamily<'_> {}

macro_rules! advance_family_on {
    ($backend:ty) => {
        impl QueryFragment<$backend> for AdvanceFamily<'_> {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, $backend>) -> QueryResult<()> {
                out.push_sql("UPDATE least_families SET generation = generation + 1 WHERE id = ");
                out.push_bind_param::<diesel::sql_types::Text, _>(self.id)?;
                out.push_sql(" RETURNING generation");
                Ok(())
            }
        }
    };
}
advance_family_on!(Pg);
advance_family_on!(Sqlite);

struct Shared {
    pool: Pool,
    key: RsaKeyPair,
    rng: SystemRandom,
    counter: AtomicU64,
}

impl Shared {
    /// A signature over a message the size of an access token's signing input.
    fn sign(&self) -> Result<String, String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut message = format!("{n:020}").into_bytes();
        message.resize(420, b'x');
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, &message, &mut signature)
            .map_err(|e| e.to_string())?;
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Serves until killed. `args` are what follows the flag: the database URL and the port.
pub fn serve(args: &[String]) -> Result<(), String> {
    let [url, port] = args else {
        return Err(format!("{FLAG} URL PORT"));
    };
    let port: u16 = port.parse().map_err(|e| format!("port: {e}"))?;
    let defaults = gatehouse::config::RawSettings::load(None, std::iter::empty())
        .map_err(|e| e.to_string())?;
    let pool = storage::open_pool(url, defaults.database.pool_size).map_err(|e| e.to_string())?;
    let sqlite = {
        let mut conn = pool.get().map_err(|e| e.to_string())?;
        conn.batch_execute(TABLES).map_err(|e| e.to_string())?;
        matches!(*conn, DbConnection::Sqlite(_))
    };
    // A connection for each of the benchmark's, opened before it starts: opened on demand by
    // eight sign-ins at once (no argon2 staggers them here, as it does gatehouse's), they
    // held setups up by up to 240 ms on PostgreSQL, into the measured window.
    let warm = (0..crate::CONNECTIONS)
        .map(|_| pool.get())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    drop(warm);
    let shared = web::Data::new(Shared {
        pool,
        key: RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| e.to_string())?,
        rng: SystemRandom::new(),
        counter: AtomicU64::new(0),
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    actix_web::rt::System::new().block_on(async move {
        if sqlite {
            // As gatehouse: its pool's connections do not checkpoint the write-ahead log,
            // and without this the log grows without end and reads stall behind it.
            gatehouse::startup::spawn_checkpoints(shared.pool.clone());
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                )
                .route("/login", web::get().to(login_page))
                .route("/login", web::post().to(sign_in))
                .route("/authorize", web::get().to(authorize))
                .route("/token", web::post().to(token))
        })
        .workers(cores)
        .bind(("127.0.0.1", port))
        .map_err(|e| e.to_string())?;
        let server = match gatehouse::startup::blocking_threads_per_worker(sqlite, cores, cores) {
            Some(threads) => server.worker_max_blocking_threads(threads),
            None => server,
        };
        server.run().await.map_err(|e| e.to_string())
    })
}

fn failed(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::InternalServerError().body(e.to_string())
}

/// Runs `work` on the blocking pool with a pooled connection, its writes through the
/// SQLite writer as gatehouse's go.
async fn blocking<T: Send + 'static>(
    shared: &web::Data<Shared>,
    work: impl FnOnce(&Shared, &mut DbConnection) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let shared = shared.clone();
    web::block(move || {
        let mut conn = shared.pool.get().map_err(|e| e.to_string())?;
        let _writes = storage::writes_through(&shared.pool);
        work(&shared, &mut conn)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `write` (a statement through the SQLite writer gate), then a signature; the family's
/// id is the refresh token.
fn write_then_sign(
    shared: &Shared,
    conn: &mut DbConnection,
    family: String,
    write: impl FnOnce(&mut DbConnection, &str) -> QueryResult<()>,
) -> Result<(String, Option<String>), String> {
    storage::write(conn, |conn| Ok(write(conn, &family)?)).map_err(|e| e.to_string())?;
    Ok((shared.sign()?, Some(family)))
}

async fn login_page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Set-Cookie", "csrf=least; Path=/"))
        .body(r#"<form><input type="hidden" name="csrf_token" value="least"></form>"#)
}

/// Setup only: a session row for the authorization-code scenario to read.
async fn sign_in(shared: web::Data<Shared>) -> HttpResponse {
    let id = uuid::Uuid::new_v4().to_string();
    let session = id.clone();
    let stored = blocking(&shared, move |_, conn| {
        storage::write(conn, |conn| {
            storage::on_native_connection!(conn, |c| diesel::insert_into(least_sessions::table)
                .values(least_sessions::id.eq(&session))
                .execute(c))
            .map_err(Into::into)
        })
        .map_err(|e| e.to_string())
    })
    .await;
    match stored {
        Ok(_) => HttpResponse::SeeOther()
            .insert_header(("Set-Cookie", format!("session={id}; Path=/")))
            .insert_header(("Location", "/"))
            .finish(),
        Err(e) => failed(e),
    }
}

/// One read (the session); the code is not stored, as gatehouse's is sealed.
async fn authorize(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let session = req
        .cookie("session")
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    let found = blocking(&shared, move |_, conn| {
        // get_result, not first: a LIMIT makes SQLite prepare the statement again on
        // every execution (see `storage`).
        storage::on_native_connection!(conn, |c| least_sessions::table
            .find(&session)
            .select(least_sessions::id)
            .get_result::<String>(c)
            .optional())
        .map_err(|e| e.to_string())
    })
    .await;
    match found {
        Ok(Some(_)) => HttpResponse::SeeOther()
            .insert_header((
                "Location",
                "https://app.example.com/callback?code=least&state=bench",
            ))
            .finish(),
        Ok(None) => HttpResponse::Unauthorized().finish(),
        Err(e) => failed(e),
    }
}

async fn token(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let param = |name: &str| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let answered = match param("grant_type").as_str() {
        // No database: signed on the worker, as gatehouse does.
        "client_credentials" => shared.sign().map(|token| (token, None)),
        // The user read and the password checked first, on gatehouse's argon2id pool.
        "password" => match password_checked(&shared, param("username"), param("password")).await {
            Ok(true) => new_family(&shared).await,
            Ok(false) => return HttpResponse::BadRequest().body("invalid_grant"),
            Err(e) => return failed(e),
        },
        "authorization_code" => new_family(&shared).await,
        // The rotation as one statement that also reads what it replaces.
        "refresh_token" => {
            let family = param("refresh_token");
            blocking(&shared, move |shared, conn| {
                write_then_sign(shared, conn, family, |conn, id| {
                    storage::on_native_connection!(conn, |c| AdvanceFamily { id }
                        .get_result::<i64>(c))
                    .map(drop)
                })
            })
            .await
        }
        other => return HttpResponse::BadRequest().body(format!("grant_type {other}")),
    };
    match answered {
        Ok((token, refresh)) => {
            let mut body = serde_json::json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 3600,
            });
            if let Some(refresh) = refresh {
                body["refresh_token"] = refresh.into();
            }
            HttpResponse::Ok().json(body)
        }
        Err(e) => failed(e),
    }
}

/// Whether `username` names a user whose password is `password`: one read of the user on
/// the blocking pool, then one argon2id verification on gatehouse's pool of hashers.
/// (gatehouse reads the user in the statement that also counts the attempt's failures,
/// `storage::prepared::FailureCountsAndUser`; a server that counts none reads just the row.)
async fn password_checked(
    shared: &web::Data<Shared>,
    username: String,
    password: String,
) -> Result<bool, String> {
    // gatehouse's own lookup by username; the benchmark added the user with `gatehouse users add`.
    let user = blocking(shared, move |_, conn| {
        storage::users::find_by_username(conn, &username).map_err(|e| e.to_string())
    })
    .await?;
    Ok(match user {
        Some(user) => {
            gatehouse::crypto::password::verify_async(&password, &user.password_hash).await
        }
        None => false,
    })
}

/// A family made, its id the refresh token (a password grant, the refresh scenario's setup,
/// and every authorization code).
async fn new_family(shared: &web::Data<Shared>) -> Result<(String, Option<String>), String> {
    blocking(shared, |shared, conn| {
        let family = uuid::Uuid::new_v4().to_string();
        write_then_sign(shared, conn, family, |conn, id| {
            storage::on_native_connection!(conn, |c| diesel::insert_into(least_families::table)
                .values((least_families::id.eq(id), least_families::generation.eq(0)))
                .execute(c))
            .map(drop)
        })
    })
    .await
}
