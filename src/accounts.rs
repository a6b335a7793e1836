//! User accounts: the rules for names and passwords, and the operations the CLI offers.

use crate::crypto::password;
use crate::storage::users::{self as user_store, UserRow};
use crate::storage::{now_unix, DbConnection, StorageError};

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Long enough for any passphrase, short enough that hashing it is not a denial of service.
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MAX_USERNAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username must be 1 to {MAX_USERNAME_CHARS} characters without spaces or control characters")]
    InvalidUsername,
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes")]
    InvalidPassword,
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub fn validate_username(username: &str) -> Result<(), AccountError> {
    let chars = username.chars().count();
    if chars == 0
        || chars > MAX_USERNAME_CHARS
        || username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AccountError::InvalidUsername);
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::InvalidPassword);
    }
    Ok(())
}

pub fn add_user(
    conn: &mut DbConnection,
    username: &str,
    new_password: &str,
) -> Result<UserRow, AccountError> {
    validate_username(username)?;
    validate_password(new_password)?;
    let now = now_unix();
    let user = UserRow {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.to_owned(),
        password_hash: password::hash(new_password),
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    user_store::insert(conn, &user)?;
    Ok(user)
}

/// Returns the updated user.
pub fn set_password(
    conn: &mut DbConnection,
    username: &str,
    new_password: &str,
) -> Result<UserRow, AccountError> {
    validate_password(new_password)?;
    let hash = password::hash(new_password);
    if !user_store::set_password_hash(conn, username, &hash, now_unix())? {
        return Err(AccountError::NoSuchUser(username.to_owned()));
    }
    existing(conn, username)
}

/// Returns the updated user.
pub fn set_disabled(
    conn: &mut DbConnection,
    username: &str,
    disabled: bool,
) -> Result<UserRow, AccountError> {
    let now = now_unix();
    if !user_store::set_disabled(conn, username, disabled, now)? {
        return Err(AccountError::NoSuchUser(username.to_owned()));
    }
    let user = existing(conn, username)?;
    // A disabled user keeps no working token: every grant of theirs is revoked.
    if disabled {
        crate::storage::tokens::revoke_user_families(conn, &user.id, now)?;
    }
    Ok(user)
}

fn existing(conn: &mut DbConnection, username: &str) -> Result<UserRow, AccountError> {
    user_store::find_by_username(conn, username)?
        .ok_or_else(|| AccountError::NoSuchUser(username.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_and_password_rules() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("alice@example.com").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username("al\u{0}ice").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"x".repeat(1025)).is_err());
    }
}
