//! The OpenAPI document (`../openapi.json`) stays true to the router: every route `router`
//! registers is documented with the same methods and nothing else is, and every operation
//! says what the VMI's conventions promise (a token, problem+json errors, 413 for bodies).
//! The fuzzer (`scripts/fuzz-http`) then checks the answers against it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

fn document() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
}

/// `(path, method)` of every route `router` in `mod.rs` registers, read from its source: a
/// `.route("<path>", ...)` and the method functions (`get(..)`, `.patch(..)`, ...) up to the
/// next route.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("mod.rs");
    let body = source
        .split_once("pub fn router(")
        .map(|(_, rest)| rest)
        // The function ends at the first closing brace in the first column.
        .and_then(|rest| rest.split_once("\n}\n").map(|(body, _)| body))
        .expect("mod.rs has fn router");
    let mut routes = BTreeSet::new();
    for segment in body.split(".route(").skip(1) {
        let segment = segment.split(".fallback(").next().unwrap_or(segment);
        let path = segment
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split_once('"'))
            .map(|(path, _)| path)
            .expect("a route's path is a string literal");
        let mut found = false;
        for method in METHODS {
            let call = format!("{method}(");
            let called = segment.match_indices(&call).any(|(at, _)| {
                !segment[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if called {
                routes.insert((path.to_owned(), method.to_owned()));
                found = true;
            }
        }
        assert!(found, "no method found for route {path}");
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("a path item is an object");
            METHODS
                .iter()
                .filter(|m| item.contains_key(**m))
                .map(|m| (path.clone(), (*m).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((path.clone(), method.to_owned(), op));
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} resolves")),
            )
        }
        None => value,
    }
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let routed = routed();
    let documented = documented(&document());
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from openapi.json: {undocumented:?}; \
         operations in openapi.json no route serves: {unrouted:?}"
    );
    // The parser itself found what it should: a route of each shape.
    for expected in [
        ("/vees/{id}", "patch"),
        ("/monitoring/subscriptions/{id}", "delete"),
        ("/agents/connect", "get"),
        ("/images/{name}", "put"),
    ] {
        assert!(
            routed.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} read from mod.rs"
        );
    }
}

#[test]
fn the_document_has_the_shape_clients_rely_on() {
    let doc = document();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    assert_eq!(doc["servers"][0]["url"], veem_api::BASE_PATH);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    let mut ids = BTreeMap::new();
    for (path, method, op) in operations(&doc) {
        let name = format!("{} {path}", method.to_uppercase());
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has an operationId"));
        assert!(
            ids.insert(id.to_owned(), name.clone()).is_none(),
            "operationId {id} is used twice"
        );
        // Every `{param}` of the path is declared, as a required path parameter.
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|p| p.iter().map(|p| resolve(&doc, p)).collect())
            .unwrap_or_default();
        for template in path.split('/').filter_map(|s| s.strip_prefix('{')) {
            let param = template.trim_end_matches('}');
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == param && p["in"] == "path" && p["required"] == true),
                "{name}: path parameter {param} is declared"
            );
        }
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has responses"));
        // An operation that asks no token (`"security": []`) is never answered 401.
        let open = op["security"].as_array().is_some_and(Vec::is_empty);
        if !open {
            assert!(responses.contains_key("401"), "{name} documents 401");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413"] {
                assert!(
                    responses.contains_key(status),
                    "{name} takes a body and documents {status}"
                );
            }
        }
        for (status, response) in responses {
            let response = resolve(&doc, response);
            let code: u16 = status.parse().expect("statuses are numbers");
            if code >= 400 {
                let schema = &response["content"]["application/problem+json"]["schema"];
                assert_eq!(
                    resolve(&doc, schema)["required"],
                    serde_json::json!(["type", "title", "status", "detail", "code"]),
                    "{name} {status} is a problem document"
                );
            } else if code != 101 && code != 204 {
                assert!(
                    response["content"]
                        .as_object()
                        .is_some_and(|c| !c.is_empty()),
                    "{name} {status} says what it carries"
                );
            }
        }
    }
    // Links (what the fuzzer follows from a created resource) name real operations.
    for (path, method, op) in operations(&doc) {
        for response in op["responses"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.values())
        {
            for (link, target) in response["links"].as_object().into_iter().flatten() {
                let id = target["operationId"].as_str().unwrap_or_default();
                assert!(
                    ids.contains_key(id),
                    "{method} {path}: link {link} names operation {id:?}, which exists"
                );
            }
        }
    }
}

/// Every `$ref` anywhere in the document points at something.
#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, value: &Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, value);
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    let doc = document();
    walk(&doc, &doc);
}
