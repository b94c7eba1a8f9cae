//! Images of the VEEM's store fetched by digest (`Fetcher::fetch_image`) from front-ends made in
//! the test with axum: the first that gives the right bytes wins, bytes of another digest are
//! never cached, and a digest cached (or being fetched) is not fetched again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use veem_agent::fetch::{FetchConfig, FetchError, Fetcher, VeemOrigin};
use veem_agent::uplink::Credentials;

const TOKEN: &str = "agent-token";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A front-end that answers every blob with `bytes` to a caller with [`TOKEN`], counting the
/// requests: its base URL and its count.
async fn front_end(bytes: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let state = (Arc::new(bytes), served.clone());
    let app = Router::new()
        .route(
            "/vmi/v1/agents/blobs/{sha256}",
            get(
                |State((bytes, served)): State<(Arc<Vec<u8>>, Arc<AtomicUsize>)>,
                 Path(_sha256): Path<String>,
                 headers: HeaderMap| async move {
                    served.fetch_add(1, Ordering::SeqCst);
                    let authorized = headers
                        .get("authorization")
                        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                    if !authorized {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    // Slow enough that concurrent fetches overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Ok(bytes.as_ref().clone())
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, served)
}

/// A URL where nothing listens.
async fn nobody() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn fetcher(cache: &std::path::Path, servers: Vec<String>) -> Fetcher {
    Fetcher::new(cache.to_owned(), FetchConfig::default())
        .unwrap()
        .with_origin(VeemOrigin {
            servers,
            credentials: Credentials {
                token: Some(TOKEN.to_owned()),
                tls: None,
            },
        })
}

#[tokio::test]
async fn an_image_comes_whole_and_checked_from_the_first_front_end_that_gives_it_once() {
    let bytes = b"the image's bytes ".repeat(10_000);
    let digest = sha256_hex(&bytes);
    let down = nobody().await;
    let (lying, lied) = front_end(b"other bytes".to_vec()).await;
    let (honest, served) = front_end(bytes.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    // On loopback: the operator's URLs are not held to the public-address rule.
    let fetcher = Arc::new(fetcher(cache.path(), vec![down, lying, honest]));

    let (one, two) = tokio::join!(
        fetcher.fetch_image(&digest, bytes.len() as u64),
        fetcher.fetch_image(&digest, bytes.len() as u64)
    );
    let path = one.unwrap();
    assert_eq!(two.unwrap(), path);
    assert_eq!(path, cache.path().join("sha256").join(&digest));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(
        lied.load(Ordering::SeqCst),
        1,
        "the lying front-end was tried once"
    );
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "two deployments, one download"
    );

    fetcher
        .fetch_image(&digest, bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "a cached digest is not fetched again"
    );
}

#[tokio::test]
async fn bytes_of_another_digest_or_size_are_never_cached() {
    let bytes = b"what the image holds".repeat(1_000);
    let digest = sha256_hex(&bytes);
    let (lying, _) = front_end(b"a tampered image".repeat(1_000)).await;
    let cache = tempfile::tempdir().unwrap();
    let error = fetcher(cache.path(), vec![lying])
        .fetch_image(&digest, bytes.len() as u64)
        .await
        .expect_err("the bytes do not hash to the digest");
    let FetchError::NoFrontEnd { failures, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(failures[0].contains("hash to"), "{failures:?}");

    // Longer than the image is said to be: cut off.
    let (longer, _) = front_end([bytes.clone(), b"more".to_vec()].concat()).await;
    let error = fetcher(cache.path(), vec![longer])
        .fetch_image(&digest, bytes.len() as u64)
        .await
        .expect_err("more bytes than the image has");
    assert!(error.to_string().contains("larger than"), "{error}");

    let error = fetcher(cache.path(), vec![])
        .fetch_image("../../etc/passwd", 1)
        .await
        .expect_err("not a digest");
    assert!(matches!(error, FetchError::BadDigest(_)), "{error:?}");
    // Nothing but what a whole, checked download leaves: no entry, no temporary file.
    let left: Vec<_> = std::fs::read_dir(cache.path().join("sha256"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
