//! The VEEM: it defines, places, runs and controls VEEs on a site's hosts, and offers the VMI
//! over HTTP to Service Managers and peer VEEMs.
//!
//! `veem.rs` is the core (submission, control, the placement loop, reconciliation); `http/` is
//! the only place that knows routes and status codes; hosts are reached through `hosts.rs`, either
//! in this process or over a remote agent's WebSocket. This crate never speaks SQL (that is
//! `veem-store`) nor QMP (that is the qemu driver of `veem-agent`).

pub mod auth;
mod committer;
pub mod config;
pub mod error;
pub mod hosts;
pub mod http;
mod images;
pub mod push;
pub mod veem;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use veem_agent::sim::SimDriver;
use veem_agent::{Agent, Driver, QemuDriver};

pub use config::Config;
use config::DriverKind;
use hosts::{HostLink, InProcessLink};
pub use veem::Veem;

/// Opens the store, starts the in-process host agents of the config and the background loops.
pub async fn start(config: &Config) -> anyhow::Result<Veem> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Absolute from here on: paths are handed to agents and to QEMU, which does not start where
    // veem did (it changes to / when it daemonizes).
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("cannot resolve data_dir {}", config.data_dir.display()))?;
    let db = data_dir.join("veem.db");
    let store = veem_store::SqliteStore::open(&db)
        .with_context(|| format!("cannot open the store {}", db.display()))?;
    let core = veem::CoreConfig {
        site: config.site.clone(),
        data_dir: data_dir.clone(),
        policy: config.placement,
        shutdown_deadline: Duration::from_millis(config.shutdown_deadline_ms),
        agent_timeout: Duration::from_millis(config.agent_timeout_ms),
        health_interval: Duration::from_millis(config.health_interval_ms),
        host_dead_after: Duration::from_millis(config.host_dead_after_ms),
        lan_key: veem::lan_key(&data_dir),
        monitoring_interval: Duration::from_millis(config.monitoring_interval_ms.max(100)),
        admins: config
            .principals
            .iter()
            .filter(|p| p.admin)
            .map(|p| p.name.clone())
            .collect(),
    };
    let veem = Veem::open(core, Arc::new(store))?;
    for host in &config.hosts {
        let state_dir = data_dir.join("hosts").join(host.name.as_str());
        let driver: Arc<dyn Driver> = match host.driver {
            DriverKind::Sim => Arc::new(
                SimDriver::new(host.sim.clone(), state_dir).with_context(|| {
                    format!("cannot start the sim driver of host {}", host.name)
                })?,
            ),
            DriverKind::Qemu => Arc::new(
                QemuDriver::new(host.qemu.clone(), state_dir).with_context(|| {
                    format!("cannot start the qemu driver of host {}", host.name)
                })?,
            ),
        };
        let agent = Arc::new(Agent::new(
            host.name.clone(),
            driver,
            host.cpus,
            host.memory_mb,
        ));
        let link: Arc<dyn HostLink> = Arc::new(InProcessLink(agent.clone()));
        veem.connect_host(agent.hello(), link).await?;
    }
    veem.start_background();
    Ok(veem)
}

/// Runs the VEEM until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let veem = start(&config).await?;
    let state = http::AppState {
        veem,
        auth: Arc::new(auth::Authenticator::new(config.principals.clone())),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Remote agents can reach this VEEM from now on: their silence counts from here.
    state.veem.hosts().listening_from(std::time::Instant::now());
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), hosts = config.hosts.len(), "veem is serving the VMI");
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("veem stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
