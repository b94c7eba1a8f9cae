//! Reading the XML safely, and the small vocabulary the rest of the crate uses to look at it.
//!
//! Safety first: a size limit, no DTD (checked on the raw text before roxmltree sees it, and again
//! by roxmltree), a nesting limit (roxmltree recurses per level), a node limit. Then one leniency: XML Namespaces makes an undeclared prefix an
//! error, but real exports forget to declare a few conventional ones (VMware's own conformance
//! corpus writes `ovfstr:Strings` without declaring `ovfstr`). Those few prefixes are bound to
//! their usual namespaces; any other undeclared prefix stays an error.

use std::borrow::Cow;

use roxmltree::{Document, Node, ParsingOptions};

use crate::OvfError;

pub(crate) const OVF1_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
pub(crate) const OVF2_NS: &str = "http://schemas.dmtf.org/ovf/envelope/2";
pub(crate) const OVF09_NS: &str = "http://www.vmware.com/schema/ovf/1/envelope";
pub(crate) const STRINGS_NS: &str = "http://schemas.dmtf.org/ovf/strings/1";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// rasd, vssd, sasd, epasd and cim all live under this prefix, in several versions.
const CIM_NS_PREFIX: &str = "http://schemas.dmtf.org/wbem/wscim/";

/// Largest envelope veem reads. Real descriptors are tens of kilobytes.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;
const MAX_NODES: u32 = 1_000_000;
/// roxmltree parses nested elements recursively, so depth is bounded before it runs. Real
/// envelopes nest about eight deep.
const MAX_DEPTH: usize = 256;

/// Prefixes real exports use without declaring them, and the namespace they always mean.
/// `ovf` is deliberately absent: it could mean OVF 1 or 2.
const CONVENTIONAL_PREFIXES: [(&str, &str); 6] = [
    ("ovfstr", STRINGS_NS),
    (
        "rasd",
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    ),
    (
        "vssd",
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    ),
    ("vmw", "http://www.vmware.com/schema/ovf"),
    ("xsi", XSI_NS),
    ("cim", "http://schemas.dmtf.org/wbem/wscim/1/common"),
];

/// Parses `text` and hands the document to `build`. Refuses DTDs and oversized input before
/// parsing, so an entity bomb costs a substring search.
pub(crate) fn with_document<T>(
    text: &str,
    build: impl Fn(&Document<'_>) -> Result<T, OvfError>,
) -> Result<T, OvfError> {
    if text.len() > MAX_ENVELOPE_BYTES {
        return Err(OvfError::TooLarge {
            size: text.len(),
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    if has_doctype(text) {
        return Err(OvfError::DtdNotAllowed);
    }
    if nesting_depth_exceeds(text, MAX_DEPTH) {
        return Err(OvfError::invalid(
            "Envelope",
            format!("elements nest deeper than {MAX_DEPTH}"),
        ));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let mut text = Cow::Borrowed(text);
    let mut bound: Vec<&str> = Vec::new();
    loop {
        let error = match Document::parse_with_options(&text, options) {
            Ok(doc) => return build(&doc),
            Err(e) => e,
        };
        let conventional = match &error {
            roxmltree::Error::UnknownNamespace(prefix, _) => CONVENTIONAL_PREFIXES
                .iter()
                .find(|(p, _)| p == prefix && !bound.contains(p)),
            _ => None,
        };
        let patched = conventional.and_then(|(prefix, uri)| {
            bound.push(prefix);
            declare_on_root(&text, prefix, uri)
        });
        match patched {
            Some(p) => text = Cow::Owned(p),
            None => return Err(xml_error(&text, error)),
        }
    }
}

fn xml_error(text: &str, error: roxmltree::Error) -> OvfError {
    if let roxmltree::Error::DtdDetected = error {
        return OvfError::DtdNotAllowed;
    }
    // A pre-DMTF envelope that is also malformed gets the clearer of the two answers.
    if let Some(root) = ovf09_root(text) {
        return OvfError::Ovf09 {
            root,
            namespace: OVF09_NS.to_owned(),
        };
    }
    OvfError::Xml {
        reason: error.to_string(),
    }
}

/// `<!DOCTYPE` anywhere, in any case: even inside a comment it is refused, which costs nothing
/// real and keeps the check a plain search.
fn has_doctype(text: &str) -> bool {
    const NEEDLE: &[u8] = b"<!doctype";
    text.as_bytes()
        .windows(NEEDLE.len())
        .any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// Does any element sit deeper than `limit`? Counts start and end tags, skipping comments,
/// CDATA, processing instructions and quoted attribute values. On malformed text the count can
/// only be higher than the depth a parser reaches before it stops, never lower.
fn nesting_depth_exceeds(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let skip_past = |from: usize, end: &[u8]| {
        bytes[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(bytes.len(), |i| from + i + end.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|b| *b == b'<') {
        let lt = i + offset;
        let rest = &bytes[lt..];
        if rest.starts_with(b"<!--") {
            i = skip_past(lt + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(lt + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(lt + 2, b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(lt + 2, b">");
        } else {
            let mut j = lt + 1;
            let mut quote = None;
            let mut self_closing = false;
            while j < bytes.len() {
                let b = bytes[j];
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'"' || b == b'\'' => quote = Some(b),
                    None if b == b'>' => {
                        self_closing = j > lt + 1 && bytes[j - 1] == b'/';
                        break;
                    }
                    None => {}
                }
                j += 1;
            }
            if !self_closing {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            i = (j + 1).min(bytes.len());
        }
    }
    false
}

/// The root element's name when the text declares the OVF 0.9 namespace on it.
fn ovf09_root(text: &str) -> Option<String> {
    let (start, name_end) = root_start_tag(text)?;
    let tag_end = text[name_end..].find('>').map(|i| name_end + i)?;
    text[name_end..tag_end]
        .contains(OVF09_NS)
        .then(|| text[start..name_end].to_owned())
}

/// Inserts `xmlns:prefix="uri"` right after the root element's name.
fn declare_on_root(text: &str, prefix: &str, uri: &str) -> Option<String> {
    let (_, name_end) = root_start_tag(text)?;
    let mut patched = String::with_capacity(text.len() + prefix.len() + uri.len() + 12);
    patched.push_str(&text[..name_end]);
    patched.push_str(&format!(" xmlns:{prefix}=\"{uri}\""));
    patched.push_str(&text[name_end..]);
    Some(patched)
}

/// Byte range of the root element's qualified name: skips the XML declaration, processing
/// instructions, comments and whitespace.
fn root_start_tag(text: &str) -> Option<(usize, usize)> {
    let mut rest = 0;
    loop {
        let lt = rest + text[rest..].find('<')?;
        let after = &text[lt..];
        if after.starts_with("<?") {
            rest = lt + after.find("?>")? + 2;
        } else if after.starts_with("<!--") {
            rest = lt + after.find("-->")? + 3;
        } else if after.starts_with("<!") {
            return None;
        } else {
            let start = lt + 1;
            let len = text[start..]
                .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .unwrap_or(text.len() - start);
            return (len > 0).then_some((start, start + len));
        }
    }
}

/// The envelope's namespace and how to look at its elements.
#[derive(Clone, Copy)]
pub(crate) struct Ovf<'a> {
    pub ns: &'a str,
}

impl<'a> Ovf<'a> {
    /// The OVF name of an element: its local name when it is in the envelope's namespace, or in
    /// none at all (2008 exports declare no default namespace); for the early `Section` and
    /// `Content` elements, the type their `xsi:type="ovf:DiskSection_Type"` names.
    pub fn name_of<'n>(&self, node: Node<'n, '_>) -> Option<&'n str> {
        if !node.is_element() {
            return None;
        }
        match node.tag_name().namespace() {
            None => {}
            Some(ns) if ns == self.ns => {}
            Some(_) => return None,
        }
        let local = node.tag_name().name();
        if local == "Section" || local == "Content" {
            let typed = node.attribute((XSI_NS, "type")).and_then(|t| {
                let (prefix, name) = match t.split_once(':') {
                    Some((p, n)) => (Some(p), n),
                    None => (None, t),
                };
                (node.lookup_namespace_uri(prefix) == Some(self.ns))
                    .then(|| name.strip_suffix("_Type"))
                    .flatten()
            });
            if let Some(name) = typed {
                return Some(name);
            }
        }
        Some(local)
    }

    /// An OVF element with this name.
    pub fn is(&self, node: Node<'_, '_>, name: &str) -> bool {
        self.name_of(node) == Some(name)
    }

    /// Is this an OVF element (any name)?
    pub fn owns(&self, node: Node<'_, '_>) -> bool {
        self.name_of(node).is_some()
    }

    /// An `ovf:` attribute; also found without its prefix, as real tools (and VMware's own
    /// corpus) write `configuration="large"` or `value="small"`.
    pub fn attr<'n>(&self, node: Node<'n, '_>, name: &str) -> Option<&'n str> {
        node.attribute((self.ns, name))
            .or_else(|| node.attribute(name))
    }

    /// OVF children with this name.
    pub fn children<'n, 'i>(
        &self,
        node: Node<'n, 'i>,
        name: &'static str,
    ) -> impl Iterator<Item = Node<'n, 'i>> + use<'n, 'i, 'a> {
        let me = *self;
        node.children().filter(move |c| me.is(*c, name))
    }

    pub fn child<'n, 'i>(&self, node: Node<'n, 'i>, name: &'static str) -> Option<Node<'n, 'i>> {
        self.children(node, name).next()
    }

    /// Must veem understand this element to deploy the envelope? `ovf:required` decides when
    /// present. Without it, DSP0243 makes OVF (and CIM) elements required, but vendors write
    /// their own extensions (`vmw:`, `vbox:`) without it, so those are not.
    pub fn required(&self, node: Node<'_, '_>) -> bool {
        match self.attr(node, "required") {
            Some(v) => !v.trim().eq_ignore_ascii_case("false"),
            None => self.owns(node) || is_cim(node),
        }
    }
}

/// Elements of the CIM schemas (rasd, vssd, sasd, epasd), matched by local name whatever
/// version of the schema the namespace names.
pub(crate) fn is_cim(node: Node<'_, '_>) -> bool {
    node.is_element()
        && node
            .tag_name()
            .namespace()
            .is_some_and(|ns| ns.starts_with(CIM_NS_PREFIX))
}

/// The element's name as written, for messages: `prefix:local` or `local`.
pub(crate) fn display_name(node: Node<'_, '_>) -> String {
    let local = node.tag_name().name();
    match node
        .tag_name()
        .namespace()
        .and_then(|ns| node.lookup_prefix(ns))
    {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}:{local}"),
        _ => local.to_owned(),
    }
}

/// Text content with surrounding whitespace removed; `None` for an empty element.
pub(crate) fn text_of<'n>(node: Node<'n, '_>) -> Option<&'n str> {
    node.text().map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctype_is_found_in_any_case() {
        assert!(has_doctype("<?xml version='1.0'?><!DOCTYPE x><x/>"));
        assert!(has_doctype("<!doctype x><x/>"));
        assert!(!has_doctype("<x>DOCTYPE</x>"));
    }

    #[test]
    fn nesting_depth_is_counted_like_a_parser_would() {
        let nested = |n: usize| format!("{}{}", "<a x='>'>".repeat(n), "</a>".repeat(n));
        assert!(!nesting_depth_exceeds(&nested(3), 3));
        assert!(nesting_depth_exceeds(&nested(4), 3));
        assert!(!nesting_depth_exceeds("<a><b/><b/><b/><b/></a>", 2));
        assert!(!nesting_depth_exceeds(
            "<a><!-- <b><b><b> --><![CDATA[<c><c><c>]]><?pi <d><d>?></a>",
            1
        ));
        // Unclosed tags keep counting, so a malformed document cannot hide its depth.
        assert!(nesting_depth_exceeds("<a><a><a><a", 3));
        let err = with_document(&nested(MAX_DEPTH + 1), |_| Ok(())).expect_err("too deep");
        assert!(err.to_string().contains("nest deeper"), "{err}");
        with_document(&nested(MAX_DEPTH), |_| Ok(())).expect("deep but allowed");
    }

    #[test]
    fn the_root_tag_skips_declarations_and_comments() {
        let text = "<?xml version='1.0'?>\n<!-- <NotRoot> -->\n<ovf:Envelope a='1'/>";
        let (start, end) = root_start_tag(text).expect("has a root");
        assert_eq!(&text[start..end], "ovf:Envelope");
    }

    #[test]
    fn a_conventional_prefix_is_declared_and_an_unknown_one_is_not() {
        let ok = with_document("<a><ovfstr:Strings/></a>", |doc| {
            Ok(doc
                .root_element()
                .first_element_child()
                .and_then(|n| n.tag_name().namespace().map(str::to_owned)))
        })
        .expect("ovfstr is conventional");
        assert_eq!(ok.as_deref(), Some(STRINGS_NS));

        let err = with_document("<a><nosuch:B/></a>", |_| Ok(())).expect_err("unknown prefix");
        assert!(matches!(err, OvfError::Xml { .. }), "{err}");
        assert!(err.to_string().contains("nosuch"), "{err}");
    }

    #[test]
    fn a_malformed_ovf09_envelope_is_refused_as_ovf09() {
        let text = format!("<ovf:Envelope xmlns:ovf=\"{OVF09_NS}\"><x:y/></ovf:Envelope>");
        let err = with_document(&text, |_| Ok(())).expect_err("malformed");
        assert!(matches!(err, OvfError::Ovf09 { .. }), "{err}");
    }
}
