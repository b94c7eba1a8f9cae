//! Identifier newtypes. Each one validates its text once, at the edge, so the rest of veem can
//! use it in paths and SQL parameters without checking again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a piece of text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {text:?} is invalid: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub text: String,
    pub reason: &'static str,
}

/// Names used as path components (images, hosts, principals): 1 to 64 characters of
/// `[A-Za-z0-9._-]`, not starting with a dot. This keeps them safe as file names.
fn check_name(kind: &'static str, text: &str) -> Result<(), IdError> {
    let err = |reason| {
        Err(IdError {
            kind,
            text: text.to_owned(),
            reason,
        })
    };
    if text.is_empty() || text.len() > 64 {
        return err("must be 1 to 64 characters long");
    }
    if text.starts_with('.') {
        return err("must not start with a dot");
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return err("may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// The text is shared (`Arc<str>`): a clone costs no allocation, so the owner and host
        /// of 200,000 records are a handful of strings, not 200,000 copies each.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check_name($kind, &text)?;
                Ok(Self(text.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::new(text)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_newtype!(
    /// A physical host (a VEEH) of this site.
    HostId,
    "host name"
);
name_newtype!(
    /// A site of the federation: this VEEM's own (`site` in its config) or a registered one.
    SiteName,
    "site name"
);
name_newtype!(
    /// An image in the image store, unique per owner.
    ImageName,
    "image name"
);
name_newtype!(
    /// An authenticated caller: an SM, a peer VEEM or an operator.
    Principal,
    "principal name"
);

/// A VEE identifier: `vee-` and a decimal sequence number of at least eight digits.
///
/// The sequence number comes from a counter the store keeps durably and never lowers, so an id
/// is never handed out twice, also after its VEE is purged (InitializeVEEs' guarantee).
///
/// The text is kept inline (at most 24 bytes: `vee-` and 20 digits), not on the heap: the
/// VEEM, its placement and its hosts each hold copies of every id, 200,000 of them at site
/// scale, and a clone is then a copy of 25 bytes rather than an allocation.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VeeId {
    len: u8,
    text: [u8; VeeId::MAX_LEN],
}

impl VeeId {
    const PREFIX: &'static str = "vee-";
    /// `vee-` and the 20 digits of the largest `u64`.
    const MAX_LEN: usize = 24;

    /// An id whose text was checked to be `vee-` and ASCII digits, at most `MAX_LEN` bytes.
    fn inline(text: &str) -> Self {
        let mut inline = [0; Self::MAX_LEN];
        inline[..text.len()].copy_from_slice(text.as_bytes());
        Self {
            len: text.len() as u8,
            text: inline,
        }
    }

    pub fn from_seq(seq: u64) -> Self {
        Self::inline(&format!("{}{seq:08}", Self::PREFIX))
    }

    /// The sequence number inside the id; ids sort by it.
    pub fn seq(&self) -> u64 {
        self.as_str()[Self::PREFIX.len()..]
            .parse()
            .expect("a VeeId is validated at construction to end in digits")
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let err = |reason| IdError {
            kind: "VEE id",
            text: text.to_owned(),
            reason,
        };
        let digits = text
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| err("must start with 'vee-'"))?;
        if digits.len() < 8 || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("must be 'vee-' followed by 8 to 19 digits"));
        }
        Ok(Self::inline(text))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)])
            .expect("a VeeId holds the ASCII text it was checked to be")
    }
}

/// Ids compare as their text did when it was a `String`.
impl Ord for VeeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}
impl PartialOrd for VeeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl fmt::Debug for VeeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VeeId").field(&self.as_str()).finish()
    }
}

impl TryFrom<String> for VeeId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::parse(&text)
    }
}
impl From<VeeId> for String {
    fn from(id: VeeId) -> String {
        id.as_str().to_owned()
    }
}
impl fmt::Display for VeeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vee_ids_round_trip_and_sort_by_sequence() {
        let id = VeeId::from_seq(42);
        assert_eq!(id.as_str(), "vee-00000042");
        assert_eq!(id.seq(), 42);
        assert_eq!(VeeId::parse("vee-00000042"), Ok(id.clone()));
        assert!(VeeId::from_seq(9) < VeeId::from_seq(10));
        assert_eq!(
            VeeId::from_seq(u64::MAX).as_str(),
            format!("vee-{}", u64::MAX)
        );
        assert_eq!(VeeId::from_seq(u64::MAX).seq(), u64::MAX);
        // Ordered as the text is, also between lengths.
        let long = VeeId::parse("vee-123456789").expect("valid");
        assert!(long < VeeId::parse("vee-99999999").expect("valid"));
        assert_eq!(format!("{:?}", id), "VeeId(\"vee-00000042\")");
        for bad in [
            "",
            "vee-",
            "vee-12",
            "vm-00000001",
            "vee-0000000x",
            "vee-00000001/..",
        ] {
            assert!(VeeId::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn names_are_safe_path_components() {
        assert!(ImageName::new("tiny").is_ok());
        assert!(ImageName::new("debian-12.qcow2").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(ImageName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
