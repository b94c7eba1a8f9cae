//! What can go wrong when talking to a VEEM, in words an operator can act on.

use std::error::Error as _;
use std::io;

use veem_api::Problem;

/// An error of one call of the client.
///
/// Each message is complete on its own (the transport message already names the root cause),
/// so a printer shows `to_string()` and need not walk the source chain.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VEEM refused the request and said why (a non-2xx answer with a problem document).
    #[error("{} ({}): {}", .0.title, .0.code, .0.detail)]
    Api(Problem),
    /// A non-2xx answer without a problem document (a proxy, or a route that does not exist).
    #[error("veem answered http {status}{}", body_excerpt(.body))]
    Http { status: u16, body: String },
    /// The VEEM could not be reached, or the connection broke.
    #[error("{}", transport_message(.0))]
    Transport(#[source] reqwest::Error),
    /// A 2xx answer whose body is not what the contract promises.
    #[error("unexpected answer from veem: {0}")]
    Decode(String),
    /// Reading or writing a local file.
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid veem url {0}")]
    InvalidUrl(String),
    #[error("the token contains characters that an http header cannot carry")]
    InvalidToken,
    /// The CA file given to verify the VEEM's certificate cannot be used.
    #[error("{0}")]
    Tls(#[source] veem_tls::TlsError),
}

impl ClientError {
    /// The problem's stable code (`not_found`, `wrong_state`, ...), when the VEEM gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api(problem) => Some(&problem.code),
            _ => None,
        }
    }

    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(problem) => Some(problem.status),
            ClientError::Http { status, .. } => Some(*status),
            ClientError::Transport(error) => error.status().map(|s| s.as_u16()),
            ClientError::Decode(_)
            | ClientError::Io(_)
            | ClientError::InvalidUrl(_)
            | ClientError::InvalidToken
            | ClientError::Tls(_) => None,
        }
    }
}

/// Enough of an unexpected body to recognise it, on one line.
fn body_excerpt(body: &str) -> String {
    const MAX_CHARS: usize = 200;
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return String::new();
    }
    let mut excerpt: String = one_line.chars().take(MAX_CHARS).collect();
    if one_line.chars().count() > MAX_CHARS {
        excerpt.push_str("...");
    }
    format!(": {excerpt}")
}

/// `cannot reach veem at http://127.0.0.1:7070: connection refused`: where, and the root cause
/// rather than reqwest's layers of wrapping.
fn transport_message(error: &reqwest::Error) -> String {
    let place = error
        .url()
        .map(|url| format!("veem at {}", url.origin().ascii_serialization()))
        .unwrap_or_else(|| "veem".to_owned());
    let reason = if error.is_timeout() {
        "no answer before the timeout".to_owned()
    } else {
        root_cause(error)
    };
    if error.is_body() || error.is_decode() {
        format!("lost the connection to {place}: {reason}")
    } else {
        format!("cannot reach {place}: {reason}")
    }
}

fn root_cause(error: &reqwest::Error) -> String {
    let mut deepest: &dyn std::error::Error = error;
    let mut cause = error.source();
    while let Some(next) = cause {
        if let Some(io_error) = next.downcast_ref::<io::Error>() {
            return io_reason(io_error);
        }
        deepest = next;
        cause = next.source();
    }
    deepest.to_string()
}

fn io_reason(error: &io::Error) -> String {
    let known = match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        _ => return error.to_string(),
    };
    known.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(code: &str, status: u16) -> Problem {
        Problem {
            type_: "about:blank".into(),
            title: "Conflict".into(),
            status,
            detail: "vee-00000001 is ACTIVE".into(),
            code: code.into(),
        }
    }

    #[test]
    fn an_api_error_shows_title_code_and_detail() {
        let error = ClientError::Api(problem("wrong_state", 409));
        assert_eq!(
            error.to_string(),
            "Conflict (wrong_state): vee-00000001 is ACTIVE"
        );
        assert_eq!(error.code(), Some("wrong_state"));
        assert_eq!(error.status(), Some(409));
    }

    #[test]
    fn an_http_error_shows_a_short_excerpt_of_the_body() {
        let error = ClientError::Http {
            status: 502,
            body: format!("bad\n  gateway {}", "x".repeat(300)),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("veem answered http 502: bad gateway xxx"),
            "{text}"
        );
        assert!(text.ends_with("..."), "{text}");
        assert!(text.len() < 250, "{text}");
        assert_eq!(error.code(), None);
        assert_eq!(error.status(), Some(502));
        let empty = ClientError::Http {
            status: 404,
            body: String::new(),
        };
        assert_eq!(empty.to_string(), "veem answered http 404");
    }

    #[test]
    fn io_errors_are_named_by_kind() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "os error 111");
        assert_eq!(io_reason(&refused), "connection refused");
        let other = io::Error::other("strange");
        assert_eq!(io_reason(&other), "strange");
    }
}
