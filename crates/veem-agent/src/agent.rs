//! The agent: one host's answer to the host-agent protocol, whatever carries it.

use std::sync::Arc;
use std::time::Duration;

use veem_api::agent::{AgentRequest, AgentResponse, DeploySpec, HostHello, SourcePlan};
use veem_model::{DiskKind, HostId};

use crate::{Driver, DriverError, Fetcher};

/// A VEEH: a named host with its capacity and the driver of its hypervisor. The server calls
/// [`Agent::handle`] directly for an in-process host; a remote host calls it for each frame
/// that arrives over its uplink.
pub struct Agent {
    name: HostId,
    driver: Arc<dyn Driver>,
    cpus: u32,
    memory_mb: u64,
    /// The host's cache of `http(s)://` sources; without one, such a source fails clearly.
    fetcher: Option<Arc<Fetcher>>,
}

impl Agent {
    pub fn new(name: HostId, driver: Arc<dyn Driver>, cpus: u32, memory_mb: u64) -> Self {
        Self {
            name,
            driver,
            cpus,
            memory_mb,
            fetcher: None,
        }
    }

    /// Fetches the `http(s)://` sources of the VEEs it deploys through `fetcher`.
    pub fn with_fetcher(mut self, fetcher: Arc<Fetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Fetches every URL source of `spec` that its driver will read into the host's cache
    /// and records where it landed: the medium of a cdrom, a kernel or initrd, and the
    /// source of a disk the VEE does not have yet (a disk made earlier is the VEE's own, and
    /// its source is not read again).
    async fn fetch_sources(&self, spec: &mut DeploySpec) -> Result<(), DriverError> {
        let vee_dir = spec.vee_dir.clone();
        let mut wanted: Vec<&mut SourcePlan> = Vec::new();
        for plan in &mut spec.disks {
            let needed = plan.kind == DiskKind::Cdrom
                || !veem_layout::disk_path(&vee_dir, &plan.target).exists();
            if let (Some(source), true) = (&mut plan.source, needed) {
                wanted.push(source);
            }
        }
        if let Some(boot) = &mut spec.boot {
            wanted.push(&mut boot.kernel);
            wanted.extend(boot.initrd.as_mut());
        }
        for source in wanted {
            if let SourcePlan::Fetch { url, cached } = source {
                let fetcher = self.fetcher.as_ref().ok_or_else(|| DriverError::Invalid {
                    what: "source",
                    reason: format!("{url}: host {} fetches no http(s) sources", self.name),
                })?;
                *cached = Some(fetcher.fetch(url).await?);
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &HostId {
        &self.name
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// Who this host is and what it offers: the first frame of a remote agent.
    pub fn hello(&self) -> HostHello {
        HostHello {
            name: self.name.clone(),
            driver: self.driver.kind().to_owned(),
            cpus: self.cpus,
            memory_mb: self.memory_mb,
        }
    }

    /// Carries out one request with the driver. Failures become `AgentResponse::Error`, so
    /// every request gets exactly one answer.
    pub async fn handle(&self, request: AgentRequest) -> AgentResponse {
        let op = request.op();
        tracing::debug!(host = %self.name, op, "agent request");
        let driver = &self.driver;
        let outcome = match request {
            AgentRequest::Deploy { mut spec } => match self.fetch_sources(&mut spec).await {
                Ok(()) => driver.deploy(&spec).await.map(|()| done()),
                Err(e) => Err(e),
            },
            AgentRequest::Pause { vee } => driver.pause(&vee).await.map(|()| done()),
            AgentRequest::Resume { vee } => driver.resume(&vee).await.map(|()| done()),
            AgentRequest::Suspend { vee, memory_file } => {
                driver.suspend(&vee, &memory_file).await.map(|()| done())
            }
            AgentRequest::Restore {
                mut spec,
                memory_file,
            } => match self.fetch_sources(&mut spec).await {
                Ok(()) => driver.restore(&spec, &memory_file).await.map(|()| done()),
                Err(e) => Err(e),
            },
            AgentRequest::Shutdown { vee, deadline_ms } => driver
                .shutdown(&vee, Duration::from_millis(deadline_ms))
                .await
                .map(|()| done()),
            AgentRequest::Destroy { vee } => driver.destroy(&vee).await.map(|()| done()),
            AgentRequest::Resize {
                vee,
                cpu,
                memory_mb,
            } => driver.resize(&vee, cpu, memory_mb).await.map(|()| done()),
            AgentRequest::Status { vee } => driver
                .status(&vee)
                .await
                .map(|status| AgentResponse::Status { status }),
            AgentRequest::List => driver
                .list()
                .await
                .map(|instances| AgentResponse::List { instances }),
            AgentRequest::ExportDisk {
                vee_dir,
                target,
                out,
            } => driver
                .export_disk(&vee_dir, &target, &out)
                .await
                .map(|()| done()),
            AgentRequest::PrepareIncoming { mut spec } => {
                match self.fetch_sources(&mut spec).await {
                    Ok(()) => driver
                        .prepare_incoming(&spec)
                        .await
                        .map(|uri| AgentResponse::Incoming { uri }),
                    Err(e) => Err(e),
                }
            }
            AgentRequest::MigrateOut { vee, uri } => {
                driver
                    .migrate_out(&vee, &uri)
                    .await
                    .map(|stats| AgentResponse::Migrated {
                        total_ms: stats.total_ms,
                        downtime_ms: stats.downtime_ms,
                    })
            }
            AgentRequest::CompleteIncoming { vee } => {
                driver.complete_incoming(&vee).await.map(|()| done())
            }
            AgentRequest::RemoveLan { lan } => driver.remove_lan(&lan).await.map(|()| done()),
            AgentRequest::Purge { vee } => driver.purge(&vee).await.map(|()| done()),
            AgentRequest::Traces => driver
                .traces()
                .await
                .map(|vees| AgentResponse::Traces { vees }),
        };
        outcome.unwrap_or_else(|error| {
            let error = error.to_wire();
            tracing::warn!(host = %self.name, op, kind = ?error.kind, message = %error.message, "agent request failed");
            AgentResponse::Error { error }
        })
    }
}

fn done() -> AgentResponse {
    AgentResponse::Done
}
