//! Why an envelope was refused. Every message starts with the element (or attribute) path it is
//! about, so that an SM can find the line to fix; `OvfError::element` returns that path alone for
//! the `field` of a 400 answer.

use veem_model::DescriptorError;

/// An OVF envelope veem refuses, and where in it the problem is.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    #[error("Envelope: the document is {size} bytes, more than the {limit} veem reads")]
    TooLarge { size: usize, limit: usize },

    #[error("DOCTYPE: DTDs are not allowed in an OVF envelope (veem never expands entities)")]
    DtdNotAllowed,

    #[error("Envelope: not well-formed XML: {reason}")]
    Xml { reason: String },

    #[error(
        "{root}: OVF 0.9 (VMware pre-DMTF namespace {namespace}) is not supported; \
         export the appliance as OVF 1.x or 2.x"
    )]
    Ovf09 { root: String, namespace: String },

    #[error(
        "{root}: namespace {namespace:?} is neither OVF 1.x (http://schemas.dmtf.org/ovf/envelope/1) \
         nor OVF 2.x (http://schemas.dmtf.org/ovf/envelope/2)"
    )]
    UnknownNamespace { root: String, namespace: String },

    #[error("{element}: missing {what}")]
    Missing { element: String, what: String },

    #[error("{element}: {field} {value:?} is not a number")]
    NotANumber {
        element: String,
        field: String,
        value: String,
    },

    #[error("{element}: {field} {value:?} names no {target}")]
    Dangling {
        element: String,
        field: String,
        value: String,
        target: String,
    },

    #[error("{element}: {field} {value:?} is used more than once")]
    Duplicate {
        element: String,
        field: String,
        value: String,
    },

    #[error("{element}: not allowed in {parent}; DSP0243 places it only in {allowed}")]
    Misplaced {
        element: String,
        parent: String,
        allowed: String,
    },

    #[error(
        "{element}: veem does not understand this element and it is not marked \
         ovf:required=\"false\""
    )]
    UnknownRequired { element: String },

    #[error("DeploymentOptionSection: configuration {id:?} is not defined (defined: {defined})")]
    UnknownConfiguration { id: String, defined: String },

    #[error("{element}: {reason}")]
    Invalid { element: String, reason: String },

    /// The envelope is valid OVF, but the descriptor made from it breaks a rule of veem's.
    #[error("descriptor made from the envelope is invalid: {0}")]
    Descriptor(#[from] DescriptorError),
}

impl OvfError {
    /// The element or field path this error is about, e.g.
    /// `VirtualHardwareSection/Item[InstanceID=3]`.
    pub fn element(&self) -> String {
        match self {
            OvfError::TooLarge { .. } | OvfError::Xml { .. } => "Envelope".to_owned(),
            OvfError::DtdNotAllowed => "DOCTYPE".to_owned(),
            OvfError::Ovf09 { root, .. } | OvfError::UnknownNamespace { root, .. } => root.clone(),
            OvfError::Missing { element, .. }
            | OvfError::NotANumber { element, .. }
            | OvfError::Dangling { element, .. }
            | OvfError::Duplicate { element, .. }
            | OvfError::Misplaced { element, .. }
            | OvfError::UnknownRequired { element }
            | OvfError::Invalid { element, .. } => element.clone(),
            OvfError::UnknownConfiguration { .. } => "DeploymentOptionSection".to_owned(),
            OvfError::Descriptor(e) => e.field.clone(),
        }
    }

    pub(crate) fn missing(element: impl Into<String>, what: impl Into<String>) -> Self {
        OvfError::Missing {
            element: element.into(),
            what: what.into(),
        }
    }

    pub(crate) fn invalid(element: impl Into<String>, reason: impl Into<String>) -> Self {
        OvfError::Invalid {
            element: element.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_a_number(
        element: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        OvfError::NotANumber {
            element: element.into(),
            field: field.into(),
            value: value.into(),
        }
    }

    pub(crate) fn dangling(
        element: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        OvfError::Dangling {
            element: element.into(),
            field: field.into(),
            value: value.into(),
            target: target.into(),
        }
    }

    pub(crate) fn duplicate(
        element: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        OvfError::Duplicate {
            element: element.into(),
            field: field.into(),
            value: value.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_starts_with_the_element_it_names() {
        let e = OvfError::not_a_number(
            "VirtualHardwareSection/Item[InstanceID=3]",
            "rasd:VirtualQuantity",
            "abc",
        );
        assert_eq!(
            e.to_string(),
            "VirtualHardwareSection/Item[InstanceID=3]: rasd:VirtualQuantity \"abc\" is not a number"
        );
        assert_eq!(e.element(), "VirtualHardwareSection/Item[InstanceID=3]");
    }

    #[test]
    fn a_descriptor_error_keeps_its_field() {
        let e = OvfError::from(DescriptorError::new("cpu", "must be between 1 and 1024"));
        assert_eq!(e.element(), "cpu");
        assert!(e.to_string().contains("cpu: must be between 1 and 1024"));
    }
}
