//! The writes every user token costs, as statements each database keeps prepared.
//!
//! diesel never keeps an UPDATE prepared (nor an INSERT whose optional fields PostgreSQL may
//! fill with DEFAULT), so both databases parsed and planned those statements on every
//! request: on SQLite that was an eighth of the time the writer gate was held under the
//! authorization-code flow. The statements here have static query ids, so diesel prepares
//! each once per connection.
//!
//! PostgreSQL shares the cores with gatehouse in most deployments, and what it spends per
//! round trip (a wake-up, a parse of the message, a plan lookup, a reply) is more than
//! what the statement itself does. As a diesel transaction, creating a family took six round
//! trips; as one statement with data-modifying CTEs (which SQLite does not have), it takes
//! one. Rotating a refresh token is one UPDATE on both.
//!
//! Within one statement every part sees the same snapshot, and foreign keys are checked
//! when the statement ends, so the order of the parts does not matter, with two exceptions
//! that the rotation and the code exchange rely on: under READ COMMITTED an UPDATE that
//! finds its row changed by a transaction that committed meanwhile re-checks its WHERE
//! clause against the new row, and an INSERT ... ON CONFLICT DO NOTHING that meets another
//! transaction's uncommitted row waits for it, then does nothing if it committed.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::{PgConnection, QueryResult, RunQueryDsl, SqliteConnection};

use super::audit::AuditRow;
use super::codes::CodeRow;
use super::tokens::{FamilyRow, LiveRefresh};
use super::DbConnection;

/// Pushes values as comma-separated bind parameters: `push_binds!(out; Text => &a, ...)`.
macro_rules! push_binds {
    ($out:expr; $first_type:ty => $first:expr $(, $type:ty => $value:expr)* $(,)?) => {{
        $out.push_bind_param::<$first_type, _>($first)?;
        $(
            $out.push_sql(", ");
            $out.push_bind_param::<$type, _>($value)?;
        )*
    }};
}

/// A new family's values, as bind parameters in the order of `family_columns!`.
macro_rules! push_family_values {
    ($out:ident, $family:expr) => {{
        let family: &FamilyRow = $family;
        push_binds!($out;
            Text => &family.id,
            Text => &family.client_id,
            Nullable<Text> => &family.user_id,
            Text => &family.grant_type,
            Text => &family.scope,
            BigInt => &family.created_at,
            BigInt => &family.expires_at,
            Nullable<Text> => &family.refresh_hash,
            BigInt => &family.refresh_generation,
            Nullable<BigInt> => &family.refresh_created_at,
            Nullable<BigInt> => &family.refresh_idle_expires_at,
        );
    }};
}

/// The columns a new row sets (the other, `revoked_at`, starts NULL), as literals for
/// `concat!`.
macro_rules! family_columns {
    () => {
        concat!(
            "id, client_id, user_id, grant_type, scope, created_at, expires_at, ",
            "refresh_hash, refresh_generation, refresh_created_at, refresh_idle_expires_at"
        )
    };
}
macro_rules! audit_columns {
    () => {
        "id, occurred_at, event, outcome, user_id, client_id, ip, detail"
    };
}

/// The same SQL for both databases: `on_both_backends!(Statement |statement, out| { ... })`.
macro_rules! on_both_backends {
    ($statement:ident |$this:ident, $out:ident| $body:block) => {
        on_both_backends!(@one Pg, $statement, $this, $out, $body);
        on_both_backends!(@one Sqlite, $statement, $this, $out, $body);
    };
    (@one $backend:ty, $statement:ident, $this:ident, $out:ident, $body:block) => {
        impl QueryFragment<$backend> for $statement<'_> {
            fn walk_ast<'b>(&'b self, mut $out: AstPass<'_, 'b, $backend>) -> QueryResult<()> {
                let $this = self;
                $body
            }
        }
    };
}

/// Replaces a family's live refresh token (digest `old_hash`, `generation`) with
/// `successor`, unless the family was revoked: the rotation, on both databases. The family's
/// row is the lock a revocation takes too, and under READ COMMITTED an UPDATE that waited
/// for a concurrent one re-checks its WHERE against the new row: of two rotations of the
/// same token the second finds another digest, and one that waited for a revocation finds
/// `revoked_at` set. No indexed column changes, so PostgreSQL can write it as a heap-only
/// tuple: one WAL record where marking the old token and inserting its successor (with two
/// index entries) and locking the family took five.
pub struct RotateInFamily<'a> {
    pub family_id: &'a str,
    pub generation: i64,
    pub old_hash: &'a str,
    pub successor: &'a LiveRefresh,
}

/// `RotateInFamily`'s statement: `UPDATE ... SET ... WHERE`, its guards, and nothing after.
macro_rules! push_rotation {
    ($out:ident, $rotation:expr) => {{
        let rotation: &RotateInFamily = $rotation;
        let successor = rotation.successor;
        $out.push_sql(concat!(
            "UPDATE token_families SET (refresh_hash, refresh_generation, refresh_created_at,",
            " refresh_idle_expires_at) = ("
        ));
        push_binds!($out;
            Text => &successor.token_hash,
            BigInt => &successor.generation,
            BigInt => &successor.created_at,
        );
        // Never past the family's end (`RotateRedeemable`'s caller has not read it).
        $out.push_sql(", CASE WHEN ");
        $out.push_bind_param::<BigInt, _>(&successor.idle_expires_at)?;
        $out.push_sql(" < expires_at THEN ");
        $out.push_bind_param::<BigInt, _>(&successor.idle_expires_at)?;
        $out.push_sql(" ELSE expires_at END) WHERE id = ");
        $out.push_bind_param::<Text, _>(rotation.family_id)?;
        $out.push_sql(" AND refresh_generation = ");
        $out.push_bind_param::<BigInt, _>(&rotation.generation)?;
        $out.push_sql(" AND refresh_hash = ");
        $out.push_bind_param::<Text, _>(rotation.old_hash)?;
        $out.push_sql(" AND revoked_at IS NULL");
    }};
}

on_both_backends!(
    RotateInFamily | statement,
    out | {
        push_rotation!(out, statement);
        Ok(())
    }
);

/// `RotateInFamily` with every check a refresh grant makes of the token itself, for the
/// rotation that reads the token as it rotates it: the token's client is `client_id`, the
/// family is live and its user enabled, the token has not idled out, and the family ends no
/// sooner than `until` (so that the grant is still valid when oxide-auth looks). The
/// successor's idle limit is capped at the family's end by the statement, since the caller
/// has not read it. Returns the family's row as the rotation left it, or nothing when any
/// check failed.
pub struct RotateRedeemable<'a> {
    pub rotation: RotateInFamily<'a>,
    pub client_id: &'a str,
    pub now: i64,
    pub until: i64,
}

on_both_backends!(
    RotateRedeemable | statement,
    out | {
        push_rotation!(out, &statement.rotation);
        out.push_sql(" AND client_id = ");
        out.push_bind_param::<Text, _>(statement.client_id)?;
        out.push_sql(" AND refresh_idle_expires_at > ");
        out.push_bind_param::<BigInt, _>(&statement.now)?;
        out.push_sql(" AND expires_at > ");
        out.push_bind_param::<BigInt, _>(&statement.until)?;
        out.push_sql(concat!(
            " AND (user_id IS NULL OR EXISTS (SELECT 1 FROM users",
            " WHERE users.id = token_families.user_id AND NOT users.disabled))",
            // In `FamilyRow`'s field order.
            " RETURNING id, client_id, user_id, grant_type, scope, created_at, expires_at,",
            " revoked_at, refresh_hash, refresh_generation, refresh_created_at,",
            " refresh_idle_expires_at"
        ));
        Ok(())
    }
);

/// The columns of `authorization_codes`, in the order of the table and of `CodeRow`.
const CODE_COLUMNS: &str = "code_hash, client_id, user_id, redirect_uri, redirect_uri_sent, \
     scope, code_challenge, nonce, auth_time, created_at, expires_at, redeemed_at, replayed_at, \
     family_id";

/// Stands in for the code a family created without one does not record.
static NO_CODE: CodeRow = CodeRow {
    code_hash: String::new(),
    client_id: String::new(),
    user_id: String::new(),
    redirect_uri: String::new(),
    redirect_uri_sent: false,
    scope: String::new(),
    code_challenge: None,
    nonce: None,
    auth_time: 0,
    created_at: 0,
    expires_at: 0,
    redeemed_at: None,
    replayed_at: None,
    family_id: None,
};

/// `INSERT INTO authorization_codes (CODE_COLUMNS)`, then `$open`, the code's values as
/// bind parameters in that order, and `$close`.
macro_rules! insert_code {
    ($out:ident, $code:expr, $open:literal, $close:literal) => {{
        let code = $code;
        $out.push_sql("INSERT INTO authorization_codes (");
        $out.push_sql(CODE_COLUMNS);
        $out.push_sql($open);
        push_binds!($out;
            Text => &code.code_hash,
            Text => &code.client_id,
            Text => &code.user_id,
            Text => &code.redirect_uri,
            Bool => &code.redirect_uri_sent,
            Text => &code.scope,
            Nullable<Text> => &code.code_challenge,
            Nullable<Text> => &code.nonce,
            BigInt => &code.auth_time,
            BigInt => &code.created_at,
            BigInt => &code.expires_at,
            Nullable<BigInt> => &code.redeemed_at,
            Nullable<BigInt> => &code.replayed_at,
            Nullable<Text> => &code.family_id,
        );
        $out.push_sql($close);
    }};
}

/// Inserts a new family (with its first refresh token, when the client may refresh). With a
/// code, the same statement records the code redeemed for the family, and inserts nothing
/// unless it was this statement that recorded it: of two concurrent redemptions the second
/// waits for the first's uncommitted row, then finds the conflict and does nothing. Returns
/// how many codes this statement recorded (1, or 0 when another presentation came first,
/// the code's user was disabled or no longer exists, or no code was given).
pub struct CreateFamily<'a> {
    pub family: &'a FamilyRow,
    /// The code's row as it is to be recorded: redeemed, for `family`.
    pub code: Option<&'a CodeRow>,
}

impl QueryFragment<Pg> for CreateFamily<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let family = self.family;
        // The statement's text must not depend on the values, or it could not be prepared
        // once: a missing code is a bind that a WHERE clause tests.
        let flag = |set: bool| -> &'static bool {
            if set {
                &true
            } else {
                &false
            }
        };
        // The code's row names the family inserted beside it: foreign keys are checked when
        // the statement ends. Without a code, a placeholder row that a false flag keeps out.
        // A code of a user disabled (or deleted) since it was issued is not redeemed.
        let code = self.code.unwrap_or(&NO_CODE);
        out.push_sql("WITH redeemed AS (");
        insert_code!(out, code, ") SELECT ", " WHERE ");
        out.push_bind_param::<Bool, _>(flag(self.code.is_some()))?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM users WHERE id = ");
        out.push_bind_param::<Text, _>(&code.user_id)?;
        out.push_sql(concat!(
            " AND NOT disabled) ON CONFLICT (code_hash) DO NOTHING RETURNING 1),",
            " proceed AS (SELECT 1 WHERE NOT "
        ));
        out.push_bind_param::<Bool, _>(flag(self.code.is_some()))?;
        out.push_sql(concat!(
            " OR EXISTS (SELECT 1 FROM redeemed)), family AS (INSERT INTO token_families (",
            family_columns!(),
            ") SELECT ",
        ));
        push_family_values!(out, family);
        out.push_sql(" FROM proceed) SELECT count(*) FROM redeemed");
        Ok(())
    }
}

/// Records a presented code as given (redeemed, and for SQLite's family creation linked to
/// its family) unless a row for it exists: of two concurrent presentations exactly one
/// inserts (1 row), and a conflict (0) means the code was presented before. It inserts
/// nothing (0) either when the code's user no longer exists (erased by hand: the row's
/// foreign key would fail) or, with `only_for_enabled_user`, is disabled, as an exchange
/// requires; a code that is only spent is recorded for a disabled user too. diesel renders
/// an insert whose optional fields may be DEFAULT afresh each time and never keeps it
/// prepared.
pub struct InsertRedeemedCode<'a> {
    pub code: &'a CodeRow,
    pub only_for_enabled_user: bool,
}

on_both_backends!(
    InsertRedeemedCode | statement,
    out | {
        insert_code!(out, statement.code, ") SELECT ", " WHERE EXISTS (");
        out.push_sql("SELECT 1 FROM users WHERE id = ");
        out.push_bind_param::<Text, _>(&statement.code.user_id)?;
        out.push_sql(" AND NOT (");
        out.push_bind_param::<Bool, _>(&statement.only_for_enabled_user)?;
        out.push_sql(" AND disabled)) ON CONFLICT (code_hash) DO NOTHING");
        Ok(())
    }
);

/// Inserts a new family (SQLite's family creation is a transaction of several statements;
/// PostgreSQL's is `CreateFamily`). diesel renders an insert of a row with optional fields
/// afresh each time on SQLite, which may leave a NULL field out, and never keeps it
/// prepared.
pub struct InsertFamily<'a> {
    pub family: &'a FamilyRow,
}

on_both_backends!(
    InsertFamily | statement,
    out | {
        out.push_sql(concat!(
            "INSERT INTO token_families (",
            family_columns!(),
            ") VALUES ("
        ));
        push_family_values!(out, statement.family);
        out.push_sql(")");
        Ok(())
    }
);

/// Whether the access token `jti` was revoked on its own, or its family `family_id` (empty
/// for a token of no family) was revoked or is gone: the sweep deletes a family only after
/// every access token of it expired, so a missing family was deleted by hand with its user.
pub struct AccessRevoked<'a> {
    pub jti: &'a str,
    pub family_id: &'a str,
}

on_both_backends!(
    AccessRevoked | statement,
    out | {
        out.push_sql("SELECT EXISTS (SELECT 1 FROM access_tokens WHERE jti = ");
        out.push_bind_param::<Text, _>(statement.jti)?;
        out.push_sql(" AND revoked_at IS NOT NULL) OR (");
        out.push_bind_param::<Text, _>(statement.family_id)?;
        out.push_sql(" <> '' AND NOT EXISTS (SELECT 1 FROM token_families WHERE id = ");
        out.push_bind_param::<Text, _>(statement.family_id)?;
        out.push_sql(" AND revoked_at IS NULL))");
        Ok(())
    }
);

/// Records one failed password attempt per bucket (PostgreSQL; SQLite takes diesel's
/// multi-row insert, which commits without a flush there anyway). diesel never keeps a
/// multi-row insert prepared; with arrays the text is the same for any number of rows.
///
/// It commits without waiting for the WAL flush (`synchronous_commit` off for this
/// statement's own transaction only, like `SET LOCAL`): rate-limit rows are counters, not
/// records. A crash of PostgreSQL can lose the last fraction of a second of them, which
/// gives an attacker who can crash the database that many more guesses, and nothing else;
/// the durable writes of the same login (its tokens) still wait.
pub struct InsertFailures<'a> {
    pub ids: &'a [String],
    pub buckets: &'a [String],
    pub at: i64,
}

impl QueryFragment<Pg> for InsertFailures<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("INSERT INTO auth_failures (id, bucket, occurred_at) SELECT id, bucket, ");
        out.push_bind_param::<BigInt, _>(&self.at)?;
        out.push_sql(" FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(self.buckets)?;
        out.push_sql(concat!(
            ") AS failure (id, bucket),",
            " (SELECT set_config('synchronous_commit', 'off', true)) AS lose_on_crash"
        ));
        Ok(())
    }
}

/// Deletes an attempt's provisional failure rows, one per bucket: the attempt succeeded, or
/// was refused unchecked. On PostgreSQL it commits without waiting for the WAL flush, as
/// `InsertFailures` writes them: a crash can bring back the rows of the last fraction of a
/// second, each then counting as one failure.
///
/// Two scalar ids (`second` is `""` for an attempt with one bucket), not an array: with an
/// array parameter PostgreSQL planned the DELETE afresh at most executions, and SQLite
/// compiled an IN list for every attempt.
pub struct DeleteFailures<'a> {
    pub first: &'a str,
    pub second: &'a str,
}

impl QueryFragment<Pg> for DeleteFailures<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(concat!(
            "DELETE FROM auth_failures USING",
            " (SELECT set_config('synchronous_commit', 'off', true)) AS lose_on_crash",
            " WHERE id IN ("
        ));
        push_binds!(out; Text => self.first, Text => self.second);
        out.push_sql(")");
        Ok(())
    }
}

impl QueryFragment<Sqlite> for DeleteFailures<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("DELETE FROM auth_failures WHERE id IN (");
        push_binds!(out; Text => self.first, Text => self.second);
        out.push_sql(")");
        Ok(())
    }
}

/// What deciding a password attempt reads, in one statement: the failures of its username's
/// bucket and of its address's bucket since `since` (the attempt's own provisional rows,
/// committed before, included), and the account the username names, if any.
///
/// It replaced a count over `bucket = ANY($1)` and a read of the user: two round trips, and
/// PostgreSQL planned the count afresh at every execution (an array parameter makes every
/// generic plan look dearer than a custom one), 0.11 ms of planning per attempt. With one
/// scalar parameter per bucket it keeps a generic plan, as every other hot statement does.
pub struct FailureCountsAndUser<'a> {
    pub username: &'a str,
    pub user_bucket: &'a str,
    /// `""` when the attempt has no address: no row has that bucket.
    pub ip_bucket: &'a str,
    pub since: i64,
}

on_both_backends!(
    FailureCountsAndUser | statement,
    out | {
        // The user's columns in `UserRow`'s field order, which `UserRow::as_select()` gives
        // every other read of a user.
        out.push_sql(concat!(
            "SELECT users.id, users.username, users.password_hash, users.disabled,",
            " users.created_at, users.updated_at,",
            " (SELECT count(*) FROM auth_failures WHERE bucket = "
        ));
        out.push_bind_param::<Text, _>(statement.user_bucket)?;
        out.push_sql(" AND occurred_at > ");
        out.push_bind_param::<BigInt, _>(&statement.since)?;
        out.push_sql("), (SELECT count(*) FROM auth_failures WHERE bucket = ");
        out.push_bind_param::<Text, _>(statement.ip_bucket)?;
        out.push_sql(" AND occurred_at > ");
        out.push_bind_param::<BigInt, _>(&statement.since)?;
        out.push_sql(") FROM (SELECT 1) AS attempt LEFT JOIN users ON users.username = ");
        out.push_bind_param::<Text, _>(statement.username)?;
        Ok(())
    }
);

/// One audit row, for SQLite's batches (PostgreSQL's go as `InsertAuditRows`; it renders
/// for both only because `execute` takes either connection). A multi-row INSERT has as
/// many placeholders as rows, so SQLite compiled it afresh for every batch the audit
/// writer appended: 10k instructions per token issued. This one is compiled once per
/// connection and run per row, inside the batch's transaction.
pub struct InsertAuditRow<'a> {
    pub row: &'a AuditRow,
}

on_both_backends!(
    InsertAuditRow | statement,
    out | {
        let row = statement.row;
        out.push_sql(concat!(
            "INSERT INTO audit_events (",
            audit_columns!(),
            ") VALUES ("
        ));
        push_binds!(out;
            Text => &row.id,
            BigInt => &row.occurred_at,
            Text => &row.event,
            Text => &row.outcome,
            Nullable<Text> => &row.user_id,
            Nullable<Text> => &row.client_id,
            Nullable<Text> => &row.ip,
            Nullable<Text> => &row.detail,
        );
        out.push_sql(")");
        Ok(())
    }
);

/// Any number of audit rows as one statement with one array per column (PostgreSQL): its
/// text does not depend on the number of rows, so it is parsed and planned once per
/// connection, where a multi-row INSERT was parsed and planned for every batch.
pub struct InsertAuditRows<'a> {
    ids: Vec<&'a str>,
    occurred_at: Vec<i64>,
    events: Vec<&'a str>,
    outcomes: Vec<&'a str>,
    user_ids: Vec<Option<&'a str>>,
    client_ids: Vec<Option<&'a str>>,
    ips: Vec<Option<&'a str>>,
    details: Vec<Option<&'a str>>,
}

impl<'a> InsertAuditRows<'a> {
    pub fn of(rows: &'a [AuditRow]) -> InsertAuditRows<'a> {
        InsertAuditRows {
            ids: rows.iter().map(|r| r.id.as_str()).collect(),
            occurred_at: rows.iter().map(|r| r.occurred_at).collect(),
            events: rows.iter().map(|r| r.event.as_str()).collect(),
            outcomes: rows.iter().map(|r| r.outcome.as_str()).collect(),
            user_ids: rows.iter().map(|r| r.user_id.as_deref()).collect(),
            client_ids: rows.iter().map(|r| r.client_id.as_deref()).collect(),
            ips: rows.iter().map(|r| r.ip.as_deref()).collect(),
            details: rows.iter().map(|r| r.detail.as_deref()).collect(),
        }
    }
}

impl QueryFragment<Pg> for InsertAuditRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(concat!(
            "INSERT INTO audit_events (",
            audit_columns!(),
            ") SELECT * FROM unnest("
        ));
        push_binds!(out;
            Array<Text> => &self.ids,
            Array<BigInt> => &self.occurred_at,
            Array<Text> => &self.events,
            Array<Text> => &self.outcomes,
            Array<Nullable<Text>> => &self.user_ids,
            Array<Nullable<Text>> => &self.client_ids,
            Array<Nullable<Text>> => &self.ips,
            Array<Nullable<Text>> => &self.details,
        );
        out.push_sql(")");
        Ok(())
    }
}

/// Runs a statement that returns no rows on whichever database `conn` is.
pub fn execute<S>(conn: &mut DbConnection, statement: S) -> QueryResult<usize>
where
    S: ExecuteDsl<PgConnection> + ExecuteDsl<SqliteConnection>,
{
    super::on_native_connection!(conn, |c| ExecuteDsl::execute(statement, c))
}

/// Static query ids: diesel then keeps each statement prepared on the connection. A
/// statement that returns rows names their SQL type; one that returns none only executes.
macro_rules! prepared_once {
    ($($statement:ident $(-> $sql_type:ty)?),*) => {$(
        impl QueryId for $statement<'_> {
            type QueryId = $statement<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        $(
            impl Query for $statement<'_> {
                type SqlType = $sql_type;
            }
        )?

        impl<Conn> RunQueryDsl<Conn> for $statement<'_> {}
    )*};
}

prepared_once!(
    RotateInFamily,
    RotateRedeemable -> (
        Text,
        Text,
        Nullable<Text>,
        Text,
        Text,
        BigInt,
        BigInt,
        Nullable<BigInt>,
        Nullable<Text>,
        BigInt,
        Nullable<BigInt>,
        Nullable<BigInt>
    ),
    CreateFamily -> BigInt,
    InsertRedeemedCode,
    InsertFamily,
    AccessRevoked -> Bool,
    InsertFailures,
    DeleteFailures,
    FailureCountsAndUser -> (
        Nullable<(Text, Text, Text, Bool, BigInt, BigInt)>,
        BigInt,
        BigInt
    ),
    InsertAuditRow,
    InsertAuditRows
);
