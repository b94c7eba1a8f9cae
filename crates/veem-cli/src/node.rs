//! The VEEM side of the binary: `veem serve` runs the VEEM, `veem agent` a remote host agent.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use veem_model::HostId;
use veem_node::{DriverSettings, HostSpec, SiteConfig};
use veem_server::config::LogFormat;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The TOML config file (see examples/veem.toml)
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AgentDriver {
    /// The simulated hypervisor
    Sim,
    /// QEMU over QMP (KVM where the CPU has it, TCG otherwise)
    Qemu,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The VEEM to connect to (https:// for wss:// with TLS); for a site of several front-ends
    /// on one database, all of them separated by commas (tried in order; the agent follows
    /// their leader, and a redirect only to a server of this list; images are fetched from
    /// them too)
    #[arg(long, env = "VEEM_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    /// An admin principal's token (over https, a client certificate may stand in for it)
    #[arg(
        long = "agent-token",
        env = "VEEM_AGENT_TOKEN",
        hide_env_values = true,
        required_unless_present = "cert"
    )]
    pub token: Option<String>,
    /// A CA (PEM) trusted besides the system's roots: for an https:// VEEM and https sources
    #[arg(long, env = "VEEM_CA")]
    pub ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), signed by the site's CA (`veem tls init --agent`)
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// This host's name, unique in the site
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value = "sim")]
    pub driver: AgentDriver,
    /// CPUs this host offers to VEEs
    #[arg(long)]
    pub cpus: u32,
    /// Memory this host offers to VEEs
    #[arg(long)]
    pub memory_mb: u64,
    /// Where the agent keeps what it needs to find its VEEs again after a restart
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Where the agent keeps its VEEs' directories as this machine's own storage, which no
    /// other host sees; by default where the VEEM names them (the site's shared storage)
    #[arg(long)]
    pub vees_dir: Option<PathBuf>,
    /// Sim driver settings as TOML, e.g. 'latency_ms = { deploy = 100 }'
    #[arg(long, default_value = "")]
    pub sim: String,
    /// Qemu driver settings as TOML, e.g. 'accel = "tcg"'
    #[arg(long, default_value = "")]
    pub qemu: String,
    /// Log lines as JSON
    #[arg(long)]
    pub log_json: bool,
    /// The largest http(s) source this host fetches, in bytes (default 20 GiB)
    #[arg(long, default_value_t = veem_agent::fetch::DEFAULT_FETCH_MAX_BYTES)]
    pub fetch_max_bytes: u64,
    /// A non-public network this host may fetch http(s) sources from (repeatable), e.g.
    /// 10.20.0.0/16; loopback, private and link-local addresses are refused otherwise
    #[arg(long, value_name = "CIDR")]
    pub fetch_allow: Vec<ipnet::IpNet>,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let site = SiteConfig::load(&args.config)?;
    init_logs(site.server.log_format);
    veem_node::serve(site).await
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    init_logs(if args.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    let name = HostId::new(&args.name).context("--name")?;
    // Absolute: QEMU is handed paths below it and does not start where the agent did.
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create --state-dir {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)
        .with_context(|| format!("cannot resolve --state-dir {}", args.state_dir.display()))?;
    let settings = match args.driver {
        AgentDriver::Sim => DriverSettings::Sim(
            toml::from_str(&args.sim).context("--sim is not valid sim settings")?,
        ),
        AgentDriver::Qemu => DriverSettings::Qemu(
            toml::from_str(&args.qemu).context("--qemu is not valid qemu settings")?,
        ),
    };
    let vees_dir = match &args.vees_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --vees-dir {}", dir.display()))?;
            Some(
                std::fs::canonicalize(dir)
                    .with_context(|| format!("cannot resolve --vees-dir {}", dir.display()))?,
            )
        }
        None => None,
    };
    let host = HostSpec {
        name: name.clone(),
        cpus: args.cpus,
        memory_mb: args.memory_mb,
        settings,
        state_dir,
        vees_dir,
    };
    let fetch = veem_agent::FetchConfig {
        max_bytes: args.fetch_max_bytes,
        // `--ca`, the site's CA, is trusted for https sources too.
        ca_file: args.ca.clone(),
        allowed_networks: args.fetch_allow.clone(),
        ..veem_agent::FetchConfig::default()
    };
    let servers = veem_agent::uplink::parse_servers(&args.server).context("--server")?;
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            Some(veem_tls::Identity::load(cert, key).context("--cert and --key")?)
        }
        _ => None,
    };
    let tls = veem_tls::client_config(args.ca.as_deref(), identity.as_ref()).context("--ca")?;
    let credentials = veem_agent::uplink::Credentials {
        token: args.token.clone(),
        tls: Some(Arc::new(tls)),
    };
    // Images of the VEEM's store come from its front-ends, by digest.
    let fetching = veem_node::fetching(fetch, veem_layout::fetch_cache_dir(&host.state_dir))?
        .with_origin(veem_agent::fetch::VeemOrigin {
            servers: servers.clone(),
            credentials: credentials.clone(),
        });
    let agent = veem_node::host_agent(&host, &fetching)?;
    tracing::info!(host = %name, server = %args.server, "agent starting");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    veem_agent::uplink::run_with(&args.server, &credentials, agent, shutdown)
        .await
        .context("the agent stopped")?;
    Ok(())
}
