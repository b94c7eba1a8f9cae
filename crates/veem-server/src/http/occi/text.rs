//! The text renderings of GFD.223: `text/plain` (one `Name: value` per body line) and
//! `text/occi` (the same in HTTP headers, values of one name comma-separated), writing and
//! parsing; and `text/uri-list` for collections.

use super::model::{format_number, Category, CategoryRef, Entity, Value};
use super::request::{LinkRequest, OcciRequest, RequestCategory};

/// A field's value, quoted with `"` and `\` escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => quote(s),
        Value::Number(n) => format_number(*n),
        Value::Bool(b) => b.to_string(),
    }
}

/// `term; scheme="..."; class="..."; title="..."` of an entity's category.
fn category_ref(c: &CategoryRef) -> String {
    let mut out = format!(
        "{}; scheme={}; class={}",
        c.term,
        quote(&c.scheme),
        quote(c.class.as_str())
    );
    if !c.title.is_empty() {
        out.push_str(&format!("; title={}", quote(&c.title)));
    }
    out
}

/// A category of the query interface with everything it defines.
fn category_full(c: &Category) -> String {
    let mut out = category_ref(&CategoryRef::of(c));
    let related: Vec<&String> = c.parent.iter().chain(&c.depends).collect();
    if !related.is_empty() {
        let related: Vec<&str> = related.iter().map(|s| s.as_str()).collect();
        out.push_str(&format!("; rel={}", quote(&related.join(" "))));
    }
    if let Some(location) = &c.location {
        out.push_str(&format!("; location={}", quote(location)));
    }
    if !c.attributes.is_empty() {
        let names: Vec<String> = c
            .attributes
            .iter()
            .map(|a| {
                let mut name = a.name.to_owned();
                if a.required {
                    name.push_str("{required}");
                } else if !a.mutable {
                    name.push_str("{immutable}");
                }
                name
            })
            .collect();
        out.push_str(&format!("; attributes={}", quote(&names.join(" "))));
    }
    if !c.actions.is_empty() {
        out.push_str(&format!("; actions={}", quote(&c.actions.join(" "))));
    }
    out
}

/// A rendering as (field name, value) pairs, in order.
pub type Fields = Vec<(&'static str, String)>;

pub fn categories(categories: &[Category]) -> Fields {
    categories
        .iter()
        .map(|c| ("Category", category_full(c)))
        .collect()
}

/// The `Link` value of a resource's link.
fn link_value(link: &Entity) -> String {
    let (target, target_kind) = link.target.clone().unwrap_or_default();
    let mut out = format!(
        "<{target}>; rel={}; self={}; category={}",
        quote(&target_kind),
        quote(&link.location),
        quote(
            &std::iter::once(link.kind.id())
                .chain(link.mixins.iter().map(CategoryRef::id))
                .collect::<Vec<_>>()
                .join(" ")
        )
    );
    for (name, value) in &link.attributes {
        out.push_str(&format!("; {name}={}", value_text(value)));
    }
    out
}

pub fn entity(e: &Entity) -> Fields {
    let mut fields: Fields = std::iter::once(&e.kind)
        .chain(&e.mixins)
        .map(|c| ("Category", category_ref(c)))
        .collect();
    for link in &e.links {
        fields.push(("Link", link_value(link)));
    }
    for action in &e.actions {
        let term = action.rsplit('#').next().unwrap_or(action);
        fields.push((
            "Link",
            format!("<{}?action={term}>; rel={}", e.location, quote(action)),
        ));
    }
    for (name, value) in &e.attributes {
        fields.push(("X-OCCI-Attribute", format!("{name}={}", value_text(value))));
    }
    fields
}

pub fn locations(urls: &[String]) -> Fields {
    urls.iter()
        .map(|u| ("X-OCCI-Location", u.clone()))
        .collect()
}

/// `text/plain`: one field a line.
pub fn plain_body(fields: &Fields) -> String {
    fields.iter().map(|(n, v)| format!("{n}: {v}\n")).collect()
}

/// `text/occi`: one header a name, its values comma-separated (what GFD.223 recommends).
pub fn occi_headers(fields: &Fields) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in fields {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => out.push((name, value.clone())),
        }
    }
    out
}

pub fn uri_list(urls: &[String]) -> String {
    urls.iter().map(|u| format!("{u}\r\n")).collect()
}

// ---- parsing ----

/// Why a text rendering could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TextError {
    pub field: String,
    pub reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> TextError {
    TextError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `text` at `sep` outside double quotes (a `\` escapes the next character) and
/// outside `<...>`.
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut angled = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angled = true,
            '>' if !quoted => angled = false,
            c if c == sep && !quoted && !angled => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A quoted string's content, or an unquoted token as it is.
fn unquote(field: &str, text: &str) -> Result<(String, bool), TextError> {
    let text = text.trim();
    let Some(inner) = text.strip_prefix('"') else {
        return Ok((text.to_owned(), false));
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| error(field, format!("unterminated quoted string in {text:?}")))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next) => out.push(next),
                None => return Err(error(field, "a quoted string ends in a lone backslash")),
            }
        } else if c == '"' {
            return Err(error(field, format!("unescaped quote inside {text:?}")));
        } else {
            out.push(c);
        }
    }
    Ok((out, true))
}

/// `key=value` parameters after a `;`.
fn parameters<'a>(
    field: &str,
    parts: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String, bool)>, TextError> {
    let mut out = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| error(field, format!("{part:?} is not key=value")))?;
        let (value, quoted) = unquote(field, value)?;
        out.push((key.trim().to_owned(), value, quoted));
    }
    Ok(out)
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// One `Category` value: `term; scheme="..."; class="..."`.
fn parse_category(value: &str) -> Result<RequestCategory, TextError> {
    let mut parts = split_outside_quotes(value, ';').into_iter();
    let term = parts.next().unwrap_or_default().trim().to_owned();
    if !is_token(&term) {
        return Err(error(
            "Category",
            format!("{term:?} is not a category term"),
        ));
    }
    let mut scheme = None;
    let mut class = None;
    for (key, value, _) in parameters("Category", parts)? {
        match key.as_str() {
            "scheme" => scheme = Some(value),
            "class" => class = Some(value),
            _ => {}
        }
    }
    let scheme = scheme.ok_or_else(|| error("Category", format!("{term}: no scheme")))?;
    if !scheme.ends_with('#') {
        return Err(error(
            "Category",
            format!("scheme {scheme:?} does not end in '#'"),
        ));
    }
    if let Some(class) = &class {
        if !["kind", "mixin", "action"].contains(&class.as_str()) {
            return Err(error(
                "Category",
                format!("class {class:?} is not kind, mixin or action"),
            ));
        }
    }
    Ok(RequestCategory {
        scheme,
        term,
        class,
    })
}

/// One `X-OCCI-Attribute` value: `name="text"`, `name=number` or `name=true|false`.
fn parse_attribute(value: &str) -> Result<(String, Value), TextError> {
    let (name, raw) = value
        .split_once('=')
        .ok_or_else(|| error("X-OCCI-Attribute", format!("{value:?} is not name=value")))?;
    let name = name.trim();
    if !is_token(name) {
        return Err(error(
            "X-OCCI-Attribute",
            format!("{name:?} is not an attribute name"),
        ));
    }
    let (text, quoted) = unquote("X-OCCI-Attribute", raw)?;
    let value = if quoted {
        Value::String(text)
    } else if text == "true" || text == "false" {
        Value::Bool(text == "true")
    } else {
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Value::Number(n),
            _ => {
                return Err(error(
                    "X-OCCI-Attribute",
                    format!("{name}: {text:?} is neither a quoted string, a number nor a boolean"),
                ))
            }
        }
    };
    Ok((name.to_owned(), value))
}

/// One `Link` value: `<target>; rel="..."; category="..."; attr=value...`.
fn parse_link(value: &str) -> Result<LinkRequest, TextError> {
    let mut parts = split_outside_quotes(value, ';').into_iter();
    let target = parts.next().unwrap_or_default().trim();
    let target = target
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or_else(|| error("Link", format!("{target:?} is not <location>")))?;
    let mut link = LinkRequest {
        target: target.to_owned(),
        ..LinkRequest::default()
    };
    for (key, value, quoted) in parameters("Link", parts)? {
        match key.as_str() {
            "rel" => link.rel = Some(value),
            "self" => {}
            "category" => link.categories = value.split_whitespace().map(str::to_owned).collect(),
            name => {
                let raw = if quoted {
                    format!("{name}={}", quote(&value))
                } else {
                    format!("{name}={value}")
                };
                link.attributes.push(parse_attribute(&raw)?);
            }
        }
    }
    Ok(link)
}

/// The names of OCCI's fields, lowercase (as HTTP header names are given).
pub const FIELDS: [&str; 4] = ["category", "x-occi-attribute", "link", "x-occi-location"];

/// Adds one field (`Category`, `X-OCCI-Attribute`, `Link`, `X-OCCI-Location`) to `request`;
/// other names are none of OCCI's and are left alone. `value` may hold several values,
/// comma-separated.
pub fn add_field(request: &mut OcciRequest, name: &str, value: &str) -> Result<(), TextError> {
    let name = name.trim().to_ascii_lowercase();
    let values = || {
        split_outside_quotes(value, ',')
            .into_iter()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match name.as_str() {
        "category" => {
            for v in values() {
                request.categories.push(parse_category(v)?);
            }
        }
        "x-occi-attribute" => {
            for v in values() {
                let (name, value) = parse_attribute(v)?;
                if request.attributes.iter().any(|(n, _)| *n == name) {
                    return Err(error("X-OCCI-Attribute", format!("{name} is given twice")));
                }
                request.attributes.push((name, value));
            }
        }
        "link" => {
            for v in values() {
                request.links.push(parse_link(v)?);
            }
        }
        "x-occi-location" => {
            for v in values() {
                request.locations.push(v.to_owned());
            }
        }
        _ => {}
    }
    Ok(())
}

/// A `text/plain` body: one `Name: value` a line; blank lines are skipped.
pub fn parse_plain(body: &str, request: &mut OcciRequest) -> Result<(), TextError> {
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| error("body", format!("{line:?} is not 'Name: value'")))?;
        if !FIELDS.contains(&name.trim().to_ascii_lowercase().as_str()) {
            return Err(error(
                "body",
                format!("{:?} is not an OCCI field", name.trim()),
            ));
        }
        add_field(request, name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::model::{static_categories, Class, INFRA};
    use super::*;

    #[test]
    fn a_category_line_is_read_with_quoted_parameters() {
        let mut r = OcciRequest::default();
        parse_plain(
            "Category: compute; scheme=\"http://schemas.ogf.org/occi/infrastructure#\"; class=\"kind\"\n\
             X-OCCI-Attribute: occi.compute.cores=2\n\
             X-OCCI-Attribute: occi.core.title=\"a \\\"quoted\\\" name; with, separators\"\n",
            &mut r,
        )
        .expect("valid");
        assert_eq!(r.categories.len(), 1);
        assert_eq!(r.categories[0].term, "compute");
        assert_eq!(r.categories[0].scheme, INFRA);
        assert_eq!(r.categories[0].class.as_deref(), Some("kind"));
        assert_eq!(
            r.attributes[0],
            ("occi.compute.cores".into(), Value::Number(2.0))
        );
        assert_eq!(
            r.attributes[1].1,
            Value::String("a \"quoted\" name; with, separators".into())
        );
    }

    #[test]
    fn header_values_may_be_comma_separated() {
        let mut r = OcciRequest::default();
        add_field(
            &mut r,
            "Category",
            "compute; scheme=\"http://schemas.ogf.org/occi/infrastructure#\"; class=\"kind\", small; scheme=\"http://schemas.veem.dev/occi/resource_tpl#\"; class=\"mixin\"",
        )
        .expect("valid");
        add_field(
            &mut r,
            "X-OCCI-Attribute",
            "occi.compute.memory=2.5, occi.core.title=\"a, b\"",
        )
        .expect("valid");
        assert_eq!(r.categories.len(), 2);
        assert_eq!(r.categories[1].term, "small");
        assert_eq!(r.attributes[0].1, Value::Number(2.5));
        assert_eq!(r.attributes[1].1, Value::String("a, b".into()));
    }

    #[test]
    fn links_carry_their_target_category_and_attributes() {
        let mut r = OcciRequest::default();
        add_field(
            &mut r,
            "Link",
            "</network/lan>; rel=\"http://schemas.ogf.org/occi/infrastructure#network\"; category=\"http://schemas.ogf.org/occi/infrastructure#networkinterface\"; occi.networkinterface.address=\"10.0.0.5\"",
        )
        .expect("valid");
        assert_eq!(r.links[0].target, "/network/lan");
        assert_eq!(
            r.links[0].categories,
            vec![format!("{INFRA}networkinterface")]
        );
        assert_eq!(r.links[0].attributes[0].1, Value::String("10.0.0.5".into()));
    }

    #[test]
    fn malformed_fields_are_refused_with_their_reason() {
        for bad in [
            "Category: compute\n",
            "Category: compute; scheme=\"http://x\"\n",
            "Category: compute; scheme=\"http://x#\"; class=\"thing\"\n",
            "Category: ; scheme=\"http://x#\"\n",
            "X-OCCI-Attribute: occi.compute.cores\n",
            "X-OCCI-Attribute: occi.compute.cores=two\n",
            "X-OCCI-Attribute: occi.core.title=\"open\n",
            "X-OCCI-Attribute: a=1\nX-OCCI-Attribute: a=2\n",
            "Link: /network/x; rel=\"a\"\n",
            "Whatever: x\n",
            "no colon at all\n",
        ] {
            let mut r = OcciRequest::default();
            assert!(parse_plain(bad, &mut r).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_query_interface_names_attributes_and_actions_of_compute() {
        let all = static_categories();
        let fields = categories(all);
        let compute = fields
            .iter()
            .find(|(_, v)| v.starts_with("compute;"))
            .expect("compute is served");
        assert!(compute.1.contains("class=\"kind\""));
        assert!(compute
            .1
            .contains("rel=\"http://schemas.ogf.org/occi/core#resource\""));
        assert!(compute.1.contains("location=\"/compute/\""));
        assert!(compute.1.contains("occi.compute.state{immutable}"));
        assert!(compute
            .1
            .contains("http://schemas.ogf.org/occi/infrastructure/compute/action#start"));
        assert!(all
            .iter()
            .any(|c| c.class == Class::Action && c.term == "suspend"));
    }

    #[test]
    fn an_entity_renders_and_reads_back() {
        let compute = static_categories()
            .iter()
            .find(|c| c.term == "compute")
            .expect("compute");
        let e = Entity {
            kind: CategoryRef::of(compute),
            mixins: Vec::new(),
            attributes: vec![
                ("occi.core.id".into(), Value::String("vee-1".into())),
                ("occi.compute.cores".into(), Value::Number(2.0)),
                ("occi.compute.memory".into(), Value::Number(0.5)),
            ],
            actions: vec![format!("{}start", super::super::model::COMPUTE_ACTION)],
            location: "/compute/vee-1".into(),
            links: Vec::new(),
            source: None,
            target: None,
        };
        let body = plain_body(&entity(&e));
        assert!(body.contains("Link: </compute/vee-1?action=start>; rel=\"http://schemas.ogf.org/occi/infrastructure/compute/action#start\"\n"));
        assert!(body.contains("X-OCCI-Attribute: occi.compute.memory=0.5\n"));
        let mut r = OcciRequest::default();
        parse_plain(&body, &mut r).expect("its own rendering reads back");
        assert_eq!(r.categories[0].term, "compute");
        assert_eq!(r.attributes, e.attributes);
        let headers = occi_headers(&entity(&e));
        assert_eq!(
            headers
                .iter()
                .filter(|(n, _)| *n == "X-OCCI-Attribute")
                .count(),
            1
        );
    }
}
