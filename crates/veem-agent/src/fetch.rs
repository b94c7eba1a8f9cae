//! The host's cache of `http(s)://` sources: a URL a VEE's plan names is fetched once into a
//! directory of the agent's state, and the drivers then read the cached file.
//!
//! - An entry's name is the SHA-256 of the URL, so any URL makes a plain file name.
//! - A download streams into a temporary file beside the entry and is renamed into place only
//!   whole: a reader (or an agent restarted after a kill) never sees a torn file.
//! - Concurrent deployments of one URL share one download: the first takes the URL's lock,
//!   the others wait for it and find the entry made.
//! - A download is refused as soon as its `Content-Length` or the bytes streamed pass
//!   `max_bytes`; it fails when no byte came for `stall_timeout`; redirects are followed a few
//!   times at most; TLS is verified against the system's roots and the configured CA file.
//! - An entry, once whole, is used as it is: a URL is fetched once per host. Publish a changed
//!   image under a new URL (a versioned name) for hosts to fetch it again. A VEE's disk made
//!   from an entry is a whole copy (see the drivers), so removing entries never harms a VEE.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// 20 GiB: a large cloud image fits, a stream that never ends does not.
pub const DEFAULT_FETCH_MAX_BYTES: u64 = 20 << 30;
/// How long a download may go without receiving a byte.
pub const DEFAULT_FETCH_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed before a download fails.
pub const MAX_REDIRECTS: usize = 5;

/// How a host fetches sources.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The largest source a host fetches.
    pub max_bytes: u64,
    /// A PEM file of CA certificates trusted besides the system's roots (a site's own CA).
    pub ca_file: Option<PathBuf>,
    /// How long a download may go without progress.
    pub stall_timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_FETCH_MAX_BYTES,
            ca_file: None,
            stall_timeout: DEFAULT_FETCH_STALL_TIMEOUT,
        }
    }
}

/// Why a source could not be fetched. Every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: the server answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error(
        "fetching {url}: it is larger than the {limit} bytes a host fetches (fetch_max_bytes)"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("fetching {url}: no data for {} s", after.as_secs())]
    Stalled { url: String, after: Duration },
    #[error("fetching {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url}: cannot write {}", path.display())]
    Write {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the CA file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {} holds no usable certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// One host's cache of fetched sources.
pub struct Fetcher {
    cache_dir: PathBuf,
    config: FetchConfig,
    client: reqwest::Client,
    /// One lock per URL being fetched, so concurrent deployments of it fetch once.
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    /// A cache in `cache_dir` (created when first needed).
    pub fn new(cache_dir: PathBuf, config: FetchConfig) -> Result<Self, FetchError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(config.stall_timeout)
            .read_timeout(config.stall_timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| FetchError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                FetchError::BadCa {
                    path: path.clone(),
                    source,
                }
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(FetchError::Client)?;
        Ok(Self {
            cache_dir,
            config,
            client,
            downloads: Mutex::new(HashMap::new()),
        })
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where `url` is (or will be) cached.
    pub fn entry_path(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.cache_dir.join(name)
    }

    /// The cached file of `url`, fetched now unless the cache has it whole already.
    pub async fn fetch(&self, url: &str) -> Result<PathBuf, FetchError> {
        let entry = self.entry_path(url);
        let lock = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            downloads.entry(url.to_owned()).or_default().clone()
        };
        let result = {
            let _download = lock.lock().await;
            if tokio::fs::try_exists(&entry).await.unwrap_or(false) {
                Ok(entry)
            } else {
                self.download(url, &entry).await.map(|()| entry)
            }
        };
        let mut downloads = self
            .downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The last one out removes the URL's lock (the map holds one reference).
        if Arc::strong_count(&lock) <= 2 {
            downloads.remove(url);
        }
        result
    }

    async fn download(&self, url: &str, entry: &Path) -> Result<(), FetchError> {
        let write_error = |path: &Path, source| FetchError::Write {
            url: url.to_owned(),
            path: path.to_owned(),
            source,
        };
        tokio::fs::create_dir_all(&self.cache_dir)
            .await
            .map_err(|e| write_error(&self.cache_dir, e))?;
        let request_error = |source| FetchError::Request {
            url: url.to_owned(),
            source,
        };
        let mut response = self.client.get(url).send().await.map_err(request_error)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let limit = self.config.max_bytes;
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit,
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err(too_large());
        }
        let temp = entry.with_file_name(format!(
            ".{}.{:016x}.tmp",
            entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rand::random::<u64>()
        ));
        let streamed = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| write_error(&temp, e))?;
            let mut received: u64 = 0;
            loop {
                let chunk = tokio::time::timeout(self.config.stall_timeout, response.chunk())
                    .await
                    .map_err(|_| FetchError::Stalled {
                        url: url.to_owned(),
                        after: self.config.stall_timeout,
                    })?
                    .map_err(request_error)?;
                let Some(chunk) = chunk else { break };
                received = received.saturating_add(chunk.len() as u64);
                if received > limit {
                    return Err(too_large());
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| write_error(&temp, e))?;
            }
            file.sync_all().await.map_err(|e| write_error(&temp, e))?;
            tokio::fs::rename(&temp, entry)
                .await
                .map_err(|e| write_error(entry, e))
        }
        .await;
        if streamed.is_err() {
            // Best effort: a partial download is useless either way.
            let _ = tokio::fs::remove_file(&temp).await;
        }
        streamed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_named_by_the_url_hash() {
        let fetcher = Fetcher::new("/cache".into(), FetchConfig::default()).expect("a client");
        let a = fetcher.entry_path("http://h/a.qcow2");
        assert_eq!(a.parent(), Some(Path::new("/cache")));
        assert_eq!(a.file_name().map(|n| n.len()), Some(64));
        assert_ne!(a, fetcher.entry_path("http://h/b.qcow2"));
        assert_eq!(a, fetcher.entry_path("http://h/a.qcow2"));
        // A URL never reaches the file system as a path.
        let odd = fetcher.entry_path("http://h/../../etc/passwd");
        assert_eq!(odd.parent(), Some(Path::new("/cache")));
    }
}
