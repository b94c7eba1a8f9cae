//! The core's typed errors. Each has a stable contract code; the HTTP status of each lives in
//! exactly one function of the HTTP layer (`http::problem::status_of`).

use std::sync::Arc;

use veem_api::code;
use veem_model::{DescriptorError, WrongState};

/// The error under another, kept whole (shared: a [`CoreError`] is cloned to every caller
/// waiting on one outcome), so a log or a caller walking `source()` sees where it began.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    MalformedDescriptor(DescriptorError),
    /// A request that is not a descriptor but is still wrong (a bad query, an unknown field).
    #[error("{field}: {reason}")]
    MalformedRequest { field: String, reason: String },
    #[error("{0}")]
    InsufficientResources(String),
    #[error("{0}")]
    WrongState(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InUse(String),
    /// Still waiting for placement when the call's timeout ran out.
    #[error("{0}")]
    Pending(String),
    /// The action did not finish before the call's timeout; it goes on.
    #[error("{0}")]
    Timeout(String),
    /// A host could not deploy the VEE; the VEE is back in DEFINED. Says what the host said.
    #[error(transparent)]
    DeploymentFailed(Arc<CoreError>),
    /// A host failed an action or could not be reached.
    #[error("{message}")]
    HostFailed {
        message: String,
        /// What the host answered, when it answered.
        #[source]
        source: Option<veem_api::agent::AgentError>,
    },
    /// Another action on the same VEE changed it first.
    #[error("{0}")]
    Conflict(String),
    /// The site a VEE runs at does not answer: nothing was done there.
    #[error("{0}")]
    SiteUnreachable(String),
    /// A site to register did not answer as a VEEM (`site_unreachable`) or refused the token
    /// given (`unauthenticated`): nothing was registered.
    #[error("{message}")]
    SiteRefused { code: &'static str, message: String },
    /// This front-end does not lead its site (several front-ends on one database): it lost the
    /// leader lease, or no leader can be reached. Nothing was done.
    #[error("{0}")]
    NotLeader(String),
    /// The store or the file system failed; nothing was acknowledged.
    #[error("{context}{}", with_cause(.source.as_ref()))]
    Internal {
        /// What the VEEM was doing.
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

impl CoreError {
    /// The contract's stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::MalformedDescriptor(_) => code::MALFORMED_DESCRIPTOR,
            CoreError::MalformedRequest { .. } => code::MALFORMED_REQUEST,
            CoreError::InsufficientResources(_) => code::INSUFFICIENT_RESOURCES,
            CoreError::WrongState(_) => code::WRONG_STATE,
            CoreError::AccessDenied(_) => code::ACCESS_DENIED,
            CoreError::NotFound(_) => code::NOT_FOUND,
            CoreError::InUse(_) => code::IN_USE,
            CoreError::Pending(_) => code::PENDING,
            CoreError::Timeout(_) => code::TIMEOUT,
            CoreError::DeploymentFailed(_) => code::DEPLOYMENT_FAILED,
            CoreError::HostFailed { .. } => code::HOST_FAILED,
            CoreError::Conflict(_) => code::CONFLICT,
            CoreError::SiteUnreachable(_) => code::SITE_UNREACHABLE,
            CoreError::SiteRefused { code, .. } => code,
            CoreError::NotLeader(_) => code::NOT_LEADER,
            CoreError::Internal { .. } => code::INTERNAL,
        }
    }

    pub fn malformed(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::MalformedRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The VEEM failed at `context` because of `source`.
    pub fn internal(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CoreError::Internal {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The VEEM found itself somewhere it should never be: a broken rule, not a failure of
    /// something it uses.
    pub fn broken(context: impl Into<String>) -> Self {
        CoreError::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// A host failed, saying nothing more than `message`.
    pub fn host_failed(message: impl Into<String>) -> Self {
        CoreError::HostFailed {
            message: message.into(),
            source: None,
        }
    }

    /// A deployment that failed because of `cause`.
    pub fn deployment_failed(cause: CoreError) -> Self {
        CoreError::DeploymentFailed(Arc::new(cause))
    }
}

/// `": <cause>"`, or nothing: an internal error's text names its cause.
fn with_cause(cause: Option<&Cause>) -> String {
    cause.map(|c| format!(": {c}")).unwrap_or_default()
}

impl From<WrongState> for CoreError {
    fn from(e: WrongState) -> Self {
        CoreError::WrongState(e.to_string())
    }
}

impl From<veem_store::StoreError> for CoreError {
    fn from(e: veem_store::StoreError) -> Self {
        match e {
            veem_store::StoreError::Conflict { .. }
            | veem_store::StoreError::NetworkNameTaken { .. }
            | veem_store::StoreError::NetworkIdReused(_)
            | veem_store::StoreError::SiteNameTaken(_) => CoreError::Conflict(e.to_string()),
            veem_store::StoreError::Fenced { .. } => CoreError::NotLeader(format!(
                "this front-end no longer leads its site ({e}); nothing was stored: call again"
            )),
            other => CoreError::internal("the store failed", other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_failure_of_what_the_core_uses_keeps_its_cause_whole() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no access");
        let error = CoreError::internal("removing a file", io);
        assert_eq!(error.to_string(), "removing a file: no access");
        // Shared: the cause is the `Arc` that holds it, which says what it holds.
        let cause = error.source().expect("the cause is kept");
        let io = cause
            .downcast_ref::<Cause>()
            .and_then(|shared| shared.downcast_ref::<std::io::Error>())
            .expect("as the error it was");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            CoreError::broken("a rule broke").to_string(),
            "a rule broke"
        );
        assert!(CoreError::broken("a rule broke").source().is_none());
    }

    #[test]
    fn a_failed_deployment_says_what_the_host_said_and_keeps_it() {
        let agent = veem_api::agent::AgentError {
            kind: veem_api::agent::AgentErrorKind::Failed,
            message: "qemu exited".into(),
        };
        let host = CoreError::HostFailed {
            message: "host h1: qemu exited".into(),
            source: Some(agent.clone()),
        };
        let failed = CoreError::deployment_failed(host);
        assert_eq!(failed.code(), code::DEPLOYMENT_FAILED);
        assert_eq!(failed.to_string(), "host h1: qemu exited");
        let said = failed
            .source()
            .expect("the host's answer is the cause")
            .downcast_ref::<veem_api::agent::AgentError>()
            .expect("as the agent sent it");
        assert_eq!(said, &agent);
    }
}
