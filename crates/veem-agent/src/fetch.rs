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
//! - A host fetches from public addresses only: a URL whose host is, or resolves to, a
//!   loopback, private, link-local (cloud metadata), shared, multicast or unspecified address is
//!   refused before any connection, also when a redirect leads there, unless the address lies in
//!   one of `allowed_networks` (the site's own image servers). Otherwise a tenant could make a
//!   host fetch what only the host can reach (its agent's port, a metadata service, a database's
//!   HTTP interface) and read it back by downloading the disk. Proxies from the environment are
//!   not used, since the check must see the address actually connected to.
//! - An entry, once whole, is used as it is: a URL is fetched once per host. Publish a changed
//!   image under a new URL (a versioned name) for hosts to fetch it again. A VEE's disk made
//!   from an entry is a whole copy (see the drivers), so removing entries never harms a VEE.
//! - Images of the VEEM's own store come by digest ([`Fetcher::fetch_image`]): from the
//!   VEEM's front-ends the operator named (`veem agent --server URL1,URL2`), tried in order,
//!   with the agent's credentials, into `sha256/<hex>` of the cache, checked against the
//!   digest before they are renamed into place. The public-address rule does not apply there:
//!   those URLs are the operator's, not a tenant's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
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
    /// Non-public networks the host may fetch from nevertheless (the config's `fetch_allow`).
    pub allowed_networks: Vec<IpNet>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_FETCH_MAX_BYTES,
            ca_file: None,
            stall_timeout: DEFAULT_FETCH_STALL_TIMEOUT,
            allowed_networks: Vec::new(),
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
    #[error(
        "fetching {url}: {address} is not a public address, and hosts fetch from others only \
         under fetch_allow"
    )]
    NotPublic { url: String, address: IpAddr },
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
    #[error("fetching {url}: the bytes hash to {found}, not to {expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        found: String,
    },
    #[error("the image of digest {0:?} is not a SHA-256 digest")]
    BadDigest(String),
    #[error("fetching the image of digest {sha256}: this host knows no VEEM to fetch it from")]
    NoOrigin { sha256: String },
    #[error("fetching the image of digest {sha256}: no front-end gave it ({})", .failures.join("; "))]
    NoFrontEnd {
        sha256: String,
        failures: Vec<String>,
    },
}

/// Where a remote host fetches images of the VEEM's store: its front-ends, and the agent's
/// own credentials there.
#[derive(Debug, Clone)]
pub struct VeemOrigin {
    /// The front-ends' base URLs (`http(s)://host:port`), tried in order.
    pub servers: Vec<String>,
    pub credentials: crate::uplink::Credentials,
}

/// One host's cache of fetched sources.
pub struct Fetcher {
    cache_dir: PathBuf,
    config: FetchConfig,
    /// The certificates of `config.ca_file`, read and checked at construction.
    extra_roots: Vec<reqwest::Certificate>,
    /// Built at the first download, and shared with the fetchers made by [`Fetcher::for_cache`].
    client: Arc<OnceLock<reqwest::Client>>,
    /// One lock per URL (or digest) being fetched, so concurrent deployments of it fetch once.
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The VEEM's front-ends, for images of its store; `None` on a host that gets them as
    /// files (in-process).
    origin: Option<VeemOrigin>,
    /// The client for the front-ends: no address check, the agent's TLS; built when first
    /// needed.
    origin_client: OnceLock<reqwest::Client>,
}

impl Fetcher {
    /// A cache in `cache_dir` (created when first needed). A bad `ca_file` fails here; the
    /// HTTP client itself is built at the first download (see [`Fetcher::client`]).
    pub fn new(cache_dir: PathBuf, config: FetchConfig) -> Result<Self, FetchError> {
        let mut extra_roots = Vec::new();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| FetchError::CaFile {
                path: path.clone(),
                source,
            })?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                FetchError::BadCa {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(Self {
            cache_dir,
            config,
            extra_roots,
            client: Arc::new(OnceLock::new()),
            downloads: Mutex::new(HashMap::new()),
            origin: None,
            origin_client: OnceLock::new(),
        })
    }

    /// Fetches images of the VEEM's store from `origin` (a remote host's front-ends).
    pub fn with_origin(mut self, origin: VeemOrigin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The client for the VEEM's front-ends (see [`Fetcher::with_origin`]).
    fn origin_client(&self, origin: &VeemOrigin) -> Result<&reqwest::Client, FetchError> {
        if let Some(client) = self.origin_client.get() {
            return Ok(client);
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.config.stall_timeout)
            .read_timeout(self.config.stall_timeout);
        if let Some(tls) = &origin.credentials.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let client = builder.build().map_err(FetchError::Client)?;
        Ok(self.origin_client.get_or_init(|| client))
    }

    /// The HTTP client, built when first needed: a client holds its own copy of the system's
    /// root certificates (about 100 KB), and a site of 10,000 in-process hosts that never
    /// fetch would otherwise hold 10,000 of them (1 GB; see "Memory at scale" in
    /// BENCHMARKS.md).
    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let allowed = Arc::new(self.config.allowed_networks.clone());
        let redirects_allowed = allowed.clone();
        // A redirect to an address literal is judged here; one to a name, by the resolver.
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match literal_address(attempt.url()) {
                Some(address) if !may_fetch_from(address, &redirects_allowed) => attempt.error(
                    format!("a redirect to {address}, which is not a public address"),
                ),
                _ => attempt.follow(),
            }
        });
        let mut builder = reqwest::Client::builder()
            .redirect(redirects)
            .dns_resolver(Arc::new(PublicResolver { allowed }))
            .no_proxy()
            .connect_timeout(self.config.stall_timeout)
            .read_timeout(self.config.stall_timeout);
        for certificate in &self.extra_roots {
            builder = builder.add_root_certificate(certificate.clone());
        }
        let client = builder.build().map_err(FetchError::Client)?;
        // Two first downloads may race to build one; either client will do.
        Ok(self.client.get_or_init(|| client))
    }

    /// A fetcher with its own cache in `cache_dir` that shares this one's HTTP client and
    /// settings: the in-process hosts of one VEEM share one client (its TLS roots are parsed
    /// once, not once per host: 10,000 hosts would hold 10,000 copies).
    pub fn for_cache(&self, cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            config: self.config.clone(),
            extra_roots: self.extra_roots.clone(),
            client: self.client.clone(),
            downloads: Mutex::new(HashMap::new()),
            origin: self.origin.clone(),
            origin_client: OnceLock::new(),
        }
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
        self.once(url, entry.clone(), || self.download(url, &entry))
            .await
    }

    /// The cached file of the VEEM's image of digest `sha256` (`size_bytes` long), fetched
    /// now from the first of the VEEM's front-ends that gives it, unless the cache has it
    /// whole already.
    pub async fn fetch_image(&self, sha256: &str, size_bytes: u64) -> Result<PathBuf, FetchError> {
        if !veem_layout::is_sha256_hex(sha256) {
            return Err(FetchError::BadDigest(sha256.to_owned()));
        }
        let entry = veem_layout::cached_blob_path(&self.cache_dir, sha256);
        let key = format!("sha256:{sha256}");
        self.once(&key, entry.clone(), || {
            self.download_image(sha256, size_bytes, &entry)
        })
        .await
    }

    /// `entry`, made by `download` unless it is there whole; concurrent calls with one `key`
    /// share one download: the first takes the key's lock, the others wait for it and find
    /// the entry made.
    async fn once<F, Fut>(
        &self,
        key: &str,
        entry: PathBuf,
        download: F,
    ) -> Result<PathBuf, FetchError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), FetchError>>,
    {
        let lock = {
            let mut downloads = self
                .downloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            downloads.entry(key.to_owned()).or_default().clone()
        };
        let result = {
            let _download = lock.lock().await;
            if tokio::fs::try_exists(&entry).await.unwrap_or(false) {
                Ok(entry)
            } else {
                download().await.map(|()| entry)
            }
        };
        let mut downloads = self
            .downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The last one out removes the key's lock (the map holds one reference).
        if Arc::strong_count(&lock) <= 2 {
            downloads.remove(key);
        }
        result
    }

    /// Fetches the image of `sha256` from the VEEM's front-ends, in order, into `entry`.
    async fn download_image(
        &self,
        sha256: &str,
        size_bytes: u64,
        entry: &Path,
    ) -> Result<(), FetchError> {
        let origin = self.origin.as_ref().ok_or_else(|| FetchError::NoOrigin {
            sha256: sha256.to_owned(),
        })?;
        let client = self.origin_client(origin)?;
        let mut failures = Vec::new();
        for server in &origin.servers {
            let url = format!(
                "{}{}/agents/blobs/{sha256}",
                server.trim_end_matches('/'),
                veem_api::BASE_PATH
            );
            let mut request = client.get(&url);
            if let Some(token) = &origin.credentials.token {
                request = request.bearer_auth(token);
            }
            let limit = size_bytes.min(self.config.max_bytes);
            let outcome = match request.send().await {
                Ok(response) => {
                    self.receive(&url, response, entry, limit, Some(sha256))
                        .await
                }
                Err(source) => Err(FetchError::Request {
                    url: url.clone(),
                    source,
                }),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%url, error = %error, "a front-end did not give an image; trying the next");
                    failures.push(error_chain(&error));
                }
            }
        }
        Err(FetchError::NoFrontEnd {
            sha256: sha256.to_owned(),
            failures,
        })
    }

    async fn download(&self, url: &str, entry: &Path) -> Result<(), FetchError> {
        let request_error = |source| FetchError::Request {
            url: url.to_owned(),
            source,
        };
        if let Some(address) = reqwest::Url::parse(url)
            .ok()
            .as_ref()
            .and_then(literal_address)
        {
            if !may_fetch_from(address, &self.config.allowed_networks) {
                return Err(FetchError::NotPublic {
                    url: url.to_owned(),
                    address,
                });
            }
        }
        let response = self
            .client()?
            .get(url)
            .send()
            .await
            .map_err(request_error)?;
        self.receive(url, response, entry, self.config.max_bytes, None)
            .await
    }

    /// Streams a successful `response` of `url` into `entry`, whole or not at all: at most
    /// `limit` bytes, no pause longer than the stall timeout, and, with `sha256`, only bytes
    /// of that digest.
    async fn receive(
        &self,
        url: &str,
        mut response: reqwest::Response,
        entry: &Path,
        limit: u64,
        sha256: Option<&str>,
    ) -> Result<(), FetchError> {
        let write_error = |path: &Path, source| FetchError::Write {
            url: url.to_owned(),
            path: path.to_owned(),
            source,
        };
        let request_error = |source| FetchError::Request {
            url: url.to_owned(),
            source,
        };
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
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
        if let Some(dir) = entry.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| write_error(dir, e))?;
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
            let mut hasher = Sha256::new();
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
                if sha256.is_some() {
                    hasher.update(&chunk);
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| write_error(&temp, e))?;
            }
            if let Some(expected) = sha256 {
                let found: String = hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if found != expected {
                    return Err(FetchError::DigestMismatch {
                        url: url.to_owned(),
                        expected: expected.to_owned(),
                        found,
                    });
                }
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

/// An error and its causes in one line, for a list of failures.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The address a URL's host names literally (`http://10.0.0.1/`, `http://[::1]/`), if it does.
fn literal_address(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    // An IPv6 literal keeps its brackets in a URL.
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Whether a host may connect to `address` to fetch a source: a public address, or one of the
/// allowed networks.
pub fn may_fetch_from(address: IpAddr, allowed: &[IpNet]) -> bool {
    is_public(address) || allowed.iter().any(|net| net.contains(&address))
}

/// Whether `address` is reachable from anywhere, as opposed to the host's own (loopback),
/// its networks' (private, shared, link-local: where cloud metadata services answer) or
/// nobody's (unspecified, multicast, broadcast, documentation, reserved). An IPv4 address
/// written as IPv6 is judged as IPv4.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking (RFC 2544)
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            // IPv4-compatible addresses (::a.b.c.d, deprecated) are nobody's to fetch from.
            let ipv4_compatible = v6.segments()[..6].iter().all(|s| *s == 0);
            !(ipv4_compatible
                || v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)) // NAT64 of any IPv4
        }
    }
}

/// Resolves names as the system does and keeps only the addresses a host may fetch from, so a
/// name that resolves to a loopback or private address is refused like the address itself.
struct PublicResolver {
    allowed: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let refused: Vec<IpAddr> = resolved
                .iter()
                .map(SocketAddr::ip)
                .filter(|ip| !may_fetch_from(*ip, &allowed))
                .collect();
            let usable: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| may_fetch_from(a.ip(), &allowed))
                .collect();
            if usable.is_empty() {
                let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "{host} resolves to {}, which is not a public address, and hosts fetch \
                     from others only under fetch_allow",
                    refused.join(", ")
                )
                .into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched_from_unless_allowed() {
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "::7f00:1",
            "::a00:1",
        ];
        for address in refused {
            let ip: IpAddr = address.parse().expect("an address");
            assert!(!is_public(ip), "{address} must not count as public");
            assert!(!may_fetch_from(ip, &[]), "{address}");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for address in public {
            let ip: IpAddr = address.parse().expect("an address");
            assert!(is_public(ip), "{address} is public");
        }
        let allowed: Vec<IpNet> = vec!["10.1.0.0/16".parse().expect("a network")];
        assert!(may_fetch_from("10.1.2.3".parse().expect("ip"), &allowed));
        assert!(!may_fetch_from("10.2.0.1".parse().expect("ip"), &allowed));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        use reqwest::dns::Resolve;
        let resolver = PublicResolver {
            allowed: Arc::new(Vec::new()),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        let error = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("localhost resolves to") && error.contains("127.0.0.1"),
            "{error}"
        );
        let allowed = PublicResolver {
            allowed: Arc::new(vec!["127.0.0.0/8".parse().expect("a network")]),
        };
        let name: reqwest::dns::Name = "localhost".parse().expect("a name");
        assert!(
            allowed.resolve(name).await.is_ok(),
            "allowed networks are resolved"
        );
    }

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
