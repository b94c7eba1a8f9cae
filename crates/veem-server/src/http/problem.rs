//! Errors as RFC 9457 problem documents. `status_of` is the one place that maps an error to an
//! HTTP status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use veem_api::Problem;

use crate::error::CoreError;

pub fn status_of(error: &CoreError) -> StatusCode {
    match error {
        CoreError::MalformedDescriptor(_) | CoreError::MalformedRequest { .. } => {
            StatusCode::BAD_REQUEST
        }
        CoreError::AccessDenied(_) => StatusCode::FORBIDDEN,
        CoreError::NotFound(_) => StatusCode::NOT_FOUND,
        CoreError::InsufficientResources(_)
        | CoreError::WrongState(_)
        | CoreError::InUse(_)
        | CoreError::Pending(_)
        | CoreError::Conflict(_) => StatusCode::CONFLICT,
        CoreError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CoreError::DeploymentFailed(_) | CoreError::HostFailed { .. } => StatusCode::BAD_GATEWAY,
        CoreError::SiteUnreachable(_) | CoreError::NotLeader(_) => StatusCode::SERVICE_UNAVAILABLE,
        CoreError::SiteRefused { .. } => StatusCode::BAD_REQUEST,
        CoreError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A problem answer.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

/// What a handler answers: its body, or a problem.
pub(super) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn unauthenticated(detail: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: veem_api::code::UNAUTHENTICATED,
            detail: detail.to_owned(),
        }
    }

    pub fn forbidden(detail: &str) -> Self {
        Self::from(CoreError::AccessDenied(detail.to_owned()))
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        if matches!(error, CoreError::Internal { .. }) {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "internal error");
        }
        Self {
            status: status_of(&error),
            code: error.code(),
            detail: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let problem = Problem {
            type_: format!("urn:veem:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"veem\""),
            );
        }
        response
    }
}

/// The code of an error answer that no handler made: one of axum's own rejections.
fn code_of_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => veem_api::code::UNAUTHENTICATED,
        StatusCode::FORBIDDEN => veem_api::code::ACCESS_DENIED,
        StatusCode::NOT_FOUND => veem_api::code::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => veem_api::code::METHOD_NOT_ALLOWED,
        StatusCode::PAYLOAD_TOO_LARGE => veem_api::code::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => veem_api::code::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        s if s.is_server_error() => veem_api::code::INTERNAL,
        _ => veem_api::code::MALFORMED_REQUEST,
    }
}

/// The longest text of a plain error answer kept as a problem's `detail`.
const PLAIN_DETAIL_LIMIT: usize = 4096;

/// Answers the HTTP layer's own refusals as problem documents like every other error, so a
/// client reads one format. Handlers answer with [`ApiError`]; what reaches a client without
/// passing a handler (axum's rejections of a body over the limit, of an unreadable query string
/// or a path that is not UTF-8, of a wrong method, of a request to the agents' route that is no
/// WebSocket upgrade) would otherwise be `text/plain`, which the contract does not allow.
pub async fn for_rejections(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_DETAIL_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let mut detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        detail = format!(
            "the request body is larger than {} bytes ({detail})",
            veem_api::MAX_REQUEST_BODY_BYTES
        );
    }
    let mut problem = ApiError {
        status,
        code: code_of_status(status),
        detail,
    }
    .into_response();
    // Keep what the rejection said beside its body (`Allow` of a 405, `WWW-Authenticate`).
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_LENGTH);
    for (name, value) in problem.headers() {
        headers.insert(name.clone(), value.clone());
    }
    *problem.headers_mut() = headers;
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_status_the_contract_names() {
        let cases = [
            (CoreError::malformed("x", "y"), 400),
            (CoreError::AccessDenied(String::new()), 403),
            (CoreError::NotFound(String::new()), 404),
            (CoreError::InsufficientResources(String::new()), 409),
            (CoreError::WrongState(String::new()), 409),
            (CoreError::InUse(String::new()), 409),
        ];
        for (error, status) in cases {
            assert_eq!(status_of(&error).as_u16(), status, "{error:?}");
        }
    }
}
