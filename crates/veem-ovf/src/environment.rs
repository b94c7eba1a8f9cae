//! The OVF environment document (DSP0243 section 11, schema `dsp8027`) that a VEE finds on its
//! context disk as `ovf-env.xml`.

use std::collections::BTreeMap;
use std::fmt::Write;

pub(crate) const ENVIRONMENT_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";

/// Writes the `ovf-env.xml` of VEE `vee_id` with these properties, in key order.
///
/// Characters XML 1.0 cannot carry at all (most control characters) are replaced by U+FFFD;
/// tab, newline and carriage return survive as character references.
pub fn write_ovf_env(vee_id: &str, properties: &BTreeMap<String, String>) -> String {
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        xml,
        "<Environment xmlns=\"{ENVIRONMENT_NS}\" xmlns:ovfenv=\"{ENVIRONMENT_NS}\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ovfenv:id=\"{}\">",
        escape(vee_id)
    );
    xml.push_str("  <PlatformSection>\n");
    xml.push_str("    <Kind>veem</Kind>\n");
    let _ = writeln!(
        xml,
        "    <Version>{}</Version>",
        escape(env!("CARGO_PKG_VERSION"))
    );
    xml.push_str("    <Vendor>veem</Vendor>\n");
    xml.push_str("  </PlatformSection>\n");
    xml.push_str("  <PropertySection>\n");
    for (key, value) in properties {
        let _ = writeln!(
            xml,
            "    <Property ovfenv:key=\"{}\" ovfenv:value=\"{}\"/>",
            escape(key),
            escape(value)
        );
    }
    xml.push_str("  </PropertySection>\n");
    xml.push_str("</Environment>\n");
    xml
}

/// Escapes text for an attribute value (and so for element content too).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Attribute-value normalization would turn these into spaces.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

/// XML 1.0 `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(xml: &str) -> (String, BTreeMap<String, String>) {
        let doc = roxmltree::Document::parse(xml).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "Environment");
        assert_eq!(root.tag_name().namespace(), Some(ENVIRONMENT_NS));
        let id = root
            .attribute((ENVIRONMENT_NS, "id"))
            .expect("ovfenv:id")
            .to_owned();
        let kind = root
            .descendants()
            .find(|n| n.has_tag_name((ENVIRONMENT_NS, "Kind")))
            .and_then(|n| n.text());
        assert_eq!(kind, Some("veem"));
        let properties = root
            .descendants()
            .filter(|n| n.has_tag_name((ENVIRONMENT_NS, "Property")))
            .map(|n| {
                (
                    n.attribute((ENVIRONMENT_NS, "key"))
                        .expect("key")
                        .to_owned(),
                    n.attribute((ENVIRONMENT_NS, "value"))
                        .expect("value")
                        .to_owned(),
                )
            })
            .collect();
        (id, properties)
    }

    #[test]
    fn properties_survive_a_round_trip() {
        let properties: BTreeMap<String, String> = [
            ("db_host", "10.0.0.2"),
            ("markup", "<a href=\"x\">&amp;</a>"),
            ("quotes", "it's \"quoted\""),
            ("class.key.instance", ""),
            ("lines", "one\ntwo\tthree\r\n"),
            ("unicode", "été ✓ 𝄞"),
            ("<&\"'>", "key too"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let xml = write_ovf_env("vee-00000042", &properties);
        let (id, back) = read_back(&xml);
        assert_eq!(id, "vee-00000042");
        assert_eq!(back, properties);
    }

    #[test]
    fn an_empty_environment_is_still_a_document() {
        let (id, back) = read_back(&write_ovf_env("vee-1", &BTreeMap::new()));
        assert_eq!(id, "vee-1");
        assert!(back.is_empty());
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        let properties = BTreeMap::from([("k".to_owned(), "a\u{1}b\u{FFFF}c".to_owned())]);
        let (_, back) = read_back(&write_ovf_env("vee-1", &properties));
        assert_eq!(back["k"], "a\u{FFFD}b\u{FFFD}c");
    }
}
