//! A deadline for reading a request body, counted from the moment the headers are in, and
//! the refusals of bodies too slow or too large in the endpoint's own terms. actix bounds
//! the time to send headers (`client_request_timeout`) but not the body, so a client
//! trickling a body would otherwise keep its connection, and its buffer, forever.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpResponse};
use futures_core::Stream;
use tokio::time::Sleep;

use super::pages;
use crate::oauth::token::TokenAnswer;

pub async fn limit_body_time(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let timeout = req
        .app_data::<actix_web::web::Data<super::AppState>>()
        .map(|state| state.settings.server.body_timeout);
    let Some(timeout) = timeout.filter(|_| has_body) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let expired = Rc::new(Cell::new(false));
    let body = Deadline::new(req.take_payload(), timeout, Rc::clone(&expired));
    let body: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(body);
    req.set_payload(Payload::from(body));
    let response = next.call(req).await?;
    let refusal = if expired.get() {
        BodyRefusal::TooSlow
    } else if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // Only the body extractor answers 413 (`server.max_body_bytes`), in plain text.
        BodyRefusal::TooLarge
    } else {
        return Ok(response.map_into_left_body());
    };
    let (req, original) = response.into_parts();
    let mut refused = refusal.response(req.path());
    // The CORS layer inside this one decorated the answer being replaced; a browser client
    // can read the refusal only with the same headers.
    for (name, value) in original.headers() {
        if name.as_str().starts_with("access-control-") || name == header::VARY {
            refused.headers_mut().append(name.clone(), value.clone());
        }
    }
    // The rest of the body is still on the wire.
    refused.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Ok(ServiceResponse::new(req, refused).map_into_right_body())
}

enum BodyRefusal {
    TooSlow,
    TooLarge,
}

impl BodyRefusal {
    /// RFC 6749's JSON error at a protocol endpoint, a page for a browser anywhere else.
    fn response(&self, path: &str) -> HttpResponse {
        let (status, title, message) = match self {
            BodyRefusal::TooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "Request timeout",
                "The request body did not arrive in time.",
            ),
            BodyRefusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "The request body is larger than this server accepts.",
            ),
        };
        if super::is_protocol_endpoint(path) {
            super::token::answer(TokenAnswer::error(
                status.as_u16(),
                "invalid_request",
                message,
            ))
        } else {
            pages::error_page(status, title, message)
        }
    }
}

struct Deadline {
    body: Payload,
    sleep: Pin<Box<Sleep>>,
    expired: Rc<Cell<bool>>,
}

impl Deadline {
    fn new(body: Payload, timeout: Duration, expired: Rc<Cell<bool>>) -> Deadline {
        Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired,
        }
    }
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Poll::Ready(item) = Pin::new(&mut this.body).poll_next(cx) {
            return Poll::Ready(item);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body timeout",
            )))));
        }
        Poll::Pending
    }
}
