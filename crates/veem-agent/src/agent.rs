//! The agent: one host's answer to the host-agent protocol, whatever carries it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use veem_api::agent::{
    AgentRequest, AgentResponse, DeploySpec, HostHello, SourcePlan, EXPORT_CHUNK_BYTES,
};
use veem_model::{DiskKind, HostId, VeeId};

use crate::{fsutil, Driver, DriverError, Fetcher};

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
    /// Where this host keeps its VEEs' directories when they are its own (`<vees_dir>/<id>`),
    /// instead of where the VEEM names them (the site's shared storage).
    vees_dir: Option<PathBuf>,
}

impl Agent {
    pub fn new(name: HostId, driver: Arc<dyn Driver>, cpus: u32, memory_mb: u64) -> Self {
        Self {
            name,
            driver,
            cpus,
            memory_mb,
            fetcher: None,
            vees_dir: None,
        }
    }

    /// Keeps the VEEs' directories in `dir` (`<dir>/<id>`), this host's own storage, instead
    /// of where the VEEM names them: another host does not see them, so a VEE that moves
    /// live to or from this host has its disks copied, and a VEE that stopped here boots
    /// again from its disks only here (the VEEM records this host as its holder, see
    /// [`HostHello::own_storage`]); a disk export of such a VEE is made here.
    pub fn with_vees_dir(mut self, dir: PathBuf) -> Self {
        self.vees_dir = Some(dir);
        self
    }

    /// The VEE's directory on this host: in [`Agent::with_vees_dir`]'s directory when it has
    /// one, else `named` (the VEEM's).
    fn vee_dir(&self, vee: &VeeId, named: PathBuf) -> PathBuf {
        match &self.vees_dir {
            Some(dir) => dir.join(vee.as_str()),
            None => named,
        }
    }

    /// `spec` with its directory on this host. On the host's own storage, a directory the
    /// host does not hold (`stale`) is removed first: disks left from an earlier stay would
    /// be taken for the VEE's own (a deployment boots from them, an incoming migration skips
    /// copying them).
    async fn localized(
        &self,
        mut spec: DeploySpec,
        stale: bool,
    ) -> Result<DeploySpec, DriverError> {
        spec.vee_dir = self.vee_dir(&spec.vee, std::mem::take(&mut spec.vee_dir));
        if stale && self.vees_dir.is_some() {
            fsutil::remove_dir_if_present(&spec.vee_dir).await?;
        }
        Ok(spec)
    }

    /// Where this host writes an export of the VEE's disk the VEEM names `out`: in the VEE's
    /// directory of its own (so a purge removes what a cut read leaves), else `out` itself.
    fn export_path(&self, vee: &VeeId, out: PathBuf) -> PathBuf {
        match (&self.vees_dir, out.file_name()) {
            (Some(dir), Some(name)) => dir.join(vee.as_str()).join("exports").join(name),
            _ => out,
        }
    }

    /// Writes the export, in a directory made for it if need be.
    async fn export_disk(
        &self,
        vee_dir: &std::path::Path,
        target: &str,
        out: &std::path::Path,
    ) -> Result<AgentResponse, DriverError> {
        if let Some(parent) = out.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| DriverError::file(parent, e))?;
        }
        self.driver
            .export_disk(vee_dir, target, out)
            .await
            .map(|()| done())
    }

    /// Up to [`EXPORT_CHUNK_BYTES`] of an export this host made on its own storage, from
    /// `offset`; the export is removed once its last bytes are read.
    async fn read_export(
        &self,
        vee: &VeeId,
        out: PathBuf,
        offset: u64,
    ) -> Result<AgentResponse, DriverError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if self.vees_dir.is_none() {
            return Err(DriverError::Invalid {
                what: "export",
                reason: format!(
                    "host {} has no storage of its own: its exports are at the path the VEEM named",
                    self.name
                ),
            });
        }
        let path = self.export_path(vee, out);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| DriverError::file(&path, e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| DriverError::file(&path, e))?
            .len();
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| DriverError::file(&path, e))?;
        let mut bytes = Vec::with_capacity(EXPORT_CHUNK_BYTES);
        (&mut file)
            .take(EXPORT_CHUNK_BYTES as u64)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| DriverError::file(&path, e))?;
        let eof = offset + bytes.len() as u64 >= size;
        if eof {
            tokio::fs::remove_file(&path)
                .await
                .map_err(|e| DriverError::file(&path, e))?;
        }
        Ok(AgentResponse::chunk(&bytes, eof))
    }

    /// Deploys the VEE from its directory on this host (see [`Agent::localized`]).
    async fn deploy(&self, spec: DeploySpec) -> Result<AgentResponse, DriverError> {
        let stale = spec.stale_own_dir;
        let mut spec = self.localized(spec, stale).await?;
        self.drop_saved_memory(&spec).await?;
        self.fetch_sources(&mut spec).await?;
        self.driver.deploy(&spec).await.map(|()| done())
    }

    /// A deployment boots afresh: memory saved on this host's own storage before (a VEE
    /// suspended, then shut down: the VEEM removes only what it keeps itself) is stale.
    async fn drop_saved_memory(&self, spec: &DeploySpec) -> Result<(), DriverError> {
        if self.vees_dir.is_none() {
            return Ok(());
        }
        let memory = veem_layout::memory_file(&spec.vee_dir);
        match tokio::fs::remove_file(&memory).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::file(&memory, e)),
        }
    }

    /// A file of the VEE's directory (its saved memory) as named by the VEEM, on this host.
    fn localized_file(&self, vee: &VeeId, named: PathBuf) -> PathBuf {
        match (&self.vees_dir, named.file_name()) {
            (Some(dir), Some(name)) => dir.join(vee.as_str()).join(name),
            _ => named,
        }
    }

    /// Removes the VEE's directory of this host's own, if it has them; the VEEM removes the
    /// shared one.
    async fn purge_own_dir(&self, vee: &VeeId) -> Result<(), DriverError> {
        let Some(dir) = &self.vees_dir else {
            return Ok(());
        };
        fsutil::remove_dir_if_present(&dir.join(vee.as_str())).await
    }

    /// The VEEs with a directory of this host's own.
    async fn vees_with_own_dirs(&self) -> Result<Vec<VeeId>, DriverError> {
        let Some(dir) = &self.vees_dir else {
            return Ok(Vec::new());
        };
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DriverError::file(dir, e)),
        };
        let mut vees = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| DriverError::file(dir, e))?
        {
            if let Some(vee) = entry
                .file_name()
                .to_str()
                .and_then(|n| VeeId::parse(n).ok())
            {
                vees.push(vee);
            }
        }
        Ok(vees)
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
            if let (Some(source @ SourcePlan::Image { .. }), DiskKind::Disk, false) =
                (&plan.source, plan.kind, plan.clone)
            {
                // The host's cached copy is not the image: writing it would change neither
                // the image nor what other VEEs of it start from, only corrupt the cache.
                return Err(DriverError::Invalid {
                    what: "disk source",
                    reason: format!(
                        "{}: host {} fetches images and cannot use one in place; clone must be true",
                        source.describe(),
                        self.name
                    ),
                });
            }
            if let (Some(source), true) = (&mut plan.source, needed) {
                wanted.push(source);
            }
        }
        if let Some(boot) = &mut spec.boot {
            wanted.push(&mut boot.kernel);
            wanted.extend(boot.initrd.as_mut());
        }
        for source in wanted {
            let fetcher = || {
                self.fetcher.as_ref().ok_or_else(|| DriverError::Invalid {
                    what: "source",
                    reason: format!("host {} fetches no sources", self.name),
                })
            };
            match source {
                SourcePlan::Fetch { url, cached } => {
                    *cached = Some(fetcher()?.fetch(url).await?);
                }
                SourcePlan::Image {
                    sha256,
                    size_bytes,
                    cached,
                } => {
                    *cached = Some(fetcher()?.fetch_image(sha256, *size_bytes).await?);
                }
                SourcePlan::File { .. } => {}
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
            own_storage: self.vees_dir.is_some(),
        }
    }

    /// Carries out one request with the driver. Failures become `AgentResponse::Error`, so
    /// every request gets exactly one answer.
    pub async fn handle(&self, request: AgentRequest) -> AgentResponse {
        let op = request.op();
        tracing::debug!(host = %self.name, op, "agent request");
        let driver = &self.driver;
        let outcome = match request {
            AgentRequest::Deploy { spec } => self.deploy(spec).await,
            AgentRequest::Pause { vee } => driver.pause(&vee).await.map(|()| done()),
            AgentRequest::Resume { vee } => driver.resume(&vee).await.map(|()| done()),
            AgentRequest::Suspend { vee, memory_file } => {
                let memory_file = self.localized_file(&vee, memory_file);
                driver.suspend(&vee, &memory_file).await.map(|()| done())
            }
            AgentRequest::Restore { spec, memory_file } => {
                // A restore reads the memory this host saved: its directory is never stale.
                let memory_file = self.localized_file(&spec.vee, memory_file);
                match self.localized(spec, false).await {
                    Ok(mut spec) => match self.fetch_sources(&mut spec).await {
                        Ok(()) => driver.restore(&spec, &memory_file).await.map(|()| done()),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
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
            } => {
                let vee = vee_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|name| VeeId::parse(name).ok());
                let (vee_dir, out) = match vee {
                    Some(vee) => (self.vee_dir(&vee, vee_dir), self.export_path(&vee, out)),
                    None => (vee_dir, out),
                };
                self.export_disk(&vee_dir, &target, &out).await
            }
            AgentRequest::ReadExport { vee, out, offset } => {
                self.read_export(&vee, out, offset).await
            }
            AgentRequest::ConsoleTail {
                vee,
                vee_dir,
                bytes,
            } => {
                let console = veem_layout::console_path(&self.vee_dir(&vee, vee_dir));
                let at_most = bytes.min(EXPORT_CHUNK_BYTES as u64);
                fsutil::read_tail(&console, at_most)
                    .await
                    .map(|tail| AgentResponse::chunk(&tail, true))
            }
            AgentRequest::PrepareIncoming { spec } => {
                // The VEE comes from another host: what this host's own storage still has of
                // it is from an earlier stay, stale.
                match self.localized(spec, true).await {
                    Ok(mut spec) => match self.fetch_sources(&mut spec).await {
                        Ok(()) => driver.prepare_incoming(&spec).await.map(|incoming| {
                            AgentResponse::Incoming {
                                uri: incoming.uri,
                                disks: incoming.disks,
                            }
                        }),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            AgentRequest::MigrateOut {
                vee,
                uri,
                copy_disks_to,
            } => driver
                .migrate_out(&vee, &uri, copy_disks_to.as_ref())
                .await
                .map(|stats| AgentResponse::Migrated {
                    total_ms: stats.total_ms,
                    downtime_ms: stats.downtime_ms,
                }),
            AgentRequest::CompleteIncoming { vee, paused } => driver
                .complete_incoming(&vee, paused)
                .await
                .map(|()| done()),
            AgentRequest::RemoveLan { lan } => driver.remove_lan(&lan).await.map(|()| done()),
            AgentRequest::RefreshLan { lan } => driver.refresh_lan(&lan).await.map(|()| done()),
            AgentRequest::Purge { vee } => match driver.purge(&vee).await {
                Ok(()) => self.purge_own_dir(&vee).await.map(|()| done()),
                Err(e) => Err(e),
            },
            AgentRequest::Traces => {
                match (driver.traces().await, self.vees_with_own_dirs().await) {
                    (Ok(mut vees), Ok(own)) => {
                        vees.extend(own);
                        vees.sort();
                        vees.dedup();
                        Ok(AgentResponse::Traces { vees })
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
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
