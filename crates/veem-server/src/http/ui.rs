//! The web dashboard at `/ui/`: static files built into the binary (nothing is fetched at run
//! time, nothing is read from disk), served beside the VMI. The page is only a client of the
//! VMI: it calls `/vmi/v1/...` with the token a person types, like any SM. Served without a
//! token (the files hold no data) and by every front-end of a cluster alike, since they are
//! the same everywhere; only the page's VMI calls go to the leader.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::problem::ApiError;
use crate::error::CoreError;

/// Where the dashboard lives.
pub(crate) const PATH: &str = "/ui";

/// One file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const INDEX: &str = "index.html";

const ASSETS: &[Asset] = &[
    Asset {
        name: INDEX,
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../ui/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../ui/favicon.svg"),
    },
];

/// Only the page's own files, and no inline script or style: data the page shows (a VEE's
/// name, a console's text) can never run as code, even if it were written into the markup.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes; they need no state, so any router (the VMI's, or the front door of
/// a front-end among several) can merge them.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATH, get(|| async { Redirect::permanent("/ui/") }))
        .route(&format!("{PATH}/"), get(index))
        .route(&format!("{PATH}/{{asset}}"), get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::from(CoreError::NotFound(format!(
            "the dashboard has no file {name:?}; open /ui/"
        )))
        .into_response();
    };
    let etag = etag(asset.bytes);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The names carry no version: a browser asks again each time (a cheap 304 while the
    // binary is the same), so a new veem never runs with an old page's script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// A strong validator of a file's bytes (FNV-1a: a change of the file changes it; nothing here
/// needs it to resist a forger, since the bytes are the binary's own).
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn call(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(request.body(Body::empty()).expect("a valid request"))
            .await
            .expect("infallible")
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body in memory");
        String::from_utf8(bytes.to_vec()).expect("UTF-8 text")
    }

    fn header_of(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    #[tokio::test]
    async fn each_file_is_served_with_its_type_and_the_security_headers() {
        for (path, content_type, text) in [
            ("/ui/", "text/html; charset=utf-8", "<script src=\"app.js\""),
            ("/ui/index.html", "text/html; charset=utf-8", "<title>veem"),
            (
                "/ui/app.js",
                "text/javascript; charset=utf-8",
                "Authorization",
            ),
            ("/ui/style.css", "text/css; charset=utf-8", "body"),
            ("/ui/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let response = call(path, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), content_type);
            assert!(
                header_of(&response, header::CONTENT_SECURITY_POLICY)
                    .starts_with("default-src 'self';"),
                "{path}"
            );
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
            assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-cache");
            assert!(body(response).await.contains(text), "{path}");
        }
    }

    #[tokio::test]
    async fn the_page_has_no_inline_script_and_never_writes_html_from_data() {
        let page = body(call("/ui/", None).await).await;
        // Every <script> names its file: the CSP would refuse an inline one anyway.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        for handler in [
            "onclick", "onload", "onsubmit", "onchange", "oninput", "onerror",
        ] {
            assert!(!page.contains(handler), "no inline handler: {handler}");
        }
        let script = body(call("/ui/app.js", None).await).await;
        assert!(
            !script.contains("innerHTML"),
            "DOM APIs and textContent only"
        );
        assert!(!script.contains("insertAdjacentHTML"));
        assert!(!script.contains("eval("));
    }

    #[tokio::test]
    async fn a_known_version_is_not_sent_again() {
        let first = call("/ui/app.js", None).await;
        let tag = header_of(&first, header::ETAG).to_owned();
        let again = call("/ui/app.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let other = call("/ui/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn ui_without_its_slash_is_redirected_and_an_unknown_file_is_404() {
        let response = call("/ui", None).await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header_of(&response, header::LOCATION), "/ui/");
        for path in ["/ui/nope.js", "/ui/..%2Fveem.toml", "/ui/app.js.map"] {
            let response = call(path, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(
                header_of(&response, header::CONTENT_TYPE),
                "application/problem+json"
            );
        }
    }
}
