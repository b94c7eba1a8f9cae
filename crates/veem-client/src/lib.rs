//! The typed client of the VMI over HTTP (`shared/vmi-http.md`): what an SM, a peer VEEM, the
//! `veem` CLI and the end-to-end tests use to talk to a VEEM.
//!
//! One method per route, taking and returning the wire types of `veem-api`; errors keep the
//! problem document the VEEM answered with. Disk and image bytes are streamed between the
//! network and files, never held whole in memory. This crate never decides anything the VEEM
//! decides (no validation of descriptors, no retries of control actions): it only carries
//! requests and answers, so tests through it see exactly what the server does.

mod error;
mod sse;

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Body, Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use veem_api::{
    AccountingList, CompleteIncomingRequest, EventList, HostList, HostView, ImageList, ImageView,
    IncomingRequest, IncomingView, InitializeRequest, InitializeResponse, ListenRequest,
    MigrateRequest, MonitoringHistory, NetworkList, NetworkRequest, NetworkView, PatchRequest,
    PatchResponse, PlanResponse, PutMonitoringResponse, SendRequest, SentView, SiteList,
    SiteMigrateRequest, SiteRequest, SiteView, SubmitRequest, SubmitResponse, SubscribeRequest,
    SubscribeResponse, UnlistenRequest, UpdateStateRequest, UpdateStateResponse, VeeList, VeeView,
    BASE_PATH,
};
use veem_model::{EventType, InitModel, MonitoringEvent, VmiState};

pub use error::ClientError;
/// The wire types, so that a user of the client needs no second dependency to name them.
pub use veem_api;
pub use veem_model;

const OVF_XML: &str = "application/ovf+xml";
const OCTET_STREAM: &str = "application/octet-stream";

/// What UpdateVEEState waits for when the request names no `timeout_ms` (the contract's default).
const DEFAULT_UPDATE_TIMEOUT_MS: u64 = 60_000;
/// How much longer than the server's own deadline the client waits, so that the server's answer
/// (listing what did not finish) arrives rather than a client-side timeout.
const UPDATE_GRACE: Duration = Duration::from_secs(30);
/// Connecting should be quick; answers may legitimately take long (deployments, big images).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Large enough that an image upload is not thousands of tiny writes.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Query of `POST /vees/initialize` with an OVF envelope as body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfQuery {
    pub model: InitModel,
    pub count: u32,
    pub tags: Vec<String>,
    pub anti_affinity: Vec<String>,
    /// A DeploymentOptionSection configuration; the envelope's default when absent.
    pub configuration: Option<String>,
}

impl Default for OvfQuery {
    fn default() -> Self {
        Self {
            model: InitModel::Besteffort,
            count: 1,
            tags: Vec::new(),
            anti_affinity: Vec::new(),
            configuration: None,
        }
    }
}

/// Query of `GET /vees`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub state: Option<VmiState>,
    pub tag: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// A connection to one VEEM as one principal. Cheap to clone: clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// `base_url` is where the VEEM listens (`http://127.0.0.1:7070`, possibly with a path prefix
    /// in front of `/vmi/v1`); `token` is the bearer token naming the principal. An empty token
    /// sends no `Authorization` header, which the VEEM answers with `401`. An `https://` VEEM
    /// is verified against the system's roots.
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        Self::with_ca(base_url, token, None)
    }

    /// [`Client::new`], with an `https://` VEEM verified against the system's roots plus the
    /// certificates of `ca_file` (a site's own CA, as `veem tls init` makes).
    pub fn with_ca(
        base_url: &str,
        token: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let tls = veem_tls::client_config(ca_file, None).map_err(ClientError::Tls)?;
        Self::with_tls(base_url, token, tls)
    }

    /// [`Client::new`], with an `https://` VEEM verified (and this side identified, where the
    /// VEEM asks for a client certificate) as `tls` says: a peer site's CA and certificate.
    pub fn with_tls(
        base_url: &str,
        token: &str,
        tls: veem_tls::rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        let mut base = Url::parse(base_url)
            .map_err(|error| ClientError::InvalidUrl(format!("{base_url:?}: {error}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(format!(
                "{base_url:?}: the scheme must be http:// or https://"
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        let mut headers = HeaderMap::new();
        if !token.is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidToken)?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self { http, base })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// InitializeVEEs with a JSON descriptor.
    pub async fn initialize(
        &self,
        req: &InitializeRequest,
    ) -> Result<InitializeResponse, ClientError> {
        self.call(self.post(&["vees", "initialize"]).json(req))
            .await
    }

    /// InitializeVEEs with an OVF envelope.
    pub async fn initialize_ovf(
        &self,
        ovf_xml: String,
        q: &OvfQuery,
    ) -> Result<InitializeResponse, ClientError> {
        self.call(self.ovf_request("initialize", ovf_xml, q)).await
    }

    /// A placement plan of an InitializeVEEs batch (JSON descriptor): where it would land
    /// now, changing nothing.
    pub async fn plan(&self, req: &InitializeRequest) -> Result<PlanResponse, ClientError> {
        self.call(self.post(&["vees", "plan"]).json(req)).await
    }

    /// A placement plan of an InitializeVEEs batch given as an OVF envelope.
    pub async fn plan_ovf(
        &self,
        ovf_xml: String,
        q: &OvfQuery,
    ) -> Result<PlanResponse, ClientError> {
        self.call(self.ovf_request("plan", ovf_xml, q)).await
    }

    /// `POST /vees/{verb}` with an OVF envelope and its query, as InitializeVEEs takes it.
    fn ovf_request(&self, verb: &str, ovf_xml: String, q: &OvfQuery) -> RequestBuilder {
        let mut url = self.url(&["vees", verb]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("model", model_name(q.model));
            query.append_pair("count", &q.count.to_string());
            if !q.tags.is_empty() {
                query.append_pair("tags", &q.tags.join(","));
            }
            if !q.anti_affinity.is_empty() {
                query.append_pair("anti_affinity", &q.anti_affinity.join(","));
            }
            if let Some(configuration) = &q.configuration {
                query.append_pair("configuration", configuration);
            }
        }
        self.http
            .post(url)
            .header(header::CONTENT_TYPE, OVF_XML)
            .body(ovf_xml)
    }

    /// SubmitVEEs.
    pub async fn submit(&self, ids: &[String]) -> Result<SubmitResponse, ClientError> {
        let body = SubmitRequest { ids: ids.to_vec() };
        self.call(self.post(&["vees", "submit"]).json(&body)).await
    }

    /// UpdateVEEState. Waits as long as the server may (its `timeout_ms`) plus a grace period.
    pub async fn update_state(
        &self,
        req: &UpdateStateRequest,
    ) -> Result<UpdateStateResponse, ClientError> {
        let request = self
            .post(&["vees", "update-state"])
            .timeout(update_state_timeout(req))
            .json(req);
        self.call(request).await
    }

    pub async fn get_vee(&self, id: &str) -> Result<VeeView, ClientError> {
        self.call(self.get(&["vees", id])).await
    }

    /// One page of the caller's VEEs.
    pub async fn list_vees(&self, q: &ListQuery) -> Result<VeeList, ClientError> {
        let mut url = self.url(&["vees"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(state) = q.state {
                query.append_pair("state", state.as_str());
            }
            if let Some(tag) = &q.tag {
                query.append_pair("tag", tag);
            }
            if let Some(limit) = q.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(after) = &q.after {
                query.append_pair("after", after);
            }
        }
        // `query_pairs_mut` leaves a bare `?` behind when nothing was appended.
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(self.http.get(url)).await
    }

    /// Every VEE matching `q`, following `next` from `q.after` to the last page.
    pub async fn list_all_vees(&self, q: &ListQuery) -> Result<Vec<VeeView>, ClientError> {
        let mut query = q.clone();
        let mut vees = Vec::new();
        loop {
            let page = self.list_vees(&query).await?;
            vees.extend(page.vees);
            match page.next {
                None => return Ok(vees),
                Some(next) if query.after.as_deref() == Some(next.as_str()) => {
                    return Err(ClientError::Decode(format!(
                        "GET {BASE_PATH}/vees: the page after {next} names {next} again"
                    )));
                }
                Some(next) => query.after = Some(next),
            }
        }
    }

    /// Changes memory or CPUs of a VEE (live when it runs and stays within its ceilings).
    pub async fn patch_vee(
        &self,
        id: &str,
        req: &PatchRequest,
    ) -> Result<PatchResponse, ClientError> {
        let request = self.http.patch(self.url(&["vees", id])).json(req);
        self.call(request).await
    }

    /// Moves an ACTIVE VEE to another host (admin).
    pub async fn migrate_vee(
        &self,
        id: &str,
        req: &MigrateRequest,
    ) -> Result<VeeView, ClientError> {
        self.call(self.post(&["vees", id, "migrate"]).json(req))
            .await
    }

    /// Moves a VEE to another site, `live` or paused (admin, at its primary).
    pub async fn migrate_vee_to_site(
        &self,
        id: &str,
        req: &SiteMigrateRequest,
    ) -> Result<VeeView, ClientError> {
        self.call(self.post(&["vees", id, "migrate"]).json(req))
            .await
    }

    /// Defines a VEE of the caller's on a host that waits for its migration from another site
    /// (a veem extension); the answer says where to send it.
    pub async fn receive_vee(&self, req: &IncomingRequest) -> Result<IncomingView, ClientError> {
        self.call(self.post(&["vees", "incoming"]).json(req)).await
    }

    /// Runs a VEE whose migration arrived, or leaves it `paused` (a veem extension).
    pub async fn complete_incoming(&self, id: &str, paused: bool) -> Result<VeeView, ClientError> {
        let request = CompleteIncomingRequest {
            state: paused.then_some(VmiState::Paused),
        };
        self.call(
            self.post(&["vees", id, "incoming", "complete"])
                .json(&request),
        )
        .await
    }

    /// Sends a VEE to what [`Client::receive_vee`] answered at another site (a veem
    /// extension); the VEE ends here once it arrived.
    pub async fn send_vee(&self, id: &str, req: &SendRequest) -> Result<SentView, ClientError> {
        self.call(self.post(&["vees", id, "send"]).json(req)).await
    }

    /// Destroys the VEE if needed and removes every byte stored for it.
    pub async fn purge_vee(&self, id: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&["vees", id])))
            .await
            .map(drop)
    }

    /// The VEE's state changes (a veem extension).
    pub async fn vee_events(&self, id: &str) -> Result<EventList, ClientError> {
        self.call(self.get(&["vees", id, "events"])).await
    }

    /// The last `bytes` of the VEE's serial console (a veem extension).
    pub async fn console_tail(&self, id: &str, bytes: u64) -> Result<Vec<u8>, ClientError> {
        let mut url = self.url(&["vees", id, "console"]);
        url.query_pairs_mut()
            .append_pair("bytes", &bytes.to_string());
        let response = self.send(self.http.get(url)).await?;
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        Ok(body.to_vec())
    }

    /// The monitoring events about a VEE that its VEEM keeps, of `kind` if given, from
    /// `from_ms` on (a veem extension).
    pub async fn vee_monitoring(
        &self,
        id: &str,
        kind: Option<EventType>,
        from_ms: Option<u64>,
    ) -> Result<MonitoringHistory, ClientError> {
        let mut url = self.url(&["vees", id, "monitoring"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(kind) = kind {
                query.append_pair("type", kind.as_str());
            }
            if let Some(from) = from_ms {
                query.append_pair("from", &from.to_string());
            }
        }
        self.call(self.http.get(url)).await
    }

    /// Streams a disk of a DEFINED or DESTROYED VEE into `out`; returns the bytes written.
    pub async fn download_disk(
        &self,
        id: &str,
        target: &str,
        out: &Path,
    ) -> Result<u64, ClientError> {
        self.download_disk_with_progress(id, target, out, None)
            .await
    }

    /// [`Client::download_disk`], calling `progress` with (bytes written, total when the
    /// answer says it) as the download goes.
    pub async fn download_disk_with_progress(
        &self,
        id: &str,
        target: &str,
        out: &Path,
        progress: Option<&(dyn Fn(u64, Option<u64>) + Send + Sync)>,
    ) -> Result<u64, ClientError> {
        self.download(self.get(&["vees", id, "disks", target]), out, progress)
            .await
    }

    /// Puts the contents of disk `target` of a DEFINED or DESTROYED VEE, streamed from `file`
    /// (a veem extension, for migration between sites).
    pub async fn upload_disk(
        &self,
        id: &str,
        target: &str,
        file: &Path,
    ) -> Result<(), ClientError> {
        let source = tokio::fs::File::open(file).await?;
        let total = source.metadata().await?.len();
        let request = self
            .http
            .put(self.url(&["vees", id, "disks", target]))
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .header(header::CONTENT_LENGTH, total)
            .body(Body::wrap_stream(ReaderStream::with_capacity(
                source,
                UPLOAD_CHUNK_BYTES,
            )));
        self.send(request).await.map(drop)
    }

    /// Uploads an image, streaming it from `file`. `progress` is called with (bytes sent, total)
    /// as the upload goes.
    pub async fn push_image(
        &self,
        name: &str,
        file: &Path,
        progress: Option<&(dyn Fn(u64, u64) + Send + Sync)>,
    ) -> Result<ImageView, ClientError> {
        let source = tokio::fs::File::open(file).await?;
        let total = source.metadata().await?.len();
        // The body must be 'static, the callback is borrowed: the stream reports sizes through a
        // channel and this function calls the callback while the request is under way.
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stream =
            ReaderStream::with_capacity(source, UPLOAD_CHUNK_BYTES).inspect_ok(move |chunk| {
                // The receiver only goes away once the answer is in; nothing is left to report.
                let _ = sent_tx.send(chunk.len() as u64);
            });
        let request = self
            .http
            .put(self.url(&["images", name]))
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .header(header::CONTENT_LENGTH, total)
            .body(Body::wrap_stream(stream));
        let answer = self.call::<ImageView>(request);
        tokio::pin!(answer);
        let mut sent = 0u64;
        let mut reporting = true;
        loop {
            tokio::select! {
                result = &mut answer => {
                    // Chunks read before the answer arrived still count.
                    while let Ok(len) = sent_rx.try_recv() {
                        sent += len;
                        if let Some(report) = progress {
                            report(sent, total);
                        }
                    }
                    return result;
                }
                chunk = sent_rx.recv(), if reporting => match chunk {
                    Some(len) => {
                        sent += len;
                        if let Some(report) = progress {
                            report(sent, total);
                        }
                    }
                    None => reporting = false,
                },
            }
        }
    }

    /// Uploads an image held in memory.
    pub async fn push_image_bytes(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<ImageView, ClientError> {
        let request = self
            .http
            .put(self.url(&["images", name]))
            .header(header::CONTENT_TYPE, OCTET_STREAM)
            .body(bytes);
        self.call(request).await
    }

    pub async fn list_images(&self) -> Result<ImageList, ClientError> {
        self.call(self.get(&["images"])).await
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageView, ClientError> {
        self.call(self.get(&["images", name])).await
    }

    /// Streams an image's bytes into `out`; returns the bytes written.
    pub async fn image_data(&self, name: &str, out: &Path) -> Result<u64, ClientError> {
        self.download(self.get(&["images", name, "data"]), out, None)
            .await
    }

    pub async fn delete_image(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&["images", name])))
            .await
            .map(drop)
    }

    /// Registers the caller as the accounting listener of `ids`, sent every `interval_ms` to
    /// `callback` (registering again changes the interval).
    pub async fn listen(
        &self,
        ids: &[&str],
        interval_ms: u64,
        callback: &str,
    ) -> Result<(), ClientError> {
        let body = ListenRequest {
            ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            interval_ms,
            callback: callback.to_owned(),
        };
        self.send(self.post(&["accounting", "listeners"]).json(&body))
            .await
            .map(drop)
    }

    /// Stops the caller's accounting listeners of `ids`.
    pub async fn unlisten(&self, ids: &[&str]) -> Result<(), ClientError> {
        let body = UnlistenRequest {
            ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        };
        self.send(
            self.post(&["accounting", "listeners", "remove"])
                .json(&body),
        )
        .await
        .map(drop)
    }

    /// A VEE's accounting records with `t0` in `[from_ms, to_ms)`.
    pub async fn vee_accounting(
        &self,
        id: &str,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<AccountingList, ClientError> {
        let mut url = self.url(&["vees", id, "accounting"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(from) = from_ms {
                query.append_pair("from", &from.to_string());
            }
            if let Some(to) = to_ms {
                query.append_pair("to", &to.to_string());
            }
        }
        self.call(self.http.get(url)).await
    }

    /// PutMonitoringInformation.
    pub async fn put_monitoring(
        &self,
        events: &[MonitoringEvent],
    ) -> Result<PutMonitoringResponse, ClientError> {
        self.call(self.post(&["monitoring"]).json(events)).await
    }

    /// Subscribes `callback` to the monitoring events the caller sees (all types when empty).
    pub async fn subscribe(
        &self,
        callback: &str,
        types: &[EventType],
    ) -> Result<SubscribeResponse, ClientError> {
        let body = SubscribeRequest {
            callback: callback.to_owned(),
            types: types.to_vec(),
        };
        self.call(self.post(&["monitoring", "subscriptions"]).json(&body))
            .await
    }

    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        self.send(
            self.http
                .delete(self.url(&["monitoring", "subscriptions", id])),
        )
        .await
        .map(drop)
    }

    /// The live stream of monitoring events (`GET /monitoring/stream`, server-sent events), as
    /// they come; it ends when the VEEM closes it.
    pub async fn monitoring_stream(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<MonitoringEvent, ClientError>>, ClientError>
    {
        let response = self.send(self.get(&["monitoring", "stream"])).await?;
        let bytes = response.bytes_stream();
        Ok(futures::stream::unfold(
            (bytes, sse::Parser::default()),
            |(mut bytes, mut parser)| async move {
                loop {
                    if let Some(message) = parser.next_message() {
                        if message.event == "lagged" {
                            continue;
                        }
                        let event = serde_json::from_str(&message.data)
                            .map_err(|e| ClientError::Decode(format!("monitoring stream: {e}")));
                        return Some((event, (bytes, parser)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => parser.feed(&chunk),
                        Some(Err(e)) => {
                            return Some((Err(ClientError::Transport(e)), (bytes, parser)))
                        }
                        None => return None,
                    }
                }
            },
        ))
    }

    /// Creates a network (a virtual LAN) of the caller's; `public` ones are admin-only.
    pub async fn create_network(
        &self,
        name: &str,
        cidr: &str,
        public: bool,
    ) -> Result<NetworkView, ClientError> {
        self.create_network_with(&NetworkRequest {
            name: name.to_owned(),
            cidr: cidr.to_owned(),
            public,
            extends: None,
        })
        .await
    }

    /// `POST /networks` with every field, e.g. a site's side of a LAN of another site's
    /// (`extends`).
    pub async fn create_network_with(
        &self,
        body: &NetworkRequest,
    ) -> Result<NetworkView, ClientError> {
        self.call(self.http.post(self.url(&["networks"])).json(body))
            .await
    }

    /// The caller's networks and the public ones.
    pub async fn list_networks(&self) -> Result<NetworkList, ClientError> {
        self.call(self.get(&["networks"])).await
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkView, ClientError> {
        self.call(self.get(&["networks", name])).await
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&["networks", name])))
            .await
            .map(drop)
    }

    /// Registers a remote site (admin): the site is tried at once.
    pub async fn add_site(&self, request: &SiteRequest) -> Result<SiteView, ClientError> {
        self.call(self.http.post(self.url(&["sites"])).json(request))
            .await
    }

    /// The registered sites.
    pub async fn list_sites(&self) -> Result<SiteList, ClientError> {
        self.call(self.get(&["sites"])).await
    }

    pub async fn get_site(&self, name: &str) -> Result<SiteView, ClientError> {
        self.call(self.get(&["sites", name])).await
    }

    pub async fn delete_site(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&["sites", name])))
            .await
            .map(drop)
    }

    /// The front-ends sharing the site's database and which one leads (admin).
    pub async fn cluster(&self) -> Result<veem_api::ClusterView, ClientError> {
        self.call(self.get(&["cluster"])).await
    }

    /// Every host of the site (admin).
    pub async fn list_hosts(&self) -> Result<HostList, ClientError> {
        self.call(self.get(&["hosts"])).await
    }

    /// One page of the site's hosts, by id, after `after` (admin); `next` names the page after.
    pub async fn list_hosts_page(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<HostList, ClientError> {
        let mut url = self.url(&["hosts"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &limit.to_string());
            if let Some(after) = after {
                query.append_pair("after", after);
            }
        }
        self.call(self.http.get(url)).await
    }

    /// Disables a host (it keeps its VEEs and takes no new ones) or enables it again (admin; a
    /// veem extension).
    pub async fn set_host_enabled(
        &self,
        host: &str,
        enabled: bool,
    ) -> Result<HostView, ClientError> {
        let body = serde_json::json!({ "enabled": enabled });
        let request = self.http.patch(self.url(&["hosts", host])).json(&body);
        self.call(request).await
    }

    /// Sends `body` as is to `path` (e.g. `/vmi/v1/vees/initialize?count=2`, taken relative to
    /// the base URL) and returns the status, content type and body without interpreting them:
    /// for tests of what the VEEM does with malformed input.
    pub async fn raw_request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, String, Vec<u8>), ClientError> {
        let base = self.base.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}{path}"))
            .map_err(|error| ClientError::InvalidUrl(format!("{base}{path}: {error}")))?;
        let mut request = self.http.request(method, url).body(body);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status().as_u16();
        let content_type = content_type_of(&response).to_owned();
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        Ok((status, content_type, body.to_vec()))
    }

    /// `<base>/vmi/v1/<segments>`, each segment percent-encoded, so an id can never reach
    /// another route.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http:// url always has a path (checked in Client::new)")
            .pop_if_empty()
            .extend(BASE_PATH.split('/').filter(|part| !part.is_empty()))
            .extend(segments);
        url
    }

    fn get(&self, segments: &[&str]) -> RequestBuilder {
        self.http.get(self.url(segments))
    }

    fn post(&self, segments: &[&str]) -> RequestBuilder {
        self.http.post(self.url(segments))
    }

    /// Sends the request; a non-2xx answer becomes `Api` (with its problem) or `Http`.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        // The content type is not required: a problem is recognised by its fields.
        match serde_json::from_slice(&body) {
            Ok(problem) => Err(ClientError::Api(problem)),
            Err(_) => Err(ClientError::Http {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let route = response.url().path().to_owned();
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        serde_json::from_slice(&body)
            .map_err(|error| ClientError::Decode(format!("{route}: {error}")))
    }

    /// Writes the answer's body to `out` as it arrives. The file is created only once the VEEM
    /// has said yes, and removed again if the transfer breaks, so no truncated copy is left
    /// looking complete.
    async fn download(
        &self,
        request: RequestBuilder,
        out: &Path,
        progress: Option<&(dyn Fn(u64, Option<u64>) + Send + Sync)>,
    ) -> Result<u64, ClientError> {
        let response = self.send(request).await?;
        let mut file = tokio::fs::File::create(out).await?;
        let result = write_body(response, &mut file, progress).await;
        drop(file);
        if result.is_err() {
            // Only a regular file: `out` may be a device such as /dev/null.
            let regular = tokio::fs::metadata(out)
                .await
                .map(|meta| meta.is_file())
                .unwrap_or(false);
            if regular {
                let _ = tokio::fs::remove_file(out).await;
            }
        }
        result
    }
}

async fn write_body(
    response: Response,
    file: &mut tokio::fs::File,
    progress: Option<&(dyn Fn(u64, Option<u64>) + Send + Sync)>,
) -> Result<u64, ClientError> {
    let total = response.content_length();
    let mut stream = response.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ClientError::Transport)?;
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
        if let Some(report) = progress {
            report(written, total);
        }
    }
    file.flush().await?;
    Ok(written)
}

fn content_type_of(response: &Response) -> &str {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

fn model_name(model: InitModel) -> &'static str {
    match model {
        InitModel::Besteffort => "BESTEFFORT",
        InitModel::Twophase => "TWOPHASE",
    }
}

fn update_state_timeout(req: &UpdateStateRequest) -> Duration {
    Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_UPDATE_TIMEOUT_MS)) + UPDATE_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;
    use veem_api::Order;
    use veem_model::ControlAction;

    fn client(base: &str) -> Client {
        Client::new(base, "t").expect("a valid base url")
    }

    #[test]
    fn routes_are_under_the_base_path_and_ids_stay_one_segment() {
        let c = client("http://127.0.0.1:7070");
        assert_eq!(
            c.url(&["vees", "vee-00000001"]).as_str(),
            "http://127.0.0.1:7070/vmi/v1/vees/vee-00000001"
        );
        assert_eq!(
            c.url(&["vees", "../hosts"]).as_str(),
            "http://127.0.0.1:7070/vmi/v1/vees/..%2Fhosts"
        );
        let prefixed = client("http://example.test/veem/");
        assert_eq!(
            prefixed.url(&["images"]).as_str(),
            "http://example.test/veem/vmi/v1/images"
        );
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        assert!(Client::new("https://veem.example:7443", "t").is_ok());
        for bad in ["", "127.0.0.1:7070", "ftp://x", "not a url"] {
            assert!(
                matches!(Client::new(bad, "t"), Err(ClientError::InvalidUrl(_))),
                "{bad:?} should be refused"
            );
        }
        assert!(matches!(
            Client::new("http://x", "bad\ntoken"),
            Err(ClientError::InvalidToken)
        ));
        let error = Client::with_ca("https://x", "t", Some(Path::new("/nonexistent/ca.pem")))
            .expect_err("no such CA file");
        assert!(matches!(error, ClientError::Tls(_)));
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn update_state_waits_longer_than_the_server_deadline() {
        let mut req = UpdateStateRequest {
            order: Order::List,
            ids: vec![],
            action: ControlAction::Activate,
            timeout_ms: None,
        };
        assert_eq!(update_state_timeout(&req), Duration::from_secs(90));
        req.timeout_ms = Some(5_000);
        assert_eq!(update_state_timeout(&req), Duration::from_secs(35));
    }
}
