//! What an OCCI request says, whatever its rendering: the categories, attributes, links and
//! locations it carries.

use super::model::Value;

/// A category named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCategory {
    pub scheme: String,
    pub term: String,
    /// `kind`, `mixin` or `action`, when given.
    pub class: Option<String>,
}

impl RequestCategory {
    pub fn id(&self) -> String {
        format!("{}{}", self.scheme, self.term)
    }

    /// A category from its identifier (`scheme#term`).
    pub fn from_id(id: &str) -> Option<Self> {
        let at = id.rfind('#')?;
        let (scheme, term) = id.split_at(at + 1);
        (!term.is_empty()).then(|| Self {
            scheme: scheme.to_owned(),
            term: term.to_owned(),
            class: None,
        })
    }
}

/// A link in a request: its target, and what it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkRequest {
    pub target: String,
    pub rel: Option<String>,
    /// The link's kind and mixins, by identifier.
    pub categories: Vec<String>,
    pub attributes: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OcciRequest {
    pub categories: Vec<RequestCategory>,
    pub attributes: Vec<(String, Value)>,
    pub links: Vec<LinkRequest>,
    pub locations: Vec<String>,
}

impl OcciRequest {
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}
