//! A VEEM core opened on a SQLite store in a temporary directory, with sim hosts connected
//! in-process through a link of the tests' own: no HTTP, no config file, no `veem_server::start`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veem_agent::sim::{FaultSpec, LatencyConfig, SimConfig, SimDriver};
use veem_agent::Agent;
use veem_api::agent::{AgentRequest, AgentResponse};
use veem_api::Order;
use veem_model::{
    ControlAction, HostId, InitModel, NicSpec, Principal, VeeDescriptor, VeeEvent, VeeId,
    VeeRecord, VmiState,
};
use veem_placement::Policy;
use veem_server::auth::Caller;
use veem_server::error::CoreError;
use veem_server::hosts::HostLink;
use veem_server::veem::{BatchOutcome, CoreConfig, ListFilter};
use veem_server::Veem;
use veem_store::{SqliteStore, Store};

/// How long a test waits for anything the core does in the background.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The timeout given to UpdateState calls expected to finish.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// One sim host to connect.
pub struct HostSpec {
    pub name: &'static str,
    pub cpus: u32,
    pub memory_mb: u64,
    pub sim: SimConfig,
    /// Keeps its VEEs' directories in `<dir>/own/<name>`, storage of its own.
    pub own_storage: bool,
}

/// A sim host with no latency and no faults.
pub fn host(name: &'static str, cpus: u32, memory_mb: u64) -> HostSpec {
    HostSpec {
        name,
        cpus,
        memory_mb,
        sim: SimConfig::default(),
        own_storage: false,
    }
}

impl HostSpec {
    /// The host keeps its VEEs' directories on storage of its own (`<dir>/own/<name>`).
    pub fn own_storage(mut self) -> Self {
        self.own_storage = true;
        self
    }

    /// Every deployment on this host takes `ms`.
    pub fn deploy_latency(mut self, ms: u64) -> Self {
        self.sim.latency_ms = LatencyConfig {
            deploy: ms,
            ..self.sim.latency_ms
        };
        self
    }

    /// Every `op` call for a VEE named `vee_name` fails on this host.
    pub fn failing(mut self, op: &str, vee_name: &str) -> Self {
        self.sim.faults.push(FaultSpec {
            op: op.to_owned(),
            vee_name: Some(vee_name.to_owned()),
            every: None,
            probability: None,
        });
        self
    }
}

/// A core with its store and sim hosts.
pub struct Site {
    pub veem: Veem,
    /// The core's store, to check what it holds.
    pub store: Arc<dyn Store>,
    pub sims: BTreeMap<&'static str, Arc<SimDriver>>,
    pub dir: tempfile::TempDir,
}

pub fn caller(name: &str, admin: bool) -> Caller {
    Caller {
        principal: Principal::new(name).expect("a valid principal name"),
        admin,
    }
}

/// The Service Managers and the admin of every test site.
pub fn sm_a() -> Caller {
    caller("sm-a", false)
}

pub fn sm_b() -> Caller {
    caller("sm-b", false)
}

pub fn ops() -> Caller {
    caller("ops", true)
}

pub fn host_id(name: &str) -> HostId {
    HostId::new(name).expect("a valid host name")
}

/// 1 CPU and 512 MB, named.
pub fn small(name: &str) -> VeeDescriptor {
    sized(name, 1, 512)
}

pub fn sized(name: &str, cpu: u32, memory_mb: u64) -> VeeDescriptor {
    let mut d = VeeDescriptor::minimal(cpu, memory_mb);
    d.name = name.to_owned();
    d
}

/// A VEE with one NIC per network named, each with the address wanted (if any).
pub fn with_nics(name: &str, on: &[(&str, Option<&str>)]) -> VeeDescriptor {
    let mut d = small(name);
    d.nics = on
        .iter()
        .map(|(network, ip)| NicSpec {
            network: (*network).to_owned(),
            target: None,
            ip: ip.map(|ip| ip.parse().expect("a valid address")),
        })
        .collect();
    d
}

pub fn ids_of(records: &[VeeRecord]) -> Vec<VeeId> {
    records.iter().map(|r| r.id.clone()).collect()
}

impl Site {
    /// Opens a core on a fresh store, starts its background loops (placement every 100 ms at
    /// the latest, health checks likewise) and connects `hosts`, each reconciled and up.
    pub async fn open(hosts: Vec<HostSpec>) -> Self {
        Self::open_with(Policy::Pack, hosts).await
    }

    pub async fn open_with(policy: Policy, hosts: Vec<HostSpec>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::open_in(dir, policy, hosts).await
    }

    /// Opens a core on the store of `dir` (made if new), with its hosts' state there too: what
    /// `veem serve` does at start.
    pub async fn open_in(dir: tempfile::TempDir, policy: Policy, hosts: Vec<HostSpec>) -> Self {
        Self::open_losing_hosts_after(dir, policy, hosts, Duration::from_secs(60)).await
    }

    /// [`Site::open_in`] with a host that stays away `dead_after` taken for lost.
    pub async fn open_losing_hosts_after(
        dir: tempfile::TempDir,
        policy: Policy,
        hosts: Vec<HostSpec>,
        dead_after: Duration,
    ) -> Self {
        let data_dir = dir.path().canonicalize().expect("the directory resolves");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&data_dir.join("veem.db")).expect("the store opens"));
        Self::open_on(dir, store, None, policy, hosts, dead_after).await
    }

    /// A core on `store` (its data_dir `dir`), with image bytes shared through `shared_blobs`
    /// when given (one of several front-ends on one database).
    pub async fn open_on(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        shared_blobs: Option<Arc<dyn veem_store::BlobStore>>,
        policy: Policy,
        hosts: Vec<HostSpec>,
        dead_after: Duration,
    ) -> Self {
        let data_dir = dir.path().canonicalize().expect("the directory resolves");
        let config = CoreConfig {
            site: "test".into(),
            public_url: "http://127.0.0.1:1".into(),
            data_dir: data_dir.clone(),
            policy,
            shutdown_deadline: Duration::from_secs(2),
            agent_timeout: Duration::from_secs(5),
            health_interval: Duration::from_millis(100),
            host_dead_after: dead_after,
            lan_key: veem_server::veem::lan_key(&data_dir),
            monitoring_interval: Duration::from_secs(60),
            admins: vec![ops().principal],
            callback_tls: None,
            file_sources: veem_server::sources::FileSources::new(&[], &data_dir)
                .expect("no file sources"),
        };
        let veem =
            Veem::open_with_blobs(config, store.clone(), shared_blobs).expect("the core opens");
        veem.start_background();
        let mut site = Self {
            veem,
            store,
            sims: BTreeMap::new(),
            dir,
        };
        for spec in hosts {
            site.connect(spec).await;
        }
        site
    }

    /// Lets go of the core, keeping its directory. The core's tasks end with the runtime they
    /// run on: drop that runtime before opening the directory again.
    pub fn close(self) -> tempfile::TempDir {
        self.dir
    }

    /// Connects a sim host (its state in `<dir>/hosts/<name>`); it is up when this returns.
    pub async fn connect(&mut self, spec: HostSpec) {
        let state_dir = self.dir.path().join("hosts").join(spec.name);
        let sim = Arc::new(SimDriver::new(spec.sim, state_dir).expect("the sim driver starts"));
        let agent = Agent::new(host_id(spec.name), sim.clone(), spec.cpus, spec.memory_mb);
        let agent = Arc::new(match spec.own_storage {
            true => agent.with_vees_dir(self.own_dir(spec.name)),
            false => agent,
        });
        let link: Arc<dyn HostLink> = Arc::new(veem_node::InProcessLink(agent.clone()));
        self.veem
            .connect_host(agent.hello(), link)
            .await
            .expect("the host connects");
        self.sims.insert(spec.name, sim);
        let host = host_id(spec.name);
        // Reconciled: it takes VEEs, unless an operator disabled it (the books say so).
        assert!(
            self.veem.hosts().get(&host).is_some_and(|entry| {
                entry.accepts_vees() || (entry.disabled && entry.link.is_some())
            }),
            "host {host} is up once connected"
        );
    }

    /// Where a host with storage of its own keeps its VEEs' directories.
    pub fn own_dir(&self, host: &str) -> std::path::PathBuf {
        self.dir.path().join("own").join(host)
    }

    /// InitializeVEEs that must succeed.
    pub async fn define(
        &self,
        caller: &Caller,
        model: InitModel,
        count: u32,
        descriptor: VeeDescriptor,
    ) -> Vec<VeeRecord> {
        self.veem
            .initialize(caller, model, count, descriptor)
            .await
            .expect("initialize")
    }

    /// One BESTEFFORT VEE of sm-a's.
    pub async fn define_one(&self, descriptor: VeeDescriptor) -> VeeId {
        let records = self
            .define(&sm_a(), InitModel::Besteffort, 1, descriptor)
            .await;
        records[0].id.clone()
    }

    /// UpdateState as a set, with a timeout that lets every action finish.
    pub async fn act(&self, caller: &Caller, action: ControlAction, ids: &[VeeId]) -> BatchOutcome {
        self.veem
            .update_state(caller, Order::Set, ids, action, ACTION_TIMEOUT)
            .await
    }

    /// UpdateState on sm-a's VEEs that must apply to every one.
    pub async fn act_ok(&self, action: ControlAction, ids: &[VeeId]) {
        let outcome = self.act(&sm_a(), action, ids).await;
        assert!(
            outcome.failed.is_empty(),
            "{action} on {ids:?} failed: {:?}",
            outcome.failed
        );
        assert_eq!(outcome.ok.len(), ids.len(), "{action} on {ids:?}");
    }

    /// A network of `caller`'s, made.
    pub async fn network(
        &self,
        caller: &Caller,
        name: &str,
        cidr: &str,
        public: bool,
    ) -> veem_server::veem::NetworkInfo {
        self.veem
            .networks()
            .create(
                caller,
                &veem_api::NetworkRequest {
                    name: name.to_owned(),
                    cidr: cidr.to_owned(),
                    public,
                    extends: None,
                },
            )
            .await
            .expect("created")
    }

    /// The record as an admin sees it.
    pub fn get(&self, id: &VeeId) -> VeeRecord {
        self.veem.get(&ops(), id).expect("the VEE exists")
    }

    /// The stored history of a VEE, oldest first.
    pub fn events(&self, id: &VeeId) -> Vec<VeeEvent> {
        self.veem.events(&ops(), id).expect("the VEE's events")
    }

    /// Every VEE of the site, as an admin lists them.
    pub fn all(&self) -> Vec<VeeRecord> {
        let filter = ListFilter {
            limit: 1000,
            ..ListFilter::default()
        };
        self.veem.list(&ops(), &filter).0
    }

    /// Waits (up to [`DEADLINE`]) until a VEE is in `state`.
    pub async fn wait_state(&self, id: &VeeId, state: VmiState) -> VeeRecord {
        wait_until(&format!("{id} to be {state}"), || {
            let record = self.get(id);
            (record.state == state).then_some(record)
        })
        .await
    }

    /// The VEEs placement sees on a host.
    pub fn vees_on(&self, host: &str) -> Vec<VeeId> {
        self.veem
            .host_usage(&host_id(host))
            .expect("a known host")
            .vees
    }

    /// The CPUs placement counts as used on a host.
    pub fn cpus_used(&self, host: &str) -> u32 {
        self.veem
            .host_usage(&host_id(host))
            .expect("a known host")
            .used
            .cpus
    }

    /// What a host's driver runs.
    pub async fn instances_on(&self, host: &str) -> Vec<VeeId> {
        match self.ask(host, AgentRequest::List).await {
            AgentResponse::List { instances } => instances.into_iter().map(|i| i.vee).collect(),
            other => panic!("host {host} cannot list its instances: {other:?}"),
        }
    }

    /// The VEEs a host keeps anything of (running or not).
    pub async fn traces_on(&self, host: &str) -> Vec<VeeId> {
        match self.ask(host, AgentRequest::Traces).await {
            AgentResponse::Traces { vees } => vees,
            other => panic!("host {host} cannot list its traces: {other:?}"),
        }
    }

    /// Asks a host's driver directly, behind the core's back.
    async fn ask(&self, host: &str, request: AgentRequest) -> AgentResponse {
        let sim = self.sims.get(host).expect("a connected host");
        Agent::new(host_id(host), sim.clone(), 1, 1)
            .handle(request)
            .await
    }
}

/// Polls `probe` every 10 ms until it answers, failing the test after [`DEADLINE`].
pub async fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The error of the one failure of a batch.
pub fn only_failure(outcome: &BatchOutcome) -> &CoreError {
    assert!(outcome.ok.is_empty(), "nothing applied: {:?}", outcome.ok);
    assert_eq!(outcome.failed.len(), 1, "one failure: {:?}", outcome.failed);
    &outcome.failed[0].1
}

/// The (from, to) of each event, oldest first.
pub fn moves(events: &[VeeEvent]) -> Vec<(Option<VmiState>, VmiState)> {
    events.iter().map(|e| (e.from, e.to)).collect()
}
