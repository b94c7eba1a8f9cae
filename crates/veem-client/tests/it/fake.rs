//! A stand-in VEEM: records every request and answers from a table of canned responses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is json")
    }
}

#[derive(Clone)]
struct Canned {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
pub struct Fake {
    routes: Arc<Mutex<HashMap<(Method, String), Canned>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Starts the server on a free loopback port; returns it and its base url.
    pub async fn start() -> (Fake, String) {
        let fake = Fake::default();
        let app = Router::new().fallback(answer).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the fake server runs");
        });
        (fake, format!("http://{addr}"))
    }

    pub fn answer(
        &self,
        method: Method,
        path: &str,
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    ) {
        self.routes.lock().unwrap().insert(
            (method, path.to_owned()),
            Canned {
                status,
                content_type,
                body,
            },
        );
    }

    pub fn answer_json(&self, method: Method, path: &str, status: u16, body: serde_json::Value) {
        self.answer(
            method,
            path,
            status,
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        );
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received so far.
    pub fn one(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {seen:?}");
        seen.into_iter().next().unwrap()
    }
}

async fn answer(State(fake): State<Fake>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 * 1024 * 1024)
        .await
        .expect("the request body arrives whole");
    fake.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.to_vec(),
    });
    // An answer registered for the path with its query wins over one for the bare path.
    let canned = {
        let routes = fake.routes.lock().unwrap();
        let with_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_owned());
        with_query
            .and_then(|pq| routes.get(&(parts.method.clone(), pq)).cloned())
            .or_else(|| {
                routes
                    .get(&(parts.method.clone(), parts.uri.path().to_owned()))
                    .cloned()
            })
    };
    match canned {
        Some(c) => Response::builder()
            .status(c.status)
            .header(header::CONTENT_TYPE, c.content_type)
            .body(Body::from(c.body))
            .unwrap(),
        None => (StatusCode::IM_A_TEAPOT, "no canned answer").into_response(),
    }
}
