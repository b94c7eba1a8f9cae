//! The core's typed errors. Each has a stable contract code; the HTTP status of each lives in
//! exactly one function of the HTTP layer (`http::problem::status_of`).

use veem_api::code;
use veem_model::{DescriptorError, WrongState};

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
    /// A host could not deploy the VEE; the VEE is back in DEFINED.
    #[error("{0}")]
    DeploymentFailed(String),
    /// A host failed an action or could not be reached.
    #[error("{0}")]
    HostFailed(String),
    /// Another action on the same VEE changed it first.
    #[error("{0}")]
    Conflict(String),
    /// The store or the file system failed; nothing was acknowledged.
    #[error("{0}")]
    Internal(String),
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
            CoreError::HostFailed(_) => code::HOST_FAILED,
            CoreError::Conflict(_) => code::CONFLICT,
            CoreError::Internal(_) => code::INTERNAL,
        }
    }

    pub fn malformed(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::MalformedRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        CoreError::Internal(format!("{context}: {err}"))
    }
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
            | veem_store::StoreError::NetworkIdReused(_) => CoreError::Conflict(e.to_string()),
            other => CoreError::internal("the store failed", other),
        }
    }
}
