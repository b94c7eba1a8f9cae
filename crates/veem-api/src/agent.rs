//! The host-agent protocol: what the VEEM asks of a host (a VEEH), and what the host answers.
//!
//! An in-process agent receives these as function calls; a remote agent (`veem agent`) receives
//! them as JSON frames over a WebSocket it opened to the server, so both speak exactly this.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use veem_model::{DiskKind, HostId, ImageFormat, VeeId};

/// The first frame a remote agent sends: who it is and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHello {
    pub name: HostId,
    pub driver: String,
    pub cpus: u32,
    pub memory_mb: u64,
    /// The host keeps its VEEs' directories on storage of its own (`vees_dir`), which no other
    /// host sees: the VEEM records it as the holder of a VEE that ran there. `false` from an
    /// agent that predates it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_storage: bool,
}

/// Everything a driver needs to start a VEE. Paths are on the site's shared storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub vee: VeeId,
    pub name: String,
    pub cpu: u32,
    pub cpu_max: u32,
    pub memory_mb: u64,
    pub memory_max_mb: u64,
    pub disks: Vec<DiskPlan>,
    pub nics: Vec<NicPlan>,
    pub hypervisor: Option<String>,
    pub raw: String,
    /// The OVF environment document to put on the VEE's context disk, if any.
    pub ovf_env: Option<String>,
    /// The VEE's directory: its disks, saved memory and context disk live below it.
    pub vee_dir: PathBuf,
    /// The host does not hold the VEE's directory (the VEEM records another holder, or none):
    /// a directory of it found on the host's own storage is stale, left from an earlier stay,
    /// and is removed before the deployment instead of being taken for the VEE's disks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale_own_dir: bool,
    /// Direct kernel boot; `None` boots the first disk through the firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Box<BootPlan>>,
}

/// A kernel (and initrd) the hypervisor loads itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPlan {
    pub kernel: SourcePlan,
    pub initrd: Option<SourcePlan>,
    pub cmdline: String,
}

/// Where a disk's (or a kernel's) bytes come from, as the VEEM hands it to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum SourcePlan {
    /// A file the VEEM resolved and checked: an image of its store, or a `file:` source an
    /// admin named under the config's `file_sources`, canonical (no symlink, no `..`).
    File { path: PathBuf },
    /// An `http(s)://` URL the host fetches into its own cache when it deploys the VEE.
    Fetch {
        url: String,
        /// Where the host's cache holds it once fetched; set by the host's agent before its
        /// driver sees the plan, never sent.
        #[serde(skip)]
        cached: Option<PathBuf>,
    },
    /// An image of the VEEM's store, by the SHA-256 of its bytes, for a remote host: it
    /// fetches `GET /vmi/v1/agents/blobs/{sha256}` from the VEEM's front-ends into its cache
    /// (once per digest), checked against the digest. In-process hosts get a `File` instead.
    Image {
        sha256: String,
        size_bytes: u64,
        /// Where the host's cache holds it once fetched; set by the host's agent before its
        /// driver sees the plan, never sent.
        #[serde(skip)]
        cached: Option<PathBuf>,
    },
}

impl SourcePlan {
    /// A file the VEEM resolved.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SourcePlan::File { path: path.into() }
    }

    /// The local file holding the bytes: the resolved file, or the host's cached copy of a
    /// URL or an image once fetched (`None` before).
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            SourcePlan::File { path } => Some(path),
            SourcePlan::Fetch { cached, .. } | SourcePlan::Image { cached, .. } => {
                cached.as_deref()
            }
        }
    }

    /// What to call it in a message: the file's path or the URL.
    pub fn describe(&self) -> String {
        match self {
            SourcePlan::File { path } => path.display().to_string(),
            SourcePlan::Fetch { url, .. } => url.clone(),
            SourcePlan::Image { sha256, .. } => format!("the image of digest sha256:{sha256}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    pub target: String,
    /// Where the disk's first contents come from; `None` for a blank disk.
    pub source: Option<SourcePlan>,
    pub source_format: Option<ImageFormat>,
    pub size_gb: Option<u64>,
    /// `true`: the VEE's own copy in its directory (copy-on-write over a file source; a whole
    /// copy of a fetched one, which lives only in one host's cache); `false`: the source itself.
    pub clone: bool,
    /// A hard disk, or a read-only CD-ROM whose medium is the source itself.
    #[serde(default, skip_serializing_if = "DiskKind::is_disk")]
    pub kind: DiskKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    pub target: String,
    pub network: String,
    pub mac: Option<String>,
    /// The virtual LAN the NIC is plugged into; `None`: a NIC on no network the VEEM knows,
    /// plugged into nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<LanPlan>,
}

/// A virtual LAN as a host builds it: a Linux bridge of this name on every host, joined across
/// machines by VXLAN with network identifier `vni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanPlan {
    /// The bridge's interface name (at most 15 characters), the same on every host.
    pub bridge: String,
    pub vni: u32,
    /// On a public network, the hosts' address on it in CIDR form (`10.77.0.1/24`), so they
    /// reach its VEEs; `None` on a private network, which nothing outside it reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_address: Option<String>,
    /// Hosts of other sites whose LANs this one is joined with (federation): the VXLAN device
    /// floods to them too, besides the machine's own peers (`[host.qemu.vxlan]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::LanEndpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    Paused,
    /// Waiting for an incoming migration.
    Incoming,
    /// The guest powered itself off; its process waits, holding no running guest, to be ended.
    PoweredOff,
    /// The guest panicked or the hypervisor hit an internal error; its process waits to be ended.
    Crashed,
}

/// What a host observes of one of its VEEs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub vee: VeeId,
    pub state: InstanceState,
    pub cpus: u32,
    pub memory_mb: u64,
    /// CPU time the VEE used since it started on this host.
    pub cpu_time_ms: u64,
    /// I/O on each of the VEE's disks, by target, since its instance started on this host (a
    /// restore or an incoming migration starts again from zero). The qemu driver reads QEMU's
    /// block statistics (`query-blockstats`) and leaves out the context disk it adds itself;
    /// the sim driver makes figures up. Empty from an agent that predates these figures.
    #[serde(default)]
    pub disks: Vec<DiskCounters>,
    /// Traffic on each of the VEE's NICs, by target, as the guest sees it (`rx` is what it
    /// received), since its instance started on this host. The qemu driver reads the host
    /// kernel's counters of each NIC's tap (a NIC whose tap cannot be read is left out); the sim
    /// driver makes figures up. Empty from an agent that predates these figures.
    #[serde(default)]
    pub nics: Vec<NicCounters>,
    /// What the guest's own agent reported since the last status the host gave (its KPIs,
    /// through a virtio-serial channel), oldest first: each report is given once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_reports: Vec<AgentReport>,
}

/// One report of a guest's agent: named figures, as the guest said them at `t_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub t_ms: u64,
    /// (metric, value) as the guest wrote them (`uptime_s`, `12.5`): the VEEM names them
    /// `<fqn_prefix>.agent.<metric>`, the value a number when it reads as one.
    pub measurements: Vec<(String, String)>,
}

/// What one disk of a VEE has done since its instance started on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    /// The disk's target, as in [`DiskPlan::target`].
    pub target: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub flush_ops: u64,
}

/// What one NIC of a VEE has carried since its instance started on this host, from the
/// guest's side: `rx` is what the guest received, `tx` what it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicCounters {
    /// The NIC's target, as in [`NicPlan::target`].
    pub target: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// A request from the VEEM to a host agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    Deploy {
        spec: DeploySpec,
    },
    Pause {
        vee: VeeId,
    },
    Resume {
        vee: VeeId,
    },
    /// Save memory to `memory_file`, end the instance, free the host.
    Suspend {
        vee: VeeId,
        memory_file: PathBuf,
    },
    Restore {
        spec: DeploySpec,
        memory_file: PathBuf,
    },
    /// Ask the guest to power off; force it after `deadline_ms`.
    Shutdown {
        vee: VeeId,
        deadline_ms: u64,
    },
    Destroy {
        vee: VeeId,
    },
    Resize {
        vee: VeeId,
        cpu: u32,
        memory_mb: u64,
    },
    Status {
        vee: VeeId,
    },
    List,
    /// Write a standalone qcow2 copy of a VEE's disk to `out`. A host with storage of its own
    /// ([`HostHello::own_storage`]) writes it there instead, for the VEEM to read it over
    /// this protocol ([`AgentRequest::ReadExport`]): no other machine sees that storage.
    ExportDisk {
        vee_dir: PathBuf,
        target: String,
        out: PathBuf,
    },
    /// Start an instance that waits for an incoming migration; answers its URI, and where it
    /// receives the VEE's disks when it cannot see them (see [`DiskCopy`]).
    PrepareIncoming {
        spec: DeploySpec,
    },
    /// Send a running instance to `uri`; the instance here ends when done. With
    /// `copy_disks_to` (what the destination answered), its disks are copied there while it
    /// runs, and the host keeps nothing of it afterwards.
    MigrateOut {
        vee: VeeId,
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy_disks_to: Option<DiskCopy>,
    },
    /// Resume an instance that has received its migration; with `paused`, leave it paused
    /// instead (a PAUSED VEE moved between sites runs at no moment).
    CompleteIncoming {
        vee: VeeId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        paused: bool,
    },
    /// A LAN's plan changed (another site joined it or left): a host that has the LAN builds
    /// it again as planned; one without it does nothing.
    RefreshLan {
        lan: LanPlan,
    },
    /// Take a virtual LAN down on this host (its network was deleted): its bridge and VXLAN
    /// device go. `Ok` also when the host never had it.
    RemoveLan {
        lan: LanPlan,
    },
    /// The VEE was purged: end its instance here if there is one and remove every file this
    /// host keeps of it (its records, pid file, sockets and logs). `Ok` also when the host has
    /// nothing of it. The VEE's directory on shared storage is the VEEM's to remove.
    Purge {
        vee: VeeId,
    },
    /// Which VEEs this host keeps anything of: an instance or a file. Answered with
    /// [`AgentResponse::Traces`]; the VEEM purges those it purged while the host was away.
    Traces,
    /// Up to [`EXPORT_CHUNK_BYTES`] of the export `out` of the VEE's disk that this host, with
    /// storage of its own, made ([`AgentRequest::ExportDisk`]), from `offset`; answered with
    /// [`AgentResponse::Chunk`]. The host removes the export once it gave its last bytes.
    ReadExport {
        vee: VeeId,
        out: PathBuf,
        offset: u64,
    },
    /// The last `bytes` (at most [`EXPORT_CHUNK_BYTES`]) of the serial console log the VEE's
    /// instances wrote in `vee_dir` (its `console.log`); answered with one
    /// [`AgentResponse::Chunk`], empty when there is none (never booted, or a driver that keeps
    /// no console).
    ConsoleTail {
        vee: VeeId,
        vee_dir: PathBuf,
        bytes: u64,
    },
}

/// The most bytes one [`AgentResponse::Chunk`] carries: a frame of about 1.4 MB once encoded.
pub const EXPORT_CHUNK_BYTES: usize = 1 << 20;

impl AgentRequest {
    /// The operation's name, for logs and error messages.
    pub fn op(&self) -> &'static str {
        match self {
            AgentRequest::Deploy { .. } => "deploy",
            AgentRequest::Pause { .. } => "pause",
            AgentRequest::Resume { .. } => "resume",
            AgentRequest::Suspend { .. } => "suspend",
            AgentRequest::Restore { .. } => "restore",
            AgentRequest::Shutdown { .. } => "shutdown",
            AgentRequest::Destroy { .. } => "destroy",
            AgentRequest::Resize { .. } => "resize",
            AgentRequest::Status { .. } => "status",
            AgentRequest::List => "list",
            AgentRequest::ExportDisk { .. } => "export_disk",
            AgentRequest::PrepareIncoming { .. } => "prepare_incoming",
            AgentRequest::MigrateOut { .. } => "migrate_out",
            AgentRequest::CompleteIncoming { .. } => "complete_incoming",
            AgentRequest::RemoveLan { .. } => "remove_lan",
            AgentRequest::RefreshLan { .. } => "refresh_lan",
            AgentRequest::Purge { .. } => "purge",
            AgentRequest::Traces => "traces",
            AgentRequest::ReadExport { .. } => "read_export",
            AgentRequest::ConsoleTail { .. } => "console_tail",
        }
    }
}

/// Where a live migration's destination receives the disks it cannot see. The qemu driver
/// runs an NBD server exporting, writable, one fresh disk of the right size per target, named
/// by the target; the source mirrors each of its disks to `<address>/<target>` while the VEE
/// runs, then migrates its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCopy {
    /// The receiving end: `nbd://<host>:<port>` (QEMU's NBD server), or the sim driver's
    /// `sim://<the destination's VEE directory>`.
    pub address: String,
    /// The disks to copy, by target; every disk the VEE owns (in its directory).
    pub targets: Vec<String>,
}

/// Why a host could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// The host runs no instance of that VEE.
    NoSuchInstance,
    /// A file the request names does not exist (an image, saved memory, a disk).
    MissingFile,
    /// The operation failed on the host (the hypervisor refused, a process died...).
    Failed,
    /// The driver cannot do this.
    Unsupported,
    /// The host could not be reached or did not answer in time.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentResponse {
    Done,
    Status {
        status: InstanceStatus,
    },
    List {
        instances: Vec<InstanceStatus>,
    },
    Incoming {
        uri: String,
        /// `Some` when the destination does not see the VEE's disks (no shared storage): the
        /// source copies them there while the VEE runs. Absent from an agent that predates it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disks: Option<DiskCopy>,
    },
    /// The answer to [`AgentRequest::MigrateOut`]: the migration as the source hypervisor
    /// measured it, from its start to its completion and how long the guest was stopped.
    /// An agent that predates it answers `Done`.
    Migrated {
        total_ms: u64,
        downtime_ms: u64,
    },
    /// The answer to [`AgentRequest::Traces`], ordered by id.
    Traces {
        vees: Vec<VeeId>,
    },
    /// The answer to [`AgentRequest::ReadExport`]: the bytes from the offset asked, base64
    /// ([`AgentResponse::chunk`], [`AgentResponse::chunk_bytes`]); `eof` when they are the last.
    Chunk {
        data: String,
        eof: bool,
    },
    Error {
        error: AgentError,
    },
}

impl AgentResponse {
    /// A [`AgentResponse::Chunk`] carrying `bytes`.
    pub fn chunk(bytes: &[u8], eof: bool) -> Self {
        use base64::Engine as _;
        AgentResponse::Chunk {
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            eof,
        }
    }

    /// The bytes of a [`AgentResponse::Chunk`]'s `data`.
    pub fn chunk_bytes(data: &str) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(data)
    }
}

/// One frame on a remote agent's WebSocket. The server sends `Request`s; the agent answers each
/// with a `Response` carrying the same `id`. `Hello` is the agent's first frame; `Welcome` the
/// server's answer to it, before any request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum AgentFrame {
    Hello {
        hello: HostHello,
    },
    /// The server sends something (at least a WebSocket ping) more often than every
    /// `lease_ms`. An agent that has heard nothing for longer may have been stopped or cut off
    /// long enough to be declared lost, and its VEEs moved: what arrives after such a silence
    /// may be stale, so the agent acts on none of it and connects again (the server then ends
    /// what the host must no longer run before it trusts anything the host says).
    Welcome {
        lease_ms: u64,
    },
    Request {
        id: u64,
        request: AgentRequest,
    },
    Response {
        id: u64,
        response: AgentResponse,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_chunk_and_own_storage_cross_the_wire_whole() {
        let bytes: Vec<u8> = (0..=255).collect();
        let json = serde_json::to_string(&AgentResponse::chunk(&bytes, true)).expect("encodes");
        let AgentResponse::Chunk { data, eof } = serde_json::from_str(&json).expect("decodes")
        else {
            panic!("not a chunk: {json}");
        };
        assert!(eof);
        assert_eq!(AgentResponse::chunk_bytes(&data).expect("base64"), bytes);
        // An agent that predates own storage says nothing of it: shared storage.
        let hello: HostHello =
            serde_json::from_str(r#"{"name": "h1", "driver": "sim", "cpus": 1, "memory_mb": 1}"#)
                .expect("decodes");
        assert!(!hello.own_storage);
    }

    #[test]
    fn a_disk_copy_is_optional_on_the_wire_both_ways() {
        // What an agent or a VEEM from before disk copies sends still reads, as no copy.
        let incoming: AgentResponse =
            serde_json::from_str(r#"{"result": "incoming", "uri": "tcp:127.0.0.1:1"}"#)
                .expect("an old answer reads");
        assert_eq!(
            incoming,
            AgentResponse::Incoming {
                uri: "tcp:127.0.0.1:1".into(),
                disks: None
            }
        );
        let out: AgentRequest = serde_json::from_str(
            r#"{"op": "migrate_out", "vee": "vee-00000001", "uri": "tcp:127.0.0.1:1"}"#,
        )
        .expect("an old request reads");
        assert!(matches!(
            out,
            AgentRequest::MigrateOut {
                copy_disks_to: None,
                ..
            }
        ));
        // And no copy is not written, so an older peer reads what a newer one sends.
        let text = serde_json::to_string(&incoming).expect("serializes");
        assert!(!text.contains("disks"), "{text}");

        let copy = DiskCopy {
            address: "nbd://127.0.0.1:2".into(),
            targets: vec!["vda".into()],
        };
        let out = AgentRequest::MigrateOut {
            vee: VeeId::from_seq(1),
            uri: "tcp:127.0.0.1:1".into(),
            copy_disks_to: Some(copy.clone()),
        };
        let back: AgentRequest =
            serde_json::from_str(&serde_json::to_string(&out).expect("serializes"))
                .expect("reads back");
        assert_eq!(back, out);
    }
}
