//! oxide-auth's Registrar over the clients table: exact redirect URIs, scope policy, and
//! client authentication with argon2id.

use std::borrow::Cow;
use std::sync::Arc;

use oxide_auth::endpoint::{PreGrant, Registrar, Scope};
use oxide_auth::primitives::registrar::{
    BoundClient, ClientUrl, ExactUrl, RegisteredUrl, RegistrarError,
};

use super::context::FlowContext;
use crate::crypto::password;

pub struct DbRegistrar<'a> {
    pub ctx: &'a FlowContext<'a>,
}

impl DbRegistrar<'_> {
    fn client(&self, client_id: &str) -> Result<Arc<super::client::Client>, RegistrarError> {
        match self.ctx.client(client_id) {
            Ok(Some(client)) => Ok(client),
            Ok(None) => Err(RegistrarError::Unspecified),
            Err(()) => Err(RegistrarError::PrimitiveError),
        }
    }
}

impl Registrar for DbRegistrar<'_> {
    fn bound_redirect<'b>(&self, bound: ClientUrl<'b>) -> Result<BoundClient<'b>, RegistrarError> {
        let client = self.client(&bound.client_id)?;
        let requested = bound.redirect_uri.as_ref().map(|u| u.as_str());
        let registered = client
            .redirect_uri_for(requested)
            .ok_or(RegistrarError::Unspecified)?;
        let exact = ExactUrl::new(registered.clone()).map_err(|_| RegistrarError::Unspecified)?;
        self.ctx.notes.borrow_mut().bound_redirect = Some((registered, requested.is_some()));
        Ok(BoundClient {
            client_id: bound.client_id,
            redirect_uri: Cow::Owned(RegisteredUrl::Exact(exact)),
        })
    }

    fn negotiate(
        &self,
        bound: BoundClient,
        scope: Option<Scope>,
    ) -> Result<PreGrant, RegistrarError> {
        let client = self.client(&bound.client_id)?;
        let requested = scope.as_ref().map(super::scope::to_string);
        let granted = client
            .negotiate_scope(requested.as_deref())
            .ok_or(RegistrarError::Unspecified)?;
        let scope = super::scope::parse(&granted).ok_or(RegistrarError::Unspecified)?;
        Ok(PreGrant {
            client_id: bound.client_id.into_owned(),
            redirect_uri: bound.redirect_uri.into_owned(),
            scope,
        })
    }

    /// Public clients authenticate with their id alone; confidential ones need their secret.
    /// An unknown client still costs one argon2 verification, so timing does not tell.
    fn check(&self, client_id: &str, passphrase: Option<&[u8]>) -> Result<(), RegistrarError> {
        let client = match self.ctx.client(client_id) {
            Ok(client) => client,
            Err(()) => return Err(RegistrarError::PrimitiveError),
        };
        let secret = passphrase.map(String::from_utf8_lossy);
        let authenticated = match (client, secret) {
            (Some(client), None) => client.is_public(),
            (Some(client), Some(secret)) => match &client.secret_hash {
                Some(hash) => self.ctx.verify_secret(client_id, &secret, hash),
                None => false,
            },
            (None, Some(secret)) => {
                password::verify_dummy(&secret);
                false
            }
            (None, None) => false,
        };
        if !authenticated {
            return Err(RegistrarError::Unspecified);
        }
        self.ctx.notes.borrow_mut().authenticated_client = Some(client_id.to_owned());
        Ok(())
    }
}
