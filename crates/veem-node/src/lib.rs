//! A site's hosts as the binary runs them. The VEEM (`veem-server`) knows no hypervisor: it
//! talks to hosts through `HostLink`s. This crate makes the hosts: one function,
//! [`host_agent`], builds a driver, an [`Agent`] and its [`Fetcher`] from a host's settings,
//! for `veem agent` (a host of its own) and for `veem serve`, whose config's `[[host]]`s run in
//! its process behind an [`InProcessLink`].

mod config;
mod link;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use veem_agent::sim::SimDriver;
use veem_agent::{Agent, Driver, FetchConfig, Fetcher, QemuDriver};
use veem_api::agent::HostHello;
use veem_model::HostId;
use veem_server::hosts::HostLink;

pub use config::{ConfigError, DriverKind, DriverSettings, HostConfig, SiteConfig};
pub use link::InProcessLink;

/// The hypervisor driver that `settings` select, keeping its state in `state_dir` (absolute:
/// QEMU is handed paths below it and does not start where veem did).
pub fn driver(settings: &DriverSettings, state_dir: &Path) -> anyhow::Result<Arc<dyn Driver>> {
    Ok(match settings {
        DriverSettings::Sim(config) => Arc::new(
            SimDriver::new(config.clone(), state_dir.to_owned())
                .context("cannot start the sim driver")?,
        ),
        DriverSettings::Qemu(config) => Arc::new(
            QemuDriver::new(config.clone(), state_dir.to_owned())
                .context("cannot start the qemu driver")?,
        ),
    })
}

/// What a host is: its name, what it offers to VEEs and how it runs them.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: HostId,
    pub cpus: u32,
    pub memory_mb: u64,
    pub settings: DriverSettings,
    /// Where its driver keeps what it needs to find its VEEs again after a restart, and its
    /// cache of fetched sources.
    pub state_dir: PathBuf,
    /// Where it keeps its VEEs' directories as its own storage (absolute); `None`: where the
    /// VEEM names them, on the site's shared storage.
    pub vees_dir: Option<PathBuf>,
}

/// The fetching of `http(s)://` sources with its settings and HTTP client, which the hosts of
/// one process share through [`host_agent`] (a client's TLS roots are parsed, and held, once,
/// not once per host); its own cache is `cache_dir`.
pub fn fetching(fetch: FetchConfig, cache_dir: PathBuf) -> anyhow::Result<Fetcher> {
    Fetcher::new(cache_dir, fetch).context("cannot set up the fetching of http(s) sources")
}

/// A host's agent: its driver, and a fetcher of `http(s)://` sources that shares the client of
/// `fetching` and caches in the host's state directory.
pub fn host_agent(host: &HostSpec, fetching: &Fetcher) -> anyhow::Result<Arc<Agent>> {
    let driver = driver(&host.settings, &host.state_dir)?;
    let fetcher = fetching.for_cache(veem_layout::fetch_cache_dir(&host.state_dir));
    let agent = Agent::new(host.name.clone(), driver, host.cpus, host.memory_mb)
        .with_fetcher(Arc::new(fetcher));
    Ok(Arc::new(match &host.vees_dir {
        Some(dir) => agent.with_vees_dir(dir.clone()),
        None => agent,
    }))
}

/// The `[[host]]`s of the config, each in its state directory under `data_dir` (the resolved
/// one, see [`veem_server::data_dir`]), ready to be connected by [`veem_server::start`].
pub fn in_process_hosts(
    site: &SiteConfig,
    data_dir: &Path,
) -> anyhow::Result<Vec<(HostHello, Arc<dyn HostLink>)>> {
    let server = &site.server;
    // Hosts fetch https:// sources trusting what callbacks trust: the system's roots and
    // `[tls] ca_file` (a site's own CA).
    let defaults = FetchConfig::default();
    let fetch = FetchConfig {
        max_bytes: server.fetch_max_bytes.unwrap_or(defaults.max_bytes),
        ca_file: server.tls.as_ref().and_then(|tls| tls.ca_file.clone()),
        allowed_networks: server.fetch_allow.clone(),
        ..defaults
    };
    // One HTTP client for every in-process host's fetches.
    let fetching = fetching(fetch, data_dir.join("hosts"))?;
    site.hosts
        .iter()
        .map(|host| {
            let spec = HostSpec {
                name: host.name.clone(),
                cpus: host.cpus,
                memory_mb: host.memory_mb,
                settings: host.settings(),
                state_dir: veem_layout::host_state_dir(data_dir, &host.name),
                vees_dir: host.vees_dir.as_ref().map(|dir| data_dir.join(dir)),
            };
            let agent =
                host_agent(&spec, &fetching).with_context(|| format!("host {}", host.name))?;
            let link: Arc<dyn HostLink> = Arc::new(InProcessLink(agent.clone()));
            Ok((agent.hello(), link))
        })
        .collect()
}

/// Starts the VEEM of `site` with its `[[host]]`s in this process (see [`veem_server::start`]).
pub async fn start(site: &SiteConfig) -> anyhow::Result<veem_server::Started> {
    let data_dir = veem_server::data_dir(&site.server)?;
    let hosts = in_process_hosts(site, &data_dir)?;
    veem_server::start(&site.server, hosts).await
}

/// Runs the VEEM of `site` with its `[[host]]`s until SIGINT or SIGTERM.
pub async fn serve(site: SiteConfig) -> anyhow::Result<()> {
    let data_dir = veem_server::data_dir(&site.server)?;
    let hosts = in_process_hosts(&site, &data_dir)?;
    veem_server::serve(site.server, hosts).await
}
