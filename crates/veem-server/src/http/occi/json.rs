//! The JSON rendering of GFD.226 (`application/occi+json`): the query interface as
//! `{"kinds", "mixins", "actions"}`, a resource or link as an object, collections as
//! `{"resources"}` or `{"links"}`, and the same read back from requests (an entity, an action
//! invocation `{"action", "attributes"}`, or a list of locations `{"locations"}`).

use serde_json::{json, Map, Value as Json};

use super::model::{Category, Class, Entity, Value};
use super::request::{LinkRequest, OcciRequest, RequestCategory};

fn value(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => json!(*n as i64),
        Value::Number(n) => json!(n),
        Value::Bool(b) => Json::Bool(*b),
    }
}

fn category(c: &Category) -> Json {
    let mut o = Map::new();
    o.insert("term".into(), json!(c.term));
    o.insert("scheme".into(), json!(c.scheme));
    o.insert("title".into(), json!(c.title));
    if !c.attributes.is_empty() {
        let attributes: Map<String, Json> = c
            .attributes
            .iter()
            .map(|a| {
                let mut d = Map::new();
                d.insert("mutable".into(), json!(a.mutable));
                d.insert("required".into(), json!(a.required));
                d.insert("type".into(), json!(a.kind.as_str()));
                if !a.values.is_empty() {
                    d.insert("pattern".into(), json!({ "enum": a.values }));
                }
                d.insert("description".into(), json!(a.description));
                (a.name.to_owned(), Json::Object(d))
            })
            .collect();
        o.insert("attributes".into(), Json::Object(attributes));
    }
    if c.class != Class::Action && !c.actions.is_empty() {
        o.insert("actions".into(), json!(c.actions));
    }
    if let Some(parent) = &c.parent {
        o.insert("parent".into(), json!(parent));
    }
    if c.class == Class::Mixin {
        if !c.depends.is_empty() {
            o.insert("depends".into(), json!(c.depends));
        }
        if !c.applies.is_empty() {
            o.insert("applies".into(), json!(c.applies));
        }
    }
    if let Some(location) = &c.location {
        o.insert("location".into(), json!(location));
    }
    Json::Object(o)
}

pub fn categories(all: &[Category]) -> Json {
    let of = |class: Class| -> Vec<Json> {
        all.iter()
            .filter(|c| c.class == class)
            .map(category)
            .collect()
    };
    let mut o = Map::new();
    for (name, class) in [
        ("kinds", Class::Kind),
        ("mixins", Class::Mixin),
        ("actions", Class::Action),
    ] {
        let list = of(class);
        if !list.is_empty() {
            o.insert(name.into(), Json::Array(list));
        }
    }
    Json::Object(o)
}

pub fn entity(e: &Entity) -> Json {
    let mut o = Map::new();
    o.insert("kind".into(), json!(e.kind.id()));
    if !e.mixins.is_empty() {
        o.insert(
            "mixins".into(),
            json!(e.mixins.iter().map(|m| m.id()).collect::<Vec<_>>()),
        );
    }
    let attributes: Map<String, Json> = e
        .attributes
        .iter()
        .map(|(n, v)| (n.clone(), value(v)))
        .collect();
    if let Some(Value::String(id)) = e.attribute("occi.core.id") {
        o.insert("id".into(), json!(id));
    }
    if let Some(Value::String(title)) = e.attribute("occi.core.title") {
        o.insert("title".into(), json!(title));
    }
    if let Some(Value::String(summary)) = e.attribute("occi.core.summary") {
        o.insert("summary".into(), json!(summary));
    }
    o.insert("attributes".into(), Json::Object(attributes));
    if !e.actions.is_empty() {
        o.insert("actions".into(), json!(e.actions));
    }
    if e.source.is_none() {
        o.insert(
            "links".into(),
            Json::Array(e.links.iter().map(entity).collect()),
        );
    }
    let end = |(location, kind): &(String, String)| json!({ "location": location, "kind": kind });
    if let Some(source) = &e.source {
        o.insert("source".into(), end(source));
    }
    if let Some(target) = &e.target {
        o.insert("target".into(), end(target));
    }
    o.insert("location".into(), json!(e.location));
    Json::Object(o)
}

/// A collection: `{"resources": [...]}`, or `{"links": [...]}` for a collection of links.
pub fn collection(entities: &[Entity], of_links: bool) -> Json {
    let name = if of_links { "links" } else { "resources" };
    json!({ name: entities.iter().map(entity).collect::<Vec<_>>() })
}

/// Why a JSON rendering could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct JsonError {
    pub field: String,
    pub reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> JsonError {
    JsonError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn category_id(field: &str, id: &Json) -> Result<RequestCategory, JsonError> {
    id.as_str()
        .and_then(RequestCategory::from_id)
        .ok_or_else(|| {
            error(
                field,
                format!("{id} is not a category identifier (scheme#term)"),
            )
        })
}

fn attributes(field: &str, json: Option<&Json>) -> Result<Vec<(String, Value)>, JsonError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let object = json
        .as_object()
        .ok_or_else(|| error(field, "must be an object of attribute names to values"))?;
    object
        .iter()
        .map(|(name, v)| {
            let v = match v {
                Json::String(s) => Value::String(s.clone()),
                Json::Number(n) => Value::Number(
                    n.as_f64()
                        .ok_or_else(|| error(name, "a number too large"))?,
                ),
                Json::Bool(b) => Value::Bool(*b),
                other => {
                    return Err(error(
                        name,
                        format!("{other} is not a string, number or boolean"),
                    ))
                }
            };
            Ok((name.clone(), v))
        })
        .collect()
}

const ENTITY_FIELDS: [&str; 11] = [
    "kind",
    "mixins",
    "attributes",
    "actions",
    "id",
    "title",
    "summary",
    "links",
    "location",
    "source",
    "target",
];

/// A request body: an entity, an action invocation, or a list of locations.
pub fn parse(body: &[u8]) -> Result<OcciRequest, JsonError> {
    let json: Json = serde_json::from_slice(body).map_err(|e| error("body", e.to_string()))?;
    let object = json
        .as_object()
        .ok_or_else(|| error("body", "must be a JSON object"))?;
    let mut request = OcciRequest::default();
    if let Some(action) = object.get("action") {
        if let Some(key) = object
            .keys()
            .find(|k| !["action", "attributes"].contains(&k.as_str()))
        {
            return Err(error(
                key,
                "an action invocation has only action and attributes",
            ));
        }
        let mut action = category_id("action", action)?;
        action.class = Some("action".into());
        request.categories.push(action);
        request.attributes = attributes("attributes", object.get("attributes"))?;
        return Ok(request);
    }
    if let Some(locations) = object.get("locations") {
        let list = locations
            .as_array()
            .ok_or_else(|| error("locations", "must be an array of locations"))?;
        for l in list {
            request.locations.push(
                l.as_str()
                    .ok_or_else(|| error("locations", format!("{l} is not a location")))?
                    .to_owned(),
            );
        }
        return Ok(request);
    }
    if let Some(key) = object.keys().find(|k| !ENTITY_FIELDS.contains(&k.as_str())) {
        return Err(error(key, "not a field of an OCCI entity"));
    }
    if let Some(kind) = object.get("kind") {
        let mut kind = category_id("kind", kind)?;
        kind.class = Some("kind".into());
        request.categories.push(kind);
    }
    if let Some(mixins) = object.get("mixins") {
        for m in mixins
            .as_array()
            .ok_or_else(|| error("mixins", "must be an array"))?
        {
            let mut mixin = category_id("mixins", m)?;
            mixin.class = Some("mixin".into());
            request.categories.push(mixin);
        }
    }
    request.attributes = attributes("attributes", object.get("attributes"))?;
    for (field, name) in [
        ("id", "occi.core.id"),
        ("title", "occi.core.title"),
        ("summary", "occi.core.summary"),
    ] {
        if let Some(v) = object.get(field) {
            let text = v.as_str().ok_or_else(|| error(field, "must be a string"))?;
            if !request.attributes.iter().any(|(n, _)| n == name) {
                request
                    .attributes
                    .push((name.to_owned(), Value::String(text.to_owned())));
            }
        }
    }
    // A link's ends (GFD.226: `"source": {"location": ..., "kind": ...}`, or the location
    // alone) are its occi.core.source and occi.core.target.
    for (field, name) in [
        ("source", "occi.core.source"),
        ("target", "occi.core.target"),
    ] {
        if let Some(end) = object.get(field) {
            let location = end
                .get("location")
                .or(Some(end))
                .and_then(Json::as_str)
                .ok_or_else(|| error(field, "must be a location or an object with a location"))?;
            if !request.attributes.iter().any(|(n, _)| n == name) {
                request
                    .attributes
                    .push((name.to_owned(), Value::String(location.to_owned())));
            }
        }
    }
    if let Some(links) = object.get("links") {
        for link in links
            .as_array()
            .ok_or_else(|| error("links", "must be an array"))?
        {
            request.links.push(parse_link(link)?);
        }
    }
    Ok(request)
}

fn parse_link(json: &Json) -> Result<LinkRequest, JsonError> {
    let object = json
        .as_object()
        .ok_or_else(|| error("links", "each link must be an object"))?;
    let target = object
        .get("target")
        .and_then(|t| t.get("location").or(Some(t)))
        .and_then(Json::as_str)
        .ok_or_else(|| error("links", "a link needs target.location"))?;
    let rel = object
        .get("target")
        .and_then(|t| t.get("kind"))
        .and_then(Json::as_str)
        .map(str::to_owned);
    let mut categories = Vec::new();
    if let Some(kind) = object.get("kind").and_then(Json::as_str) {
        categories.push(kind.to_owned());
    }
    if let Some(mixins) = object.get("mixins").and_then(Json::as_array) {
        categories.extend(mixins.iter().filter_map(Json::as_str).map(str::to_owned));
    }
    Ok(LinkRequest {
        target: target.to_owned(),
        rel,
        categories,
        attributes: attributes("links.attributes", object.get("attributes"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::{static_categories, INFRA};
    use super::*;

    #[test]
    fn the_query_interface_has_kinds_mixins_and_actions() {
        let json = categories(static_categories());
        let kinds = json["kinds"].as_array().expect("kinds");
        let compute = kinds
            .iter()
            .find(|k| k["term"] == "compute")
            .expect("compute");
        assert_eq!(compute["scheme"], INFRA);
        assert_eq!(
            compute["parent"],
            "http://schemas.ogf.org/occi/core#resource"
        );
        assert_eq!(compute["location"], "/compute/");
        assert_eq!(
            compute["attributes"]["occi.compute.cores"]["type"],
            "number"
        );
        assert_eq!(
            compute["attributes"]["occi.compute.state"]["mutable"],
            false
        );
        assert!(json["mixins"]
            .as_array()
            .expect("mixins")
            .iter()
            .any(|m| m["term"] == "os_tpl"));
        assert!(json["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["term"] == "start"));
    }

    #[test]
    fn a_resource_and_an_action_are_read() {
        let r = parse(br#"{"kind": "http://schemas.ogf.org/occi/infrastructure#compute", "mixins": ["http://schemas.veem.dev/occi/resource_tpl#small"], "attributes": {"occi.compute.cores": 2, "occi.core.title": "web"}}"#).expect("valid");
        assert_eq!(r.categories[0].term, "compute");
        assert_eq!(r.categories[1].term, "small");
        assert_eq!(r.attribute("occi.compute.cores"), Some(&Value::Number(2.0)));
        let a = parse(br#"{"action": "http://schemas.ogf.org/occi/infrastructure/compute/action#stop", "attributes": {"method": "graceful"}}"#).expect("valid");
        assert_eq!(a.categories[0].class.as_deref(), Some("action"));
        assert_eq!(
            a.attribute("method"),
            Some(&Value::String("graceful".into()))
        );
    }

    #[test]
    fn bad_json_is_refused_naming_what_is_wrong() {
        for (bad, field) in [
            (&b"[1]"[..], "body"),
            (b"{", "body"),
            (b"{\"kind\": 3}", "kind"),
            (b"{\"kind\": \"nohash\"}", "kind"),
            (b"{\"bogus\": 1}", "bogus"),
            (b"{\"attributes\": {\"a\": [1]}}", "a"),
            (b"{\"action\": \"http://x#y\", \"kind\": \"a#b\"}", "kind"),
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.field, field, "{}", String::from_utf8_lossy(bad));
        }
    }
}
