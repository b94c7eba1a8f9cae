//! The VEEM: it defines, places, runs and controls VEEs on a site's hosts, and offers the VMI
//! over HTTP to Service Managers and peer VEEMs.
//!
//! `veem.rs` is the core (submission, control, the placement loop, reconciliation); `http/` is
//! the only place that knows routes and status codes; hosts are reached through `hosts.rs`, either
//! in this process or over a remote agent's WebSocket. This crate never speaks SQL (that is
//! `veem-store`) nor QMP (that is the qemu driver of `veem-agent`), and knows no driver: the
//! binary makes the hosts that run in its process (`veem-node`) and hands them over as links.

pub mod auth;
mod cluster;
mod committer;
pub mod config;
pub mod error;
pub mod hosts;
pub mod http;
pub mod images;
pub mod metrics;
pub mod push;
pub mod sources;
pub mod token;
pub mod veem;

use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context as _;
use veem_api::agent::HostHello;

pub use config::Config;
use hosts::HostLink;
pub use veem::Veem;

/// A started VEEM and the connection of its in-process hosts, which runs behind it.
pub struct Started {
    pub veem: Veem,
    /// Done once every in-process host handed to [`start`] is connected and reconciled.
    pub hosts_connected: tokio::task::JoinHandle<()>,
}

/// The config's `data_dir`, created if need be and made absolute: paths below it are handed to
/// agents and to QEMU, which does not start where veem did (it changes to / when it daemonizes).
pub fn data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("cannot resolve data_dir {}", config.data_dir.display()))
}

/// Opens the store and starts the background loops; `in_process` are the hosts that run in
/// this process (made by the binary, each with the hello it connects with). The VEEM can answer
/// at once: its books are loaded; the hosts connect (each reconciled with what it runs) behind
/// it, one after another, as remote agents do.
pub async fn start(
    config: &Config,
    in_process: Vec<(HostHello, Arc<dyn HostLink>)>,
) -> anyhow::Result<Started> {
    let data_dir = data_dir(config)?;
    let db = data_dir.join("veem.db");
    let store = veem_store::SqliteStore::open(&db)
        .with_context(|| format!("cannot open the store {}", db.display()))?;
    start_on(config, Arc::new(store), None, in_process).await
}

/// [`start`] on a store already open: SQLite in `data_dir`, or the PostgreSQL database of
/// several front-ends, once this one leads; with it, `blobs`, where image bytes are shared
/// among the front-ends.
pub async fn start_on(
    config: &Config,
    store: Arc<dyn veem_store::Store>,
    blobs: Option<Arc<dyn veem_store::BlobStore>>,
    in_process: Vec<(HostHello, Arc<dyn HostLink>)>,
) -> anyhow::Result<Started> {
    let data_dir = data_dir(config)?;
    // Bridges on hosts are named by this key: every front-end of a site must derive the same.
    let lan_key = match config.store.url {
        Some(_) => veem::lan_key(std::path::Path::new(&config.site)),
        None => veem::lan_key(&data_dir),
    };
    let core = veem::CoreConfig {
        site: config.site.clone(),
        public_url: config.public_url(),
        data_dir: data_dir.clone(),
        policy: config.placement,
        shutdown_deadline: Duration::from_millis(config.shutdown_deadline_ms),
        agent_timeout: Duration::from_millis(config.agent_timeout_ms),
        health_interval: Duration::from_millis(config.health_interval_ms),
        host_dead_after: Duration::from_millis(config.host_dead_after_ms),
        lan_key,
        monitoring_interval: Duration::from_millis(config.monitoring_interval_ms.max(100)),
        admins: config
            .principals
            .iter()
            .filter(|p| p.admin)
            .map(|p| p.name.clone())
            .collect(),
        callback_tls: callback_tls(config)?,
        file_sources: sources::FileSources::new(&config.file_sources, &data_dir)
            .map_err(anyhow::Error::msg)?,
    };
    let veem = Veem::open_with_blobs(core, store, blobs)?;
    veem.networks().set_federation(veem::LanFederation {
        endpoints: config
            .federation
            .lan_endpoints
            .iter()
            .flatten()
            .map(|e| veem_api::LanEndpoint {
                address: e.ip(),
                port: e.port(),
            })
            .collect(),
        extenders: config.federation.lan_extension.clone(),
    });
    veem.start_background();
    let connecting = veem.clone();
    let hosts_connected = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let count = in_process.len();
        for (hello, link) in in_process {
            let host = hello.name.clone();
            if let Err(e) = connecting.connect_host(hello, link).await {
                tracing::error!(%host, error = %e, "cannot add the host");
            }
        }
        if count > 0 {
            tracing::info!(
                hosts = count,
                took_ms = started.elapsed().as_millis() as u64,
                "every in-process host is connected"
            );
        }
    });
    Ok(Started {
        veem,
        hosts_connected,
    })
}

/// How outgoing https (callbacks) verifies servers: the system's roots plus `[tls] ca_file`.
fn callback_tls(config: &Config) -> anyhow::Result<Option<Arc<veem_tls::rustls::ClientConfig>>> {
    let Some(ca_file) = config.tls.as_ref().and_then(|tls| tls.ca_file.as_deref()) else {
        return Ok(None);
    };
    let tls = veem_tls::client_config(Some(ca_file), None)
        .with_context(|| format!("[tls] ca_file {}", ca_file.display()))?;
    Ok(Some(Arc::new(tls)))
}

/// The TLS side of the listener when `[tls]` gives a certificate and key: HTTPS only, with
/// agents' client certificates verified against `client_ca` (default `ca_file`).
fn server_tls(config: &Config) -> anyhow::Result<Option<veem_tls::Acceptor>> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let identity = veem_tls::Identity::load(cert, key).context("[tls] cert and key")?;
    let server = veem_tls::server_config(&identity, tls.client_ca())
        .context("[tls] cannot make the server's TLS configuration")?;
    Ok(Some(veem_tls::Acceptor::new(server)))
}

/// Runs the VEEM, with the hosts `in_process` (see [`start`]), until SIGINT or SIGTERM.
pub async fn serve(
    config: Config,
    in_process: Vec<(HostHello, Arc<dyn HostLink>)>,
) -> anyhow::Result<()> {
    // Before anything starts: a bad certificate is the operator's to fix at once.
    let tls = server_tls(&config)?;
    if config.store.url.is_some() {
        anyhow::ensure!(
            in_process.is_empty(),
            "[[host]] cannot be used with [store] url: the hosts of several front-ends are their \
             own processes (`veem agent --server URL1,URL2,...`), which follow the leader"
        );
        return serve_cluster(config, tls).await;
    }
    let in_process_hosts = in_process.len();
    let Started { veem, .. } = start(&config, in_process).await?;
    let state = http::AppState::new(veem, &config);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Remote agents can reach this VEEM from now on: their silence counts from here.
    state.veem.hosts().listening_from(std::time::Instant::now());
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "plain HTTP on a non-loopback address: tokens, descriptors and disks cross the \
             network in clear; give [tls] cert and key to serve HTTPS"
        );
    }
    tracing::info!(listen = %config.listen, scheme, data_dir = %config.data_dir.display(), hosts = in_process_hosts, "veem is serving the VMI");
    let occi = match &config.occi {
        Some(occi) => {
            let app = http::occi::router(state.clone(), tls.is_some());
            Some(serve_occi(occi.listen, app, tls.clone()).await?)
        }
        None => None,
    };
    http::listen::serve(listener, http::router(state), tls, shutdown_signal()).await;
    if let Some(occi) = occi {
        occi.abort();
    }
    tracing::info!("veem stopped");
    Ok(())
}

/// [`serve`] as one of several front-ends on a PostgreSQL database: listens at once (as a
/// follower, forwarding to the leader), campaigns, and leads when it holds the lease.
async fn serve_cluster(config: Config, tls: Option<veem_tls::Acceptor>) -> anyhow::Result<()> {
    let cluster = cluster::Cluster::open(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        name = %cluster.me.name,
        advertise_url = %cluster.me.url,
        "veem is serving the VMI as one of several front-ends; campaigning for the lease"
    );
    let auth = Arc::new(auth::Authenticator::new(config.principals.clone()));
    let app = http::cluster::router(cluster.clone(), auth, &config)?;
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(http::listen::serve(
        listener,
        app,
        tls.clone(),
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        },
    ));
    let occi = match &config.occi {
        Some(occi) => {
            let app = http::occi::cluster_router(cluster.clone(), &config, tls.is_some());
            Some(serve_occi(occi.listen, app, tls.clone()).await?)
        }
        None => None,
    };
    let ran = cluster.run(&config, shutdown_signal()).await;
    let _ = stop.send(true);
    let _ = serving.await;
    if let Some(occi) = occi {
        occi.abort();
    }
    tracing::info!("veem stopped");
    ran
}

/// Binds `[occi] listen` and serves OCCI there (HTTPS with `tls`) until the VEEM stops.
async fn serve_occi(
    listen: std::net::SocketAddr,
    app: axum::Router,
    tls: Option<veem_tls::Acceptor>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for OCCI on {listen}"))?;
    tracing::info!(%listen, "veem is serving OCCI 1.2");
    Ok(tokio::spawn(http::listen::serve(
        listener,
        app,
        tls,
        std::future::pending::<()>(),
    )))
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
