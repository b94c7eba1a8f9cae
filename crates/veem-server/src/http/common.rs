//! What the handlers of every resource share: the state they are given, who calls (a principal,
//! an admin or a monitoring putter, from the bearer token), a JSON body parsed with the
//! offending field named, the limits of a batch and of a page, and a file streamed back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;
use veem_api::ItemFailure;
use veem_model::{DescriptorError, VeeId};

use super::problem::{ApiError, ApiResult};
use crate::auth::{Authenticator, Caller};
use crate::error::CoreError;
use crate::veem::{BatchOutcome, Putter, Veem};

/// What every handler is given: the core, and the tokens' principals.
#[derive(Clone)]
pub struct AppState {
    pub veem: Veem,
    pub auth: Arc<Authenticator>,
    /// This front-end, as `GET /cluster` shows it when it is alone on its store.
    pub front_end: Arc<veem_api::ClusterMember>,
    /// The bearer token `GET /metrics` asks for, if any (the config's `metrics_token`).
    pub metrics_token: Option<Arc<str>>,
}

impl AppState {
    /// The state of a VEEM serving `config`, leading since now.
    pub fn new(veem: Veem, config: &crate::Config) -> Self {
        Self {
            veem,
            auth: Arc::new(Authenticator::new(config.principals.clone())),
            front_end: Arc::new(veem_api::ClusterMember {
                name: config.front_end_name().to_owned(),
                url: config.advertise_url(),
                role: veem_api::ClusterRole::Leader,
                since_ms: crate::veem::now_ms(),
            }),
            metrics_token: config.metrics_token.as_deref().map(Arc::from),
        }
    }
}

/// The admin calling with the bearer token of `headers`, for routes outside [`AppState`].
pub(super) fn authenticated_admin(
    headers: &axum::http::HeaderMap,
    auth: &Authenticator,
) -> Result<Caller, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("no Authorization header; send 'Authorization: Bearer <token>'")
    })?;
    let caller = auth
        .authenticate(bearer_token(value)?)
        .ok_or_else(|| ApiError::unauthenticated("unknown token"))?;
    admin_only(caller)
}

fn admin_only(caller: Caller) -> Result<Caller, ApiError> {
    if caller.admin {
        Ok(caller)
    } else {
        Err(ApiError::forbidden(&format!(
            "{} is not an admin; this is an operator endpoint",
            caller.principal
        )))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("no Authorization header; send 'Authorization: Bearer <token>'")
    })?;
    bearer_token(value)
}

fn bearer_token(value: &header::HeaderValue) -> Result<&str, ApiError> {
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'")
        })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .authenticate(bearer(parts)?)
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))
    }
}

/// Who may put monitoring events: a principal, or a probe or agent with a VEE's monitoring
/// token (`veem.monitoring.token` in the VEE's context).
impl FromRequestParts<AppState> for Putter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if let Some(caller) = state.auth.authenticate(token) {
            return Ok(Putter::Principal(caller));
        }
        state
            .veem
            .putter_of_token(token)
            .ok_or_else(|| ApiError::unauthenticated("unknown token"))
    }
}

/// A caller with the admin role.
pub(super) struct Admin(pub(super) Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        admin_only(caller).map(Admin)
    }
}

/// Parses a JSON body, naming the offending field when it does not fit.
pub(super) fn parse_json<T: DeserializeOwned>(
    body: &[u8],
    descriptor: bool,
) -> Result<T, CoreError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        let reason = e.into_inner().to_string();
        if descriptor {
            CoreError::MalformedDescriptor(DescriptorError::new(field, reason))
        } else {
            CoreError::malformed(field, reason)
        }
    })
}

/// One JSON item or a JSON array of them, as PutMonitoringInformation and accounting
/// deliveries take them.
pub(super) fn parse_json_items<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, CoreError> {
    let many = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if many {
        parse_json(body, false)
    } else {
        Ok(vec![parse_json(body, false)?])
    }
}

/// Refuses a batch larger than [`veem_api::MAX_IDS_PER_CALL`] before any of it is looked at.
fn check_batch(ids: &[String]) -> Result<(), CoreError> {
    if ids.len() > veem_api::MAX_IDS_PER_CALL {
        return Err(CoreError::malformed(
            "ids",
            format!(
                "{} ids in one call; at most {} (split the batch)",
                ids.len(),
                veem_api::MAX_IDS_PER_CALL
            ),
        ));
    }
    Ok(())
}

/// A VEE id the caller wrote: text that cannot be an id names no VEE.
pub(super) fn vee_id(text: &str) -> Result<VeeId, CoreError> {
    VeeId::parse(text).map_err(|_| CoreError::NotFound(format!("no VEE {text:?}")))
}

/// The ids of a batch call as the caller wrote them, checked and parsed: the core is given
/// the ids, and text that cannot be an id fails on its own, as an id that names no VEE does.
pub(super) struct Batch<'a> {
    given: &'a [String],
    pub(super) ids: Vec<VeeId>,
    malformed: Vec<(String, CoreError)>,
}

impl<'a> Batch<'a> {
    pub(super) fn parse(given: &'a [String]) -> Result<Self, CoreError> {
        check_batch(given)?;
        let mut ids = Vec::with_capacity(given.len());
        let mut malformed = Vec::new();
        for text in given {
            match vee_id(text) {
                Ok(id) => ids.push(id),
                Err(e) => malformed.push((text.clone(), e)),
            }
        }
        Ok(Self {
            given,
            ids,
            malformed,
        })
    }

    /// Every id the core could not be given, when none can be left out (the call is all or
    /// nothing): the first of them.
    pub(super) fn all(&self) -> Result<&[VeeId], CoreError> {
        match self.malformed.first() {
            Some((_, e)) => Err(e.clone()),
            None => Ok(&self.ids),
        }
    }

    /// The answer of the call: the ids it succeeded for, and each failure in the order the
    /// caller named the ids.
    pub(super) fn answer(self, outcome: BatchOutcome) -> (Vec<String>, Vec<ItemFailure>) {
        let mut failed: Vec<(String, CoreError)> = outcome
            .failed
            .into_iter()
            .map(|(id, e)| (id.to_string(), e))
            .chain(self.malformed)
            .collect();
        let position = |id: &str| self.given.iter().position(|text| text == id);
        failed.sort_by_key(|(id, _)| position(id));
        let failed = failed
            .into_iter()
            .map(|(id, e)| ItemFailure {
                id,
                error: e.code().to_owned(),
                detail: e.to_string(),
            })
            .collect();
        let ok = outcome.ok.iter().map(ToString::to_string).collect();
        (ok, failed)
    }
}

/// A list's `limit`: 1 to 1000.
/// The whole number `name` of a query (`what` it counts, for the error), or `default`.
pub(super) fn query_number(
    query: &std::collections::HashMap<String, String>,
    name: &str,
    default: u64,
    what: &str,
) -> Result<u64, CoreError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| CoreError::malformed(name, format!("{text:?} is not {what}"))),
    }
}

pub(super) fn page_limit(value: &str) -> Result<usize, CoreError> {
    value
        .parse()
        .ok()
        .filter(|l| (1..=1000).contains(l))
        .ok_or_else(|| CoreError::malformed("limit", "must be a number from 1 to 1000"))
}

/// Streams a file; it is unlinked once open, so it goes away when the stream ends.
pub(super) async fn stream_file(path: &std::path::Path, unlink: bool) -> ApiResult<Response> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CoreError::internal("opening the file to send", e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| CoreError::internal("reading the file's size", e))?
        .len();
    if unlink {
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024)),
    )
        .into_response())
}
