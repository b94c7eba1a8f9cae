//! The agent: one host's answer to the host-agent protocol, whatever carries it.

use std::sync::Arc;
use std::time::Duration;

use veem_api::agent::{AgentRequest, AgentResponse, HostHello};
use veem_model::HostId;

use crate::Driver;

/// A VEEH: a named host with its capacity and the driver of its hypervisor. The server calls
/// [`Agent::handle`] directly for an in-process host; a remote host calls it for each frame
/// that arrives over its uplink.
pub struct Agent {
    name: HostId,
    driver: Arc<dyn Driver>,
    cpus: u32,
    memory_mb: u64,
}

impl Agent {
    pub fn new(name: HostId, driver: Arc<dyn Driver>, cpus: u32, memory_mb: u64) -> Self {
        Self {
            name,
            driver,
            cpus,
            memory_mb,
        }
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
            AgentRequest::Deploy { spec } => driver.deploy(&spec).await.map(|()| done()),
            AgentRequest::Pause { vee } => driver.pause(&vee).await.map(|()| done()),
            AgentRequest::Resume { vee } => driver.resume(&vee).await.map(|()| done()),
            AgentRequest::Suspend { vee, memory_file } => {
                driver.suspend(&vee, &memory_file).await.map(|()| done())
            }
            AgentRequest::Restore { spec, memory_file } => {
                driver.restore(&spec, &memory_file).await.map(|()| done())
            }
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
            AgentRequest::PrepareIncoming { spec } => driver
                .prepare_incoming(&spec)
                .await
                .map(|uri| AgentResponse::Incoming { uri }),
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
