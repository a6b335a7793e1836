//! Authorization codes as presented. A code carries its grant sealed (`oauth::sealed_code`),
//! so nothing is stored when it is issued; its row is written when it is first presented,
//! keyed by the code's digest, and stays a day past the code's expiry (the housekeeping
//! sweep), so that a replay can revoke what the first redemption issued.

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
    /// When the row was written: in the commit that issued `family_id` (see
    /// `tokens::create_family`), or alone when the code was spent by a failed exchange.
    pub redeemed_at: Option<i64>,
    /// When the code was first presented again, for the record: the replay itself revokes
    /// `family_id`, which is never missing on a redeemed code that issued anything.
    pub replayed_at: Option<i64>,
    /// The token family the redemption created.
    pub family_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call recorded the code spent: the only caller that will ever see this.
    First,
    /// The code had been presented before (by this client).
    Replay(Box<CodeRow>),
    /// Nothing is recorded, marked or revoked: the code's user no longer exists (erased by
    /// hand), or the row under this digest is another client's or went between the two
    /// statements (swept). `extract` refuses another client's code before it gets here;
    /// this keeps the storage layer's own guard.
    Unrecorded,
}

/// Records a code (opened from its seal, see `oauth::sealed_code`) spent without being
/// exchanged, or tells why it cannot be: of two concurrent calls exactly one inserts the
/// row and sees `First`, on either backend, and a later presentation by the same client is
/// a replay. An exchange that issues tokens records its code in `tokens::create_family`
/// instead, in the same commit.
pub fn spend(conn: &mut DbConnection, code: &CodeRow, now: i64) -> StorageResult<Redemption> {
    let spent = CodeRow {
        redeemed_at: Some(now),
        replayed_at: None,
        family_id: None,
        ..code.clone()
    };
    super::write_transaction(conn, |conn| {
        if record_redeemed(conn, &spent, false)? {
            return Ok(Redemption::First);
        }
        let own_code = authorization_codes::table
            .find(&code.code_hash)
            .filter(authorization_codes::client_id.eq(&code.client_id));
        diesel::update(own_code.filter(authorization_codes::replayed_at.is_null()))
            .set(authorization_codes::replayed_at.eq(now))
            .execute(conn)?;
        let row: Option<CodeRow> = authorization_codes::table
            .find(&code.code_hash)
            .select(CodeRow::as_select())
            .get_result(conn)
            .optional()?;
        Ok(match row {
            Some(row) if row.client_id == code.client_id => Redemption::Replay(Box::new(row)),
            // No row: its user is gone, or it was swept in between; or another client's.
            _ => Redemption::Unrecorded,
        })
    })
}

/// Inside a write: inserts `code` as given (redeemed) unless a row for it exists, its user
/// no longer exists, or, with `only_for_enabled_user`, its user is disabled. Returns
/// whether it did.
pub(super) fn record_redeemed(
    conn: &mut DbConnection,
    code: &CodeRow,
    only_for_enabled_user: bool,
) -> StorageResult<bool> {
    let statement = super::prepared::InsertRedeemedCode {
        code,
        only_for_enabled_user,
    };
    Ok(super::prepared::execute(conn, statement)? == 1)
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
