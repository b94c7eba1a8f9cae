//! Wire types: the JSON bodies of the VMI over HTTP (`shared/vmi-http.md`) and the messages of
//! the host-agent protocol.
//!
//! These types are what crosses a network, kept apart from the domain types of `veem-model` so
//! the contract can be read in one place. Nothing here does I/O or knows a route; the server maps
//! them to its core, the client sends them.

pub mod agent;

use serde::{Deserialize, Serialize};
use veem_model::{
    ControlAction, Generated, HostId, InitModel, Phase, VeeDescriptor, VeemState, VmiState,
};

/// The base path of every route.
pub const BASE_PATH: &str = "/vmi/v1";

/// An RFC 9457 problem document: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable snake_case word: `malformed_descriptor`, `wrong_state`, `not_found`, ...
    pub code: String,
}

/// The stable error codes of the contract, and the extensions veem adds.
pub mod code {
    pub const MALFORMED_DESCRIPTOR: &str = "malformed_descriptor";
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const INSUFFICIENT_RESOURCES: &str = "insufficient_resources";
    pub const WRONG_STATE: &str = "wrong_state";
    pub const ACCESS_DENIED: &str = "access_denied";
    pub const NOT_FOUND: &str = "not_found";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const IN_USE: &str = "in_use";
    pub const PENDING: &str = "pending";
    pub const TIMEOUT: &str = "timeout";
    pub const DEPLOYMENT_FAILED: &str = "deployment_failed";
    pub const HOST_FAILED: &str = "host_failed";
    pub const CONFLICT: &str = "conflict";
    pub const INTERNAL: &str = "internal";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const SITE_UNREACHABLE: &str = "site_unreachable";
    /// A front-end that does not lead its site and cannot reach the one that does.
    pub const NOT_LEADER: &str = "not_leader";
}

/// The most VEE ids one call takes (SubmitVEEs, UpdateState, accounting listeners): a larger
/// batch is refused before any work is done. A caller with more splits them.
pub const MAX_IDS_PER_CALL: usize = 10_000;

/// The largest JSON or OVF request body the VMI reads (images are streamed and not bound by it).
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitializeRequest {
    pub model: InitModel,
    #[serde(default = "one")]
    pub count: u32,
    pub descriptor: VeeDescriptor,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializedVee {
    pub id: String,
    pub state: VmiState,
    pub generated: Generated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeResponse {
    pub vees: Vec<InitializedVee>,
}

/// `POST /vees/plan`: where each VEE of an InitializeVEEs batch would land now (TWOPHASE:
/// all together), or why the batch could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResponse {
    pub feasible: bool,
    pub placements: Vec<PlannedPlacement>,
}

/// One VEE of a planned batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPlacement {
    /// Its position in the batch, from 0.
    pub index: u32,
    /// The name it would get (`db-2` for the second of a batch of `db`).
    pub name: String,
    pub site: String,
    pub host: Option<String>,
    pub reason: Option<String>,
}

/// One id of a batch that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub id: String,
    pub error: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub submitted: Vec<String>,
    pub failed: Vec<ItemFailure>,
}

/// The collection type of Section 2.6 of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// One after another, in the given order.
    List,
    /// In any order, concurrently.
    Set,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStateRequest {
    pub order: Order,
    pub ids: Vec<String>,
    pub action: ControlAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStateResponse {
    pub applied: Vec<String>,
    pub failed: Vec<ItemFailure>,
}

/// A VEE as `GET /vees/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub state: VmiState,
    pub veem_state: VeemState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    pub host: Option<HostId>,
    pub site: String,
    /// Whether `site` answers: `unreachable` while it does not (the VEE shows its last known
    /// state, and actions on it fail with `site_unreachable`). A VEEM before federation sends
    /// none: its VEEs are all at its own site, which answers.
    #[serde(default)]
    pub site_state: SiteState,
    pub descriptor: VeeDescriptor,
    pub generated: Generated,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Times the VEEM booted the VEE again after its instance died, since its last ACTIVATE.
    #[serde(default)]
    pub restarts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeList {
    pub vees: Vec<VeeView>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchApplied {
    /// The running VEE was changed without a restart.
    Live,
    /// The VEE holds no host now; the change takes effect when it is next activated.
    NextActivation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchResponse {
    pub vee: VeeView,
    pub applied: PatchApplied,
}

/// `POST /vees/{id}/migrate` to a host of this site (placement chooses when `host` is absent):
/// an ACTIVE, PAUSED or SUSPENDED VEE moves with its memory (and its disks when the host does
/// not see them) and comes back in the state it had (admin).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Absent or `true` keeps an ACTIVE VEE running while it moves; `false` pauses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
}

/// `POST /vees/{id}/migrate` to another site (`{"site": "east", "live": false}`): the VEE
/// moves there with its disks, and its memory when it has any (admin, at its primary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteMigrateRequest {
    pub site: String,
    /// `true` keeps it running while it moves; absent or `false` moves it paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
}

/// `POST /vees/incoming` (a veem extension, for migration between sites): defines a VEE of the
/// caller's from `descriptor`, on a host of this site that waits for its migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingRequest {
    pub descriptor: VeeDescriptor,
}

/// The answer to `POST /vees/incoming`: the VEE waiting, and where its sender sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingView {
    pub vee: VeeView,
    /// Where the sender sends the VEE's memory and devices (`tcp:host:port`).
    pub uri: String,
    /// Where the sender copies the VEE's disks; absent when the host sees them already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<agent::DiskCopy>,
}

/// `POST /vees/{id}/incoming/complete` (a veem extension): the state the VEE whose migration
/// arrived is left in, `ACTIVE` (the default) or `PAUSED` (it then runs at no moment here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteIncomingRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmiState>,
}

/// `POST /vees/{id}/send` (a veem extension, for migration between sites): sends the caller's
/// ACTIVE or PAUSED VEE to what a `POST /vees/incoming` answered at another site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<agent::DiskCopy>,
}

/// A migration's figures, as the sending host measured them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentView {
    pub total_ms: u64,
    pub downtime_ms: u64,
}

/// One state change of a VEE (`GET /vees/{id}/events`, a veem extension).
pub use veem_model::VeeEvent;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<VeeEvent>,
}

/// `GET /vees/{id}/monitoring`: the monitoring events about a VEE that the VEEM still keeps,
/// oldest first (a veem extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitoringHistory {
    pub events: Vec<veem_model::MonitoringEvent>,
}

/// The most console bytes `GET /vees/{id}/console` gives, and what it gives unasked.
pub const CONSOLE_TAIL_MAX_BYTES: u64 = 1 << 20;
pub const CONSOLE_TAIL_DEFAULT_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    pub name: String,
    pub format: String,
    pub size_bytes: u64,
    pub owner: String,
    pub created_ms: u64,
    /// The SHA-256 of the bytes (64 lowercase hex digits); absent from a VEEM that predates
    /// it, or for an image whose bytes were lost before it was hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<ImageView>,
}

/// `POST /accounting/listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenRequest {
    pub ids: Vec<String>,
    pub interval_ms: u64,
    pub callback: String,
}

/// `POST /accounting/listeners/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlistenRequest {
    pub ids: Vec<String>,
}

/// `GET /vees/{id}/accounting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountingList {
    pub records: Vec<veem_model::AccountingRecord>,
}

/// `POST /monitoring/subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub callback: String,
    /// The event types wanted; all when empty or absent.
    #[serde(default)]
    pub types: Vec<veem_model::EventType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResponse {
    pub id: String,
}

/// `POST /monitoring`'s answer (`202`): how many measurements were taken in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutMonitoringResponse {
    pub events: usize,
    pub measurements: usize,
}

/// `POST /networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    pub name: String,
    /// IPv4 in CIDR form, e.g. `10.10.0.0/24`.
    pub cidr: String,
    #[serde(default)]
    pub public: bool,
    /// Makes the network this site's side of another site's LAN (federation): see
    /// [`LanExtensionRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<LanExtensionRequest>,
}

/// `POST /networks` `"extends"`: the LAN's VXLAN network identifier, agreed on every side, and
/// the other side's hosts (VXLAN endpoints) this site's hosts flood its broadcasts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanExtensionRequest {
    pub vni: u32,
    pub peers: Vec<LanEndpoint>,
}

/// A host's VXLAN endpoint: its underlay address and UDP port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanEndpoint {
    pub address: std::net::IpAddr,
    pub port: u16,
}

/// How a network's LAN is joined with other sites' LANs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanExtensionView {
    pub vni: u32,
    /// The other sides' hosts this site's hosts flood to.
    pub peers: Vec<LanEndpoint>,
    /// This site's hosts, which the other sides flood to.
    pub endpoints: Vec<LanEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub name: String,
    pub owner: String,
    pub cidr: String,
    pub public: bool,
    /// The hosts' address on a public network (they reach its VEEs through it); `null` on a
    /// private one, which nothing outside it reaches.
    pub host_address: Option<String>,
    /// Addresses held by VEEs, and those still free for VEEs.
    pub addresses_used: u64,
    pub addresses_free: u64,
    pub created_ms: u64,
    /// Set when the LAN is joined with other sites' LANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<LanExtensionView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkList {
    pub networks: Vec<NetworkView>,
}

/// `POST /sites`: a remote VEEM this one may place VEEs at, and what it presents there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRequest {
    pub name: String,
    pub url: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
}

/// Whether a registered site answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    #[default]
    Up,
    /// No answer for 10 s: its VEEs show their last known state, actions on them fail.
    Unreachable,
}

/// `GET /cluster`: the front-ends sharing the site's database, and which one leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The leader's name; `null` while none holds a live lease.
    pub leader: Option<String>,
    /// The front-ends heard from lately, by name.
    pub members: Vec<ClusterMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub name: String,
    /// Where the others and agents reach it (its `advertise_url`).
    pub url: String,
    pub role: ClusterRole,
    /// Since when it holds its role, in ms since the Unix epoch.
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    Leader,
    Follower,
}

/// A site as `GET /sites` shows it: a non-admin sees its name and state only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub state: SiteState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// How many of this VEEM's VEEs run there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vees: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteList {
    pub sites: Vec<SiteView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HostState {
    /// Connected and healthy: takes new VEEs.
    Up,
    /// Disabled by an operator: keeps its VEEs, takes no new ones.
    Disabled,
    /// Not connected, or its driver reports a failure.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub id: HostId,
    pub state: HostState,
    pub driver: String,
    /// `in-process` or `remote`.
    pub agent: String,
    pub capacity: Resources,
    pub used: Resources,
    pub vees: Vec<String>,
    pub last_seen_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when the host is in its `state` (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Why a `down` host is down: disconnected, a failed health check, or lost (no answer
    /// for `host_dead_after_ms`: its VEEs were moved to other hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<HostView>,
    /// With `?limit=`: the `after` of the next page, `null` on the last. Without: all hosts.
    #[serde(default)]
    pub next: Option<String>,
}
