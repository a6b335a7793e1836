//! Authorization codes. Only the digest of a code is stored; a redeemed code stays (marked)
//! so that a replay can be told from garbage and can revoke what the first redemption issued.

use diesel::prelude::*;

use super::schema::authorization_codes;
use super::{DbConnection, StorageResult};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = authorization_codes)]
pub struct CodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    /// The registered redirect_uri the code is bound to.
    pub redirect_uri: String,
    /// Whether the authorization request named it (then the token request must repeat it).
    pub redirect_uri_sent: bool,
    pub scope: String,
    /// The S256 code challenge, if one was sent.
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
    /// Set in the same commit as `family_id` (see `tokens::create_family`), or alone when
    /// the code was spent by a failed exchange.
    pub redeemed_at: Option<i64>,
    /// When the code was first presented again, for the record: the replay itself revokes
    /// `family_id`, which is never missing on a redeemed code that issued anything (the
    /// migration's comment predates redemption and linking sharing one commit).
    pub replayed_at: Option<i64>,
    /// The token family the redemption created.
    pub family_id: Option<String>,
}

pub fn insert(conn: &mut DbConnection, code: &CodeRow) -> StorageResult<()> {
    let statement = super::prepared::InsertCode { code };
    super::write(conn, |conn| {
        super::prepared::execute(conn, statement)?;
        Ok(())
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call marked the code redeemed: the only caller that will ever see this.
    First(CodeRow),
    /// The code had been redeemed before (by this client).
    Replay(CodeRow),
    /// The code was issued to another client: nothing is marked or revoked, so a client
    /// cannot spend or revoke another client's grant.
    OtherClient,
    Unknown,
}

/// Spends a code that will not be exchanged, or tells why it cannot be: marks it redeemed
/// with a conditional update (of two concurrent calls exactly one sees `First`, on either
/// backend), and a later presentation by the same client as a replay. An exchange that
/// issues tokens redeems the code in `tokens::create_family` instead, in the same commit.
pub fn redeem(
    conn: &mut DbConnection,
    code_hash: &str,
    client_id: &str,
    now: i64,
) -> StorageResult<Redemption> {
    // The common case in one statement (one round trip instead of four): the conditional
    // update lets exactly one of two concurrent redemptions have the row back.
    let statement = super::prepared::RedeemCode {
        code_hash,
        client_id,
        now,
    };
    let first: Option<CodeRow> = super::write(conn, |conn| {
        Ok(super::on_native_connection!(conn, |c| statement
            .get_result(c)
            .optional())?)
    })?;
    if let Some(row) = first {
        return Ok(Redemption::First(row));
    }
    // A replay, another client's code, or garbage: told apart in one transaction.
    super::write_transaction(conn, |conn| {
        let own_code = authorization_codes::table
            .find(code_hash)
            .filter(authorization_codes::client_id.eq(client_id));
        let marked = diesel::update(own_code.filter(authorization_codes::redeemed_at.is_null()))
            .set(authorization_codes::redeemed_at.eq(now))
            .execute(conn)?;
        if marked == 0 {
            diesel::update(own_code.filter(authorization_codes::replayed_at.is_null()))
                .set(authorization_codes::replayed_at.eq(now))
                .execute(conn)?;
        }
        let row: Option<CodeRow> = authorization_codes::table
            .find(code_hash)
            .select(CodeRow::as_select())
            .get_result(conn)
            .optional()?;
        Ok(match (marked, row) {
            (_, Some(row)) if row.client_id != client_id => Redemption::OtherClient,
            (1, Some(row)) => Redemption::First(row),
            (_, Some(row)) => Redemption::Replay(row),
            (_, None) => Redemption::Unknown,
        })
    })
}

/// Inside a write: marks the code redeemed for `family_id` if it is still unredeemed and
/// `client_id`'s. Returns whether it did.
pub(super) fn redeem_into(
    conn: &mut DbConnection,
    code_hash: &str,
    client_id: &str,
    now: i64,
    family_id: &str,
) -> StorageResult<bool> {
    let statement = super::prepared::RedeemInto {
        code_hash,
        client_id,
        now,
        family_id,
    };
    Ok(super::prepared::execute(conn, statement)? == 1)
}

/// Looks a code up without redeeming it.
pub fn find(conn: &mut DbConnection, code_hash: &str) -> StorageResult<Option<CodeRow>> {
    Ok(super::on_native_connection!(conn, |c| {
        authorization_codes::table
            .find(code_hash)
            .select(CodeRow::as_select())
            .get_result(c)
            .optional()
    })?)
}

/// Codes are useless once expired; keep redeemed ones a while for replay detection.
pub fn delete_expired_before(conn: &mut DbConnection, cutoff: i64) -> StorageResult<usize> {
    super::write(conn, |conn| {
        Ok(diesel::delete(
            authorization_codes::table.filter(authorization_codes::expires_at.lt(cutoff)),
        )
        .execute(conn)?)
    })
}
