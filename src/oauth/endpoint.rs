//! The oxide-auth endpoint for one operation: database-backed primitives sharing one
//! `FlowContext`, and the owner solicitor that decides between login, consent and a grant.

use oxide_auth::endpoint::{
    Authorizer, Endpoint, Extension, Issuer, OAuthError, OwnerConsent, OwnerSolicitor, Registrar,
    Scope, Scopes, Solicitation, Template,
};
use oxide_auth_actix::{OAuthResponse, WebError};

use super::authorizer::DbAuthorizer;
use super::context::{Decision, FlowContext, Interaction};
use super::issuer::DbIssuer;
use super::pkce::PkcePolicy;
use super::registrar::DbRegistrar;
use super::request::FlowRequest;
use crate::storage::consents::{self as consent_store, ConsentRow};

pub struct GatehouseEndpoint<'a> {
    registrar: DbRegistrar<'a>,
    authorizer: DbAuthorizer<'a>,
    issuer: DbIssuer<'a>,
    solicitor: ConsentSolicitor<'a>,
    pkce: PkcePolicy<'a>,
    scopes: Vec<Scope>,
}

impl<'a> GatehouseEndpoint<'a> {
    pub fn new(ctx: &'a FlowContext<'a>) -> GatehouseEndpoint<'a> {
        GatehouseEndpoint {
            registrar: DbRegistrar { ctx },
            authorizer: DbAuthorizer { ctx },
            issuer: DbIssuer { ctx },
            solicitor: ConsentSolicitor { ctx },
            pkce: PkcePolicy { ctx },
            scopes: Vec::new(),
        }
    }
}

impl Endpoint<FlowRequest> for GatehouseEndpoint<'_> {
    type Error = WebError;

    fn registrar(&self) -> Option<&dyn Registrar> {
        Some(&self.registrar)
    }

    fn authorizer_mut(&mut self) -> Option<&mut dyn Authorizer> {
        Some(&mut self.authorizer)
    }

    fn issuer_mut(&mut self) -> Option<&mut dyn Issuer> {
        Some(&mut self.issuer)
    }

    fn owner_solicitor(&mut self) -> Option<&mut dyn OwnerSolicitor<FlowRequest>> {
        Some(&mut self.solicitor)
    }

    fn scopes(&mut self) -> Option<&mut dyn Scopes<FlowRequest>> {
        Some(&mut self.scopes)
    }

    fn response(
        &mut self,
        _request: &mut FlowRequest,
        _kind: Template,
    ) -> Result<OAuthResponse, WebError> {
        Ok(OAuthResponse::ok())
    }

    fn error(&mut self, err: OAuthError) -> WebError {
        err.into()
    }

    fn web_error(&mut self, err: WebError) -> WebError {
        err
    }

    fn extension(&mut self) -> Option<&mut dyn Extension> {
        Some(&mut self.pkce)
    }
}

/// Grants when the user is signed in and has consented (now, before, or implicitly for a
/// `skip_consent` client); otherwise notes which page the user must see.
pub struct ConsentSolicitor<'a> {
    ctx: &'a FlowContext<'a>,
}

impl ConsentSolicitor<'_> {
    fn interact(&self, interaction: Interaction) -> OwnerConsent<OAuthResponse> {
        self.ctx.notes.borrow_mut().interaction = Some(interaction);
        OwnerConsent::InProgress(OAuthResponse::ok())
    }

    fn remember(&self, user_id: &str, client_id: &str, scope: &str) -> Result<(), ()> {
        let ctx = self.ctx;
        let previous =
            consent_store::find(&mut ctx.conn(), user_id, client_id).map_err(|e| ctx.fail(e))?;
        let merged = match &previous {
            Some(previous) => {
                super::scope::normalize(previous.scope.split(' ').chain(scope.split(' ')))
            }
            None => scope.to_owned(),
        };
        let row = ConsentRow {
            user_id: user_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: merged,
            granted_at: ctx.now,
        };
        consent_store::remember(&mut ctx.conn(), &row).map_err(|e| ctx.fail(e))
    }
}

impl OwnerSolicitor<FlowRequest> for ConsentSolicitor<'_> {
    fn check_consent(
        &mut self,
        _request: &mut FlowRequest,
        solicitation: Solicitation,
    ) -> OwnerConsent<OAuthResponse> {
        let ctx = self.ctx;
        let Some(owner) = &ctx.owner else {
            return self.interact(Interaction::Login);
        };
        let pre_grant = solicitation.pre_grant();
        let scope = super::scope::to_string(&pre_grant.scope);
        let client = match ctx.client(&pre_grant.client_id) {
            Ok(Some(client)) => client,
            _ => return OwnerConsent::Error(WebError::InternalError(None)),
        };
        match ctx.decision {
            Some(Decision::Deny) => return OwnerConsent::Denied,
            Some(Decision::Allow) => {
                return match self.remember(&owner.user_id, &client.id, &scope) {
                    Ok(()) => OwnerConsent::Authorized(owner.user_id.clone()),
                    Err(()) => OwnerConsent::Error(WebError::InternalError(None)),
                };
            }
            None => {}
        }
        // RFC 8252 8.6, RFC 6749 10.2: any local program can send a public client's id with a
        // loopback or private-use redirect URI, so such requests always ask the user.
        let impersonable = client.is_public()
            && !ctx
                .notes
                .borrow()
                .bound_redirect
                .as_ref()
                .is_some_and(|(uri, _)| uri.starts_with("https://"));
        if impersonable {
            return self.interact(Interaction::Consent { scope });
        }
        if client.skip_consent {
            return OwnerConsent::Authorized(owner.user_id.clone());
        }
        let remembered = match &owner.consent {
            Some(read) if read.client_id == client.id => Ok(read.scope.clone()),
            _ => consent_store::find(&mut ctx.conn(), &owner.user_id, &client.id)
                .map(|found| found.map(|consent| consent.scope)),
        };
        match remembered {
            Ok(Some(consented)) if super::scope::covers(&consented, &scope) => {
                OwnerConsent::Authorized(owner.user_id.clone())
            }
            Ok(_) => self.interact(Interaction::Consent { scope }),
            Err(e) => {
                ctx.fail(e);
                OwnerConsent::Error(WebError::InternalError(None))
            }
        }
    }
}
