//! Several front-ends on one PostgreSQL database (`[store] url`): one leads, the others follow.
//!
//! - Every front-end campaigns for the lease in the database (`veem_store::PgStore::campaign`)
//!   every quarter of `lease_ttl_ms`. The one that holds it is the leader: only it opens the
//!   core (`start_on`: books loaded after the lease is taken, so every commit of the former
//!   leader is in them), runs placement, the schedulers and the hosts.
//! - Its store is fenced: every commit carries the lease's generation and is refused once that
//!   is not the live one (`StoreError::Fenced`), so a leader that was stopped or cut off cannot
//!   acknowledge anything after its lease ran out.
//! - A leader that cannot renew within its lease (by its own clock, from before the renewal
//!   was sent, so it gives up before the database's clock lets another take over), or whose
//!   commit was fenced, or that finds another leading, stops acting at once: the process starts
//!   again as a follower (`exec` of itself, same pid and arguments), which leaves no task of the
//!   former leader behind to touch a host or the books. Agents it held have already gone to the
//!   new leader, or go when its socket closes.
//! - Followers answer the VMI by forwarding to the leader (`http::cluster`, whose routes
//!   `serve` in lib.rs puts in front of this).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use veem_store::{Campaign, LeaderView, Member, PgStore};

use crate::config::Config;
use crate::error::CoreError;
use crate::Veem;

/// Members not heard from for this many leases are no longer listed by `GET /cluster`.
const MEMBER_GONE_AFTER_LEASES: u32 = 3;

/// What this front-end is now.
#[derive(Clone)]
pub(crate) enum Role {
    /// Another leads (`None`: none holds a live lease, or this one could not read it).
    Following(Option<LeaderView>),
    /// This one holds the lease and its core is loading the books.
    Starting,
    Leading(Veem),
}

/// This front-end among the others sharing the database.
pub(crate) struct Cluster {
    pub(crate) me: Member,
    pub(crate) store: Arc<PgStore>,
    ttl: Duration,
    role: tokio::sync::watch::Sender<Role>,
    /// Until when this front-end may act as the leader, by its own monotonic clock (which runs
    /// on while the process is stopped): from before its last successful renewal, plus the
    /// lease's length.
    held_until: Mutex<Option<Instant>>,
}

impl Cluster {
    pub(crate) fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Whether this front-end's lease is still its own by its clock. A leader that was stopped
    /// past its lease answers nothing more (not even a read of its books, which another may
    /// have changed since) in the moment before its campaign notices and it starts again.
    pub(crate) fn holds_lease(&self) -> bool {
        self.held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    fn hold_until(&self, until: Instant) {
        *self
            .held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    /// Resolves once the leader is no longer `leader` (another took over, or none leads).
    pub(crate) async fn leader_changed(&self, leader: &LeaderView) {
        let mut roles = self.role.subscribe();
        let _ = roles
            .wait_for(|role| match role {
                Role::Following(Some(now)) => now.generation != leader.generation,
                _ => true,
            })
            .await;
    }

    fn set_role(&self, role: Role) {
        self.role.send_replace(role);
    }

    /// `GET /cluster`, read from the database, so every front-end answers the same.
    pub(crate) async fn view(&self) -> Result<veem_api::ClusterView, CoreError> {
        let store = self.store.clone();
        let gone_after = self.ttl * MEMBER_GONE_AFTER_LEASES;
        let view = tokio::task::spawn_blocking(move || store.lease_view(gone_after))
            .await
            .map_err(|e| CoreError::internal("reading the cluster", e))??;
        Ok(veem_api::ClusterView {
            leader: view.leader.map(|l| l.name),
            members: view
                .members
                .into_iter()
                .map(|m| veem_api::ClusterMember {
                    name: m.name,
                    url: m.url,
                    role: if m.leading {
                        veem_api::ClusterRole::Leader
                    } else {
                        veem_api::ClusterRole::Follower
                    },
                    since_ms: m.since_ms,
                })
                .collect(),
        })
    }
}

impl Cluster {
    /// This front-end, on the database of `[store] url` (waited for while it does not
    /// answer), following until its first campaign.
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        let url = config
            .store
            .url
            .clone()
            .context("several front-ends need [store] url")?;
        let store = open_store(url).await?;
        Ok(Arc::new(Cluster {
            me: Member {
                name: config.front_end_name().to_owned(),
                url: config.advertise_url(),
                incarnation: rand::random::<u64>() >> 1,
            },
            store: Arc::new(store),
            ttl: Duration::from_millis(config.lease_ttl_ms),
            role: tokio::sync::watch::Sender::new(Role::Following(None)),
            held_until: Mutex::new(None),
        }))
    }

    /// Campaigns, and leads while it holds the lease, until `shutdown`; then gives the lease
    /// up, so that another front-end takes over at once.
    pub(crate) async fn run(
        self: &Arc<Self>,
        config: &Config,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown => {}
            () = campaign(config, self) => {}
        }
        let (store, me) = (self.store.clone(), self.me.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || store.resign(&me)).await? {
            tracing::warn!(error = %e, "cannot give the lease up; another takes over when it expires");
        }
        Ok(())
    }
}

/// Opens the database, waiting for it while it does not answer: a front-end that lost its
/// leadership to a database outage starts again and must not end there. A database that
/// answers and refuses (a newer schema, a failed migration) is the operator's to fix.
async fn open_store(url: String) -> anyhow::Result<PgStore> {
    let mut logged = false;
    loop {
        let url = url.clone();
        match tokio::task::spawn_blocking(move || PgStore::open(&url)).await? {
            Ok(store) => return Ok(store),
            Err(veem_store::StoreError::Backend(e)) => {
                if !logged {
                    tracing::warn!(error = %e, "the database of [store] url does not answer; waiting for it");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("cannot open the PostgreSQL store of [store] url"),
        }
    }
}

/// Campaigns every quarter of the lease, forever; leads while it holds the lease.
async fn campaign(config: &Config, cluster: &Arc<Cluster>) {
    let every = cluster.ttl / 4;
    // Until when this front-end may act as the leader, by its own clock.
    let mut held_until: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let (store, me, ttl) = (cluster.store.clone(), cluster.me.clone(), cluster.ttl);
        let outcome = tokio::task::spawn_blocking(move || store.campaign(&me, ttl)).await;
        match outcome {
            Ok(Ok(Campaign::Leading { fence, newly })) => {
                held_until = Some(sent + ttl);
                cluster.hold_until(sent + ttl);
                if newly {
                    tracing::info!(generation = fence.generation, "this front-end leads");
                    cluster.set_role(Role::Starting);
                    lead(config, cluster.clone());
                }
            }
            Ok(Ok(Campaign::Following { leader })) => {
                if held_until.is_some() {
                    step_down("another front-end holds the lease");
                }
                cluster.set_role(Role::Following(leader));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the lease in the database"),
            Err(e) => tracing::warn!(error = %e, "the campaign's task failed"),
        }
        // Between campaigns, a leader checks often that it may still act.
        let next = Instant::now() + every;
        while Instant::now() < next {
            if let Some(until) = held_until {
                if Instant::now() >= until {
                    step_down("the lease ran out before it could be renewed");
                }
                if cluster.store.fenced_out() {
                    step_down("the store refused a commit of this front-end's lease");
                }
            }
            tokio::time::sleep(Duration::from_millis(50).min(every)).await;
        }
    }
}

/// Opens the core on the database, behind the campaign: the lease is renewed while the books
/// load.
fn lead(config: &Config, cluster: Arc<Cluster>) {
    let config = config.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let store = cluster.store.clone();
        match crate::start_on(&config, store.clone(), Some(store), Vec::new()).await {
            Ok(started_core) => {
                let veem = started_core.veem;
                veem.hosts().listening_from(Instant::now());
                cluster.set_role(Role::Leading(veem));
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "the leader's core is open: it serves the VMI and the hosts"
                );
            }
            Err(e) => step_down(&format!("the leader cannot open its core: {e:#}")),
        }
    });
}

/// Stops acting as the leader at once: this process is replaced by a fresh one of the same
/// binary and arguments, which starts as a follower. Nothing of the former leader (loops,
/// host links, pushes under way) survives it.
fn step_down(reason: &str) -> ! {
    tracing::error!(
        reason,
        "this front-end no longer leads: it starts again as a follower"
    );
    restart_process()
}

#[cfg(unix)]
fn restart_process() -> ! {
    use std::os::unix::process::CommandExt as _;
    let error = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    tracing::error!(%error, "cannot start again; exiting");
    std::process::exit(75)
}

#[cfg(not(unix))]
fn restart_process() -> ! {
    std::process::exit(75)
}
