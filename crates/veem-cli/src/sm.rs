//! The SM-side commands: what a Service Manager (or an operator standing in for one) does over
//! the VMI, one subcommand per call of `veem-client`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::Serialize;
use veem_api::{
    InitializeRequest, ItemFailure, MigrateRequest, NetworkView, Order, PatchApplied, PatchRequest,
    SiteMigrateRequest, SiteRequest, SiteView, UpdateStateRequest, VeeList,
};
use veem_client::{Client, ClientError, ListQuery, OvfQuery};
use veem_model::{
    ControlAction, DiskSource, DiskSpec, EventType, InitModel, NicSpec, SiteName, VeeDescriptor,
    VmiState,
};

use crate::output::{self, emit, to_json, BatchRow, OutputFormat};
use crate::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum VeeCommand {
    /// Define new VEEs from a descriptor: a JSON file, an OVF envelope, or flags (InitializeVEEs)
    Init(InitArgs),
    /// Where a TWOPHASE InitializeVEEs of this batch would land now, or why it could not;
    /// changes nothing (takes what `init` takes; --model is ignored: a plan is TWOPHASE's)
    Plan(InitArgs),
    /// Deploy and activate DEFINED VEEs (SubmitVEEs)
    Submit {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Apply a control action to VEEs (UpdateVEEState)
    Ctl(CtlArgs),
    /// Show one VEE
    Get { id: String },
    /// List VEEs, following pages
    Ls(LsArgs),
    /// Show a VEE's state changes
    Events { id: String },
    /// Show the tail of a VEE's serial console (what its guest printed last)
    Console {
        id: String,
        /// How many of the last bytes (at most 1 MiB)
        #[arg(long, default_value_t = veem_client::veem_api::CONSOLE_TAIL_DEFAULT_BYTES)]
        bytes: u64,
    },
    /// Have VEEs' accounting sent to a URL every interval (registering again changes it)
    Listen {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        #[arg(long, value_name = "MS")]
        interval_ms: u64,
        /// Where the records are POSTed (a JSON array each time)
        #[arg(long, value_name = "URL")]
        callback: String,
    },
    /// Stop sending VEEs' accounting to you
    Unlisten {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Show a VEE's accounting records (also those a listener could not be sent)
    Accounting {
        id: String,
        /// From this time on (ms since the epoch)
        #[arg(long)]
        from: Option<u64>,
        /// Until before this time (ms since the epoch)
        #[arg(long)]
        to: Option<u64>,
    },
    /// Change memory or CPUs (live when the VEE runs and stays within its ceilings)
    Patch(PatchArgs),
    /// Move a VEE to another host (live unless --cold) or to another site (cold unless
    /// --live); it comes back in the state it had (admin)
    Migrate {
        id: String,
        /// Target host; placement chooses when absent
        #[arg(long, conflicts_with = "site")]
        host: Option<String>,
        /// Target site (this site's own name: its hosts)
        #[arg(long)]
        site: Option<String>,
        /// Keep an ACTIVE VEE running while it moves (the default between hosts)
        #[arg(long, conflicts_with = "cold")]
        live: bool,
        /// Pause an ACTIVE VEE while it moves (the default between sites)
        #[arg(long)]
        cold: bool,
    },
    /// Destroy VEEs and remove every byte stored for them
    Purge {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Download a disk of a DEFINED or DESTROYED VEE
    Disk {
        id: String,
        /// The disk's target, e.g. vda
        target: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// Define now, place whenever capacity allows
    Besteffort,
    /// Define only if all VEEs can be placed now, and reserve that placement
    Twophase,
}

impl From<ModelArg> for InitModel {
    fn from(model: ModelArg) -> Self {
        match model {
            ModelArg::Besteffort => InitModel::Besteffort,
            ModelArg::Twophase => InitModel::Twophase,
        }
    }
}

/// The quick flags describe a VEE themselves: they make no sense with a descriptor file.
const QUICK_CONFLICTS: [&str; 2] = ["file", "ovf"];

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("descriptor_source").required(true).args(["file", "ovf", "cpu"])))]
pub struct InitArgs {
    #[arg(long, value_enum, ignore_case = true, default_value_t = ModelArg::Besteffort)]
    pub model: ModelArg,
    /// How many VEEs to define from the descriptor
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// A JSON VEE descriptor (`-` reads standard input)
    #[arg(short = 'f', long, value_name = "descriptor.json")]
    pub file: Option<PathBuf>,
    /// An OVF envelope (`-` reads standard input)
    #[arg(long, value_name = "envelope.ovf")]
    pub ovf: Option<PathBuf>,
    /// The envelope's DeploymentOptionSection configuration to use
    #[arg(long, requires = "ovf", conflicts_with_all = ["file", "cpu"], value_name = "ID")]
    pub configuration: Option<String>,
    /// Add a tag (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Never share a host with the principal's other VEEs tagged so (repeatable)
    #[arg(long = "anti-affinity", value_name = "TAG")]
    pub anti_affinity: Vec<String>,
    /// Run it at this site (repeatable: in order of preference; this site's own name means
    /// its local hosts)
    #[arg(long = "site", value_name = "SITE", conflicts_with = "ovf")]
    pub sites: Vec<String>,
    /// Without a file: the VEE's name
    #[arg(long, requires = "cpu", conflicts_with_all = QUICK_CONFLICTS)]
    pub name: Option<String>,
    /// Without a file: virtual CPUs
    #[arg(long, requires = "memory_mb")]
    pub cpu: Option<u32>,
    /// Without a file: CPUs can be raised live up to this
    #[arg(long, requires = "cpu", conflicts_with_all = QUICK_CONFLICTS)]
    pub cpu_max: Option<u32>,
    /// Without a file: memory
    #[arg(long, requires = "cpu", conflicts_with_all = QUICK_CONFLICTS, value_name = "MB")]
    pub memory_mb: Option<u64>,
    /// Without a file: memory can be raised live up to this
    #[arg(long, requires = "cpu", conflicts_with_all = QUICK_CONFLICTS, value_name = "MB")]
    pub memory_max_mb: Option<u64>,
    /// Without a file: a disk from `image:<name>` or an http(s):// or file:// URL (repeatable)
    #[arg(long = "disk", requires = "cpu", conflicts_with_all = QUICK_CONFLICTS, value_name = "SOURCE", value_parser = parse_disk_source)]
    pub disks: Vec<DiskSource>,
    /// Without a file: a NIC on this network (repeatable)
    #[arg(long = "nic", requires = "cpu", conflicts_with_all = QUICK_CONFLICTS, value_name = "NETWORK")]
    pub nics: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// activate, pause, suspend, shutdown or destroy
    #[arg(value_parser = parse_action)]
    pub action: ControlAction,
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Apply to all VEEs at once, in any order (default: one after another, in the given order)
    #[arg(long)]
    pub set: bool,
    /// How long veem may take before answering with what is not done yet (default 60000)
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only VEEs in this VMI state
    #[arg(long, value_parser = parse_state)]
    pub state: Option<VmiState>,
    /// Only VEEs carrying this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Show at most this many VEEs
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Show the list again at every change of a VEE's state (and every 2 s), until Ctrl-C
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// With --watch: stop after this many lists (for tests and scripts)
    #[arg(long, requires = "watch", hide = true, value_name = "N")]
    pub watch_count: Option<u32>,
}

/// How often `vee ls --watch` shows the list when no state changes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["memory_mb", "cpu"])))]
pub struct PatchArgs {
    pub id: String,
    #[arg(long, value_name = "MB")]
    pub memory_mb: Option<u64>,
    #[arg(long)]
    pub cpu: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload an image (raw or qcow2), streamed from the file
    Push { name: String, file: PathBuf },
    /// List the images visible to the caller
    Ls,
    /// Show one image
    Get { name: String },
    /// Remove an image no VEE depends on
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Create a network of yours (a virtual LAN); VEEs get addresses from its range
    Create {
        name: String,
        /// IPv4 range in CIDR form, e.g. 10.10.0.0/24 (the first address is the hosts')
        #[arg(long)]
        cidr: String,
        /// Every principal may attach, and the hosts reach its VEEs (admin)
        #[arg(long)]
        public: bool,
    },
    /// List your networks and the public ones
    Ls,
    /// Show the network a NIC of yours attaches to by this name
    Get { name: String },
    /// Delete a network no VEE holds an address on
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Register a remote site (admin); its URL and token are tried at once
    Add {
        name: String,
        /// Where its VMI answers, e.g. https://east.example:7070
        #[arg(value_name = "URL")]
        site_url: String,
        /// The token this VEEM presents there (a principal of that site's; `--token` is
        /// yours, here)
        #[arg(long = "site-token", value_name = "TOKEN")]
        site_token: String,
        /// PEM file of the CA that signed its certificate
        #[arg(long, value_name = "FILE")]
        site_ca: Option<PathBuf>,
        /// PEM client certificate and key, where the site asks for mTLS
        #[arg(long, value_name = "FILE", requires = "client_key")]
        client_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "client_cert")]
        client_key: Option<PathBuf>,
    },
    /// List the registered sites
    Ls,
    /// Show one site
    Get { name: String },
    /// Forget a site none of this VEEM's VEEs lives at (admin)
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List hosts with their use and capacity
    Ls,
    /// Keep a host's VEEs but place no new ones on it
    Disable { host: String },
    /// Let a disabled host take new VEEs again
    Enable { host: String },
}

fn parse_action(text: &str) -> Result<ControlAction, String> {
    ControlAction::parse(text).ok_or_else(|| {
        format!("unknown action {text:?}: use activate, pause, suspend, shutdown or destroy")
    })
}

fn parse_state(text: &str) -> Result<VmiState, String> {
    VmiState::parse(&text.to_ascii_uppercase()).ok_or_else(|| {
        format!(
            "unknown state {text:?}: use initial, defined, active, paused, suspended or destroyed"
        )
    })
}

fn parse_disk_source(text: &str) -> Result<DiskSource, String> {
    DiskSource::try_from(text.to_owned())
}

/// A client for the principal named by `--token`.
pub fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    let token = global
        .token
        .as_deref()
        .filter(|token| !token.is_empty())
        .ok_or_else(|| anyhow!("no token: pass --token or set VEEM_TOKEN"))?;
    Ok(Client::with_ca(&global.url, token, global.ca.as_deref())?)
}

pub async fn run_vee(global: &GlobalArgs, command: VeeCommand) -> anyhow::Result<()> {
    let format = global.output;
    match command {
        VeeCommand::Init(args) => {
            let body = prepare_init(&args)?;
            let client = connect(global)?;
            let answer = match body {
                InitBody::Json(request) => client.initialize(&request).await?,
                InitBody::Ovf { envelope, query } => {
                    client.initialize_ovf(envelope, &query).await?
                }
            };
            match format {
                OutputFormat::Json => emit(&to_json(&answer)?),
                OutputFormat::Table => emit(&output::initialized_table(&answer).render()),
            }
        }
        VeeCommand::Plan(args) => {
            let client = connect(global)?;
            let plan = match prepare_init(&args)? {
                InitBody::Json(request) => client.plan(&request).await?,
                InitBody::Ovf { envelope, query } => client.plan_ovf(envelope, &query).await?,
            };
            match format {
                OutputFormat::Json => emit(&to_json(&plan)?),
                OutputFormat::Table => emit(&output::plan_text(&plan)),
            }
        }
        VeeCommand::Submit { ids } => {
            let answer = connect(global)?.submit(&ids).await?;
            let rows = batch_rows(&ids, &answer.submitted, &answer.failed, "submitted");
            show_batch(format, &answer, &rows)
        }
        VeeCommand::Ctl(args) => {
            let request = UpdateStateRequest {
                order: if args.set { Order::Set } else { Order::List },
                ids: args.ids,
                action: args.action,
                timeout_ms: args.timeout_ms,
            };
            let answer = connect(global)?.update_state(&request).await?;
            let rows = batch_rows(&request.ids, &answer.applied, &answer.failed, "applied");
            show_batch(format, &answer, &rows)
        }
        VeeCommand::Get { id } => {
            let vee = connect(global)?.get_vee(&id).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&vee)?),
                OutputFormat::Table => emit(&output::vee_detail(&vee)),
            }
        }
        VeeCommand::Ls(args) if args.watch => watch_vees(&connect(global)?, &args, format).await,
        VeeCommand::Ls(args) => {
            let list = list_vees(&connect(global)?, &args).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&list)?),
                OutputFormat::Table => emit(&output::vee_table(&list.vees).render()),
            }
        }
        VeeCommand::Events { id } => {
            let events = connect(global)?.vee_events(&id).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&events)?),
                OutputFormat::Table => emit(&output::event_table(&events.events).render()),
            }
        }
        VeeCommand::Console { id, bytes } => {
            let tail = connect(global)?.console_tail(&id, bytes).await?;
            let text = String::from_utf8_lossy(&tail);
            match format {
                OutputFormat::Json => emit(&to_json(&serde_json::json!({ "console": text }))?),
                OutputFormat::Table => emit(&text),
            }
        }
        VeeCommand::Listen {
            ids,
            interval_ms,
            callback,
        } => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            connect(global)?
                .listen(&ids, interval_ms, &callback)
                .await?;
            show(format, &serde_json::json!({ "listening": ids }), || {
                format!(
                    "{} sent to {callback} every {interval_ms} ms\n",
                    ids.join(", ")
                )
            })
        }
        VeeCommand::Unlisten { ids } => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            connect(global)?.unlisten(&ids).await?;
            show(format, &serde_json::json!({ "stopped": ids }), || {
                format!("no more accounting of {} sent to you\n", ids.join(", "))
            })
        }
        VeeCommand::Accounting { id, from, to } => {
            let list = connect(global)?.vee_accounting(&id, from, to).await?;
            show(format, &list, || {
                output::accounting_table(&list.records).render()
            })
        }
        VeeCommand::Patch(args) => {
            let request = PatchRequest {
                memory_mb: args.memory_mb,
                cpu: args.cpu,
            };
            let answer = connect(global)?.patch_vee(&args.id, &request).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&answer)?),
                OutputFormat::Table => {
                    let when = match answer.applied {
                        PatchApplied::Live => "applied live, without a restart",
                        PatchApplied::NextActivation => "takes effect at the next activation",
                    };
                    let table = output::vee_table(std::slice::from_ref(&answer.vee)).render();
                    emit(&format!("{table}{}: {when}\n", answer.vee.id))
                }
            }
        }
        VeeCommand::Migrate {
            id,
            host,
            site,
            live,
            cold,
        } => {
            let client = connect(global)?;
            let vee = match site {
                Some(site) => {
                    let request = SiteMigrateRequest {
                        site,
                        live: Some(live),
                    };
                    client.migrate_vee_to_site(&id, &request).await?
                }
                None => {
                    let request = MigrateRequest {
                        host,
                        live: Some(!cold),
                    };
                    client.migrate_vee(&id, &request).await?
                }
            };
            match format {
                OutputFormat::Json => emit(&to_json(&vee)?),
                OutputFormat::Table => emit(&output::vee_table(&[vee]).render()),
            }
        }
        VeeCommand::Purge { ids } => purge(&connect(global)?, format, ids).await,
        VeeCommand::Disk { id, target, out } => {
            let bar = progress_bar(format, None);
            let progress = |written: u64, total: Option<u64>| {
                if let Some(bar) = &bar {
                    if let Some(total) = total {
                        bar.set_length(total);
                    }
                    bar.set_position(written);
                }
            };
            let downloaded = connect(global)?
                .download_disk_with_progress(&id, &target, &out, Some(&progress))
                .await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let bytes =
                downloaded.with_context(|| format!("cannot download disk {target} of {id}"))?;
            match format {
                OutputFormat::Json => emit(&to_json(&serde_json::json!({
                    "id": id, "target": target, "path": out, "bytes": bytes
                }))?),
                OutputFormat::Table => emit(&format!(
                    "wrote {bytes} bytes ({}) to {}\n",
                    output::fmt_bytes(bytes),
                    out.display()
                )),
            }
        }
    }
}

pub async fn run_image(global: &GlobalArgs, command: ImageCommand) -> anyhow::Result<()> {
    let format = global.output;
    let client = connect(global)?;
    match command {
        ImageCommand::Push { name, file } => {
            let image = push_image(&client, &name, &file, format)
                .await
                .with_context(|| format!("cannot upload {}", file.display()))?;
            match format {
                OutputFormat::Json => emit(&to_json(&image)?),
                OutputFormat::Table => emit(&output::image_table(&[image]).render()),
            }
        }
        ImageCommand::Ls => {
            let images = client.list_images().await?;
            match format {
                OutputFormat::Json => emit(&to_json(&images)?),
                OutputFormat::Table => emit(&output::image_table(&images.images).render()),
            }
        }
        ImageCommand::Get { name } => {
            let image = client.get_image(&name).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&image)?),
                OutputFormat::Table => emit(&output::image_table(&[image]).render()),
            }
        }
        ImageCommand::Rm { name } => {
            client.delete_image(&name).await?;
            match format {
                OutputFormat::Json => emit(&to_json(&serde_json::json!({ "deleted": name }))?),
                OutputFormat::Table => emit(&format!("deleted image {name}\n")),
            }
        }
    }
}

/// `veem events --follow`: monitoring events as they come, one line each (JSON lines with
/// `-o json`).
pub async fn run_events(global: &GlobalArgs, args: EventsArgs) -> anyhow::Result<()> {
    if !args.follow {
        bail!(
            "monitoring events are live: give --follow (a VEE's state history is `veem vee events ID`)"
        );
    }
    let types: Vec<EventType> = args
        .types
        .iter()
        .map(|t| {
            EventType::ALL
                .into_iter()
                .find(|k| k.as_str().eq_ignore_ascii_case(t))
                .ok_or_else(|| {
                    anyhow::anyhow!("unknown event type {t:?}: use hardware, probe, agent or state")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let stream = connect(global)?.monitoring_stream().await?;
    futures::pin_mut!(stream);
    while let Some(event) = futures::StreamExt::next(&mut stream).await {
        let event = event?;
        if !types.is_empty() && !types.contains(&event.kind) {
            continue;
        }
        let line = match global.output {
            OutputFormat::Json => serde_json::to_string(&event)?,
            OutputFormat::Table => output::event_line(&event),
        };
        println!("{line}");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they come
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only these types (hardware, probe, agent, state); all when absent
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
}

pub async fn run_net(global: &GlobalArgs, command: NetCommand) -> anyhow::Result<()> {
    let format = global.output;
    let client = connect(global)?;
    let shown = |networks: &[NetworkView]| output::network_table(networks).render();
    match command {
        NetCommand::Create { name, cidr, public } => {
            let network = client.create_network(&name, &cidr, public).await?;
            show(format, &network, || shown(std::slice::from_ref(&network)))
        }
        NetCommand::Ls => {
            let list = client.list_networks().await?;
            show(format, &list, || shown(&list.networks))
        }
        NetCommand::Get { name } => {
            let network = client.get_network(&name).await?;
            show(format, &network, || shown(std::slice::from_ref(&network)))
        }
        NetCommand::Rm { name } => {
            client.delete_network(&name).await?;
            show(format, &serde_json::json!({ "deleted": name }), || {
                format!("deleted network {name}\n")
            })
        }
    }
}

pub async fn run_site(global: &GlobalArgs, command: SiteCommand) -> anyhow::Result<()> {
    let format = global.output;
    let client = connect(global)?;
    let shown = |sites: &[SiteView]| output::site_table(sites).render();
    let read = |path: Option<PathBuf>| -> anyhow::Result<Option<String>> {
        path.map(|p| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        })
        .transpose()
    };
    match command {
        SiteCommand::Add {
            name,
            site_url,
            site_token,
            site_ca,
            client_cert,
            client_key,
        } => {
            let request = SiteRequest {
                name,
                url: site_url,
                token: site_token,
                ca_pem: read(site_ca)?,
                client_cert_pem: read(client_cert)?,
                client_key_pem: read(client_key)?,
            };
            let site = client.add_site(&request).await?;
            show(format, &site, || shown(std::slice::from_ref(&site)))
        }
        SiteCommand::Ls => {
            let list = client.list_sites().await?;
            show(format, &list, || shown(&list.sites))
        }
        SiteCommand::Get { name } => {
            let site = client.get_site(&name).await?;
            show(format, &site, || shown(std::slice::from_ref(&site)))
        }
        SiteCommand::Rm { name } => {
            client.delete_site(&name).await?;
            show(format, &serde_json::json!({ "deleted": name }), || {
                format!("removed site {name}\n")
            })
        }
    }
}

/// Prints `value` as JSON, or the table `table` renders.
fn show<T: serde::Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => emit(&to_json(value)?),
        OutputFormat::Table => emit(&table()),
    }
}

/// `veem cluster`: which front-end leads the site, and the others (admin).
pub async fn run_cluster(global: &GlobalArgs) -> anyhow::Result<()> {
    let view = connect(global)?.cluster().await?;
    match global.output {
        OutputFormat::Json => emit(&to_json(&view)?),
        OutputFormat::Table => emit(&output::cluster_table(&view, veem_layout::now_ms()).render()),
    }
}

pub async fn run_host(global: &GlobalArgs, command: HostCommand) -> anyhow::Result<()> {
    let format = global.output;
    let client = connect(global)?;
    let (host, enabled) = match command {
        HostCommand::Ls => {
            let hosts = client.list_hosts().await?;
            return match format {
                OutputFormat::Json => emit(&to_json(&hosts)?),
                OutputFormat::Table => emit(&output::host_table(&hosts.hosts).render()),
            };
        }
        HostCommand::Disable { host } => (host, false),
        HostCommand::Enable { host } => (host, true),
    };
    let view = client.set_host_enabled(&host, enabled).await?;
    match format {
        OutputFormat::Json => emit(&to_json(&view)?),
        OutputFormat::Table => emit(&output::host_table(&[view]).render()),
    }
}

/// What `vee init` sends: a JSON request, or an OVF envelope with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitBody {
    Json(Box<InitializeRequest>),
    Ovf { envelope: String, query: OvfQuery },
}

pub fn prepare_init(args: &InitArgs) -> anyhow::Result<InitBody> {
    let model = InitModel::from(args.model);
    if let Some(path) = &args.ovf {
        return Ok(InitBody::Ovf {
            envelope: read_input(path)?,
            query: OvfQuery {
                model,
                count: args.count,
                tags: args.tags.clone(),
                anti_affinity: args.anti_affinity.clone(),
                configuration: args.configuration.clone(),
            },
        });
    }
    let mut descriptor = match &args.file {
        Some(path) => parse_descriptor(&read_input(path)?)
            .with_context(|| format!("{} is not a VEE descriptor", path.display()))?,
        None => descriptor_from_flags(args)?,
    };
    add_missing(&mut descriptor.tags, &args.tags);
    add_missing(&mut descriptor.anti_affinity, &args.anti_affinity);
    for site in &args.sites {
        let site = SiteName::new(site.as_str()).with_context(|| format!("--site {site:?}"))?;
        if !descriptor.sites.contains(&site) {
            descriptor.sites.push(site);
        }
    }
    Ok(InitBody::Json(Box::new(InitializeRequest {
        model,
        count: args.count,
        descriptor,
    })))
}

/// The descriptor the quick flags describe (tags are added by the caller, as for a file).
fn descriptor_from_flags(args: &InitArgs) -> anyhow::Result<VeeDescriptor> {
    let (Some(cpu), Some(memory_mb)) = (args.cpu, args.memory_mb) else {
        bail!("give --file, --ovf, or --cpu and --memory-mb");
    };
    let mut descriptor = VeeDescriptor::minimal(cpu, memory_mb);
    descriptor.name = args.name.clone().unwrap_or_default();
    descriptor.cpu_max = args.cpu_max;
    descriptor.memory_max_mb = args.memory_max_mb;
    descriptor.disks = args
        .disks
        .iter()
        .map(|source| DiskSpec {
            source: Some(source.clone()),
            size_gb: None,
            target: None,
            clone: true,
            kind: veem_model::DiskKind::Disk,
        })
        .collect();
    descriptor.nics = args
        .nics
        .iter()
        .map(|network| NicSpec {
            network: network.clone(),
            target: None,
            ip: None,
        })
        .collect();
    Ok(descriptor)
}

/// Parses a JSON descriptor; an error names the offending field (`disks[0].source: ...`).
fn parse_descriptor(text: &str) -> anyhow::Result<VeeDescriptor> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        if path == "." {
            anyhow!("{}", error.inner())
        } else {
            anyhow!("{path}: {}", error.inner())
        }
    })
}

fn add_missing(list: &mut Vec<String>, extra: &[String]) {
    for item in extra {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

/// A file's text, or standard input's for `-`.
fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// One row per requested id, in the order given, then any id the VEEM named that was not asked.
pub fn batch_rows(
    requested: &[String],
    succeeded: &[String],
    failed: &[ItemFailure],
    success_word: &str,
) -> Vec<BatchRow> {
    let row_of = |id: &str| -> Option<BatchRow> {
        if let Some(failure) = failed.iter().find(|f| f.id == id) {
            return Some(BatchRow {
                id: id.to_owned(),
                result: failure.error.clone(),
                detail: failure.detail.clone(),
                failed: true,
            });
        }
        succeeded.iter().any(|s| s == id).then(|| BatchRow {
            id: id.to_owned(),
            result: success_word.to_owned(),
            detail: String::new(),
            failed: false,
        })
    };
    let mut rows: Vec<BatchRow> = Vec::new();
    let mentioned = requested
        .iter()
        .chain(succeeded)
        .chain(failed.iter().map(|f| &f.id));
    for id in mentioned {
        if rows.iter().any(|row| &row.id == id) {
            continue;
        }
        rows.push(row_of(id).unwrap_or_else(|| BatchRow {
            id: id.clone(),
            result: "unknown".to_owned(),
            detail: "veem's answer does not mention this VEE".to_owned(),
            failed: true,
        }));
    }
    rows
}

/// Prints a batch answer: the successes (or the whole answer as JSON) on standard output, one
/// `error:` line per failure on standard error; fails (exit code 1) when any item failed.
fn show_batch<T: Serialize>(
    format: OutputFormat,
    answer: &T,
    rows: &[BatchRow],
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => emit(&to_json(answer)?)?,
        OutputFormat::Table => {
            if let Some(table) = output::batch_table(rows) {
                emit(&table.render())?;
            }
        }
    }
    let failures: Vec<String> = rows
        .iter()
        .filter(|row| row.failed)
        .map(output::failure_line)
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    output::emit_errors(&failures);
    Err(output::AlreadyReported.into())
}

/// Every VEE matching the filters, following pages, stopping at `--limit`. `next` is where a
/// further listing would go on (`null` when nothing is left).
async fn list_vees(client: &Client, args: &LsArgs) -> anyhow::Result<VeeList> {
    let mut query = ListQuery {
        state: args.state,
        tag: args.tag.clone(),
        limit: args.limit,
        after: None,
    };
    let Some(limit) = args.limit else {
        let vees = client.list_all_vees(&query).await?;
        return Ok(VeeList { vees, next: None });
    };
    let limit = limit as usize;
    let mut vees = Vec::new();
    loop {
        let page = client.list_vees(&query).await?;
        vees.extend(page.vees);
        if vees.len() >= limit {
            let more = vees.len() > limit || page.next.is_some();
            vees.truncate(limit);
            let next = if more {
                vees.last().map(|vee| vee.id.clone())
            } else {
                None
            };
            return Ok(VeeList { vees, next });
        }
        match page.next {
            Some(next) if query.after.as_deref() != Some(next.as_str()) => {
                query.after = Some(next);
            }
            _ => return Ok(VeeList { vees, next: None }),
        }
    }
}

#[derive(Debug, Serialize)]
struct PurgeAnswer {
    purged: Vec<String>,
    failed: Vec<ItemFailure>,
}

/// Purges one VEE after another. A refusal of one (`not_found`, `access_denied`) is that item's
/// failure; losing veem itself stops the whole command.
async fn purge(client: &Client, format: OutputFormat, ids: Vec<String>) -> anyhow::Result<()> {
    let mut answer = PurgeAnswer {
        purged: Vec::new(),
        failed: Vec::new(),
    };
    for id in &ids {
        match client.purge_vee(id).await {
            Ok(()) => answer.purged.push(id.clone()),
            Err(ClientError::Api(problem)) => answer.failed.push(ItemFailure {
                id: id.clone(),
                error: problem.code,
                detail: problem.detail,
            }),
            Err(error) => return Err(anyhow::Error::new(error)),
        }
    }
    let rows = batch_rows(&ids, &answer.purged, &answer.failed, "purged");
    show_batch(format, &answer, &rows)
}

/// Uploads with a progress bar on standard error when a person watches it.
async fn push_image(
    client: &Client,
    name: &str,
    file: &Path,
    format: OutputFormat,
) -> Result<veem_api::ImageView, ClientError> {
    let Some(bar) = progress_bar(format, None) else {
        return client.push_image(name, file, None).await;
    };
    let progress = |sent: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(sent);
    };
    let result = client.push_image(name, file, Some(&progress)).await;
    bar.finish_and_clear();
    result
}

/// A progress bar of bytes on standard error, only where a person watches it (a terminal)
/// and reads tables: `-o json` and pipes get nothing extra.
fn progress_bar(format: OutputFormat, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if format != OutputFormat::Table || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(progress_style());
    Some(bar)
}

/// Bytes done of the total, a bar, the rate and the time left.
fn progress_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{bytes} / {total_bytes} [{wide_bar}] {bytes_per_sec}, {eta} left",
    )
    .expect("the template is fixed and its keys are indicatif's (checked by a test)")
    .progress_chars("=> ")
}

/// The monitoring stream, as `vee ls --watch` reads it.
type EventStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<veem_model::MonitoringEvent, ClientError>> + Send>,
>;

/// `vee ls --watch`: the list again at every STATE event of the monitoring stream (and every
/// [`WATCH_EVERY`] when nothing changes, or when the stream is not to be had), until Ctrl-C
/// (or `--watch-count` lists). A terminal is cleared before each list; anything else gets
/// the lists one after another (`-o json`: one JSON document a line).
async fn watch_vees(client: &Client, args: &LsArgs, format: OutputFormat) -> anyhow::Result<()> {
    let mut events: Option<EventStream> = match client.monitoring_stream().await {
        Ok(stream) => Some(Box::pin(stream)),
        // The list is still worth showing every few seconds.
        Err(_) => None,
    };
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u32;
    loop {
        let list = list_vees(client, args).await?;
        let text = match format {
            OutputFormat::Json => format!("{}\n", serde_json::to_string(&list)?),
            OutputFormat::Table => {
                let heading = format!(
                    "{}  (every state change or {} s; Ctrl-C to stop)\n",
                    output::fmt_time(veem_layout::now_ms()),
                    WATCH_EVERY.as_secs()
                );
                let clear = if terminal { "\x1b[2J\x1b[H" } else { "" };
                let gap = if terminal || shown == 0 { "" } else { "\n" };
                format!(
                    "{clear}{gap}{heading}{}",
                    output::vee_table(&list.vees).render()
                )
            }
        };
        emit(&text)?;
        shown += 1;
        if args.watch_count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(WATCH_EVERY) => {}
            () = next_state_event(&mut events) => {}
        }
    }
}

/// Waits for the next STATE event; forever once the stream has ended (the timer takes over).
async fn next_state_event(events: &mut Option<EventStream>) {
    if let Some(stream) = events.as_mut() {
        loop {
            match futures::StreamExt::next(stream).await {
                Some(Ok(event)) if event.kind == EventType::State => return,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        *events = None;
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_progress_bar_draws_bytes_of_the_total() {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(4 << 20),
            indicatif::ProgressDrawTarget::hidden(),
        );
        bar.set_style(progress_style());
        bar.set_position(1 << 20);
        assert_eq!(bar.position(), 1 << 20);
        assert_eq!(bar.length(), Some(4 << 20));
    }

    #[test]
    fn plan_takes_what_init_takes() {
        let argv = ["veem", "vee", "plan", "-f", "db.json", "--count", "3"];
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Vee(VeeCommand::Plan(args)) => {
                assert_eq!(
                    (args.file.as_deref(), args.count),
                    (Some(Path::new("db.json")), 3)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let argv = ["veem", "vee", "ls", "--watch-count", "2"];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "--watch-count needs --watch"
        );
    }

    fn init_args(args: &[&str]) -> InitArgs {
        let argv = ["veem", "vee", "init"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Command::Vee(VeeCommand::Init(args)) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn init_error(args: &[&str]) -> clap::error::ErrorKind {
        let argv = ["veem", "vee", "init"].iter().chain(args);
        Cli::try_parse_from(argv)
            .expect_err("invalid arguments")
            .kind()
    }

    fn json_request(args: &[&str]) -> InitializeRequest {
        match prepare_init(&init_args(args)).expect("a request") {
            InitBody::Json(request) => *request,
            other => panic!("expected json, got {other:?}"),
        }
    }

    #[test]
    fn quick_flags_build_a_descriptor() {
        let request = json_request(&[
            "--model",
            "TWOPHASE",
            "--count",
            "3",
            "--name",
            "db",
            "--cpu",
            "2",
            "--memory-mb",
            "1024",
            "--memory-max-mb",
            "8192",
            "--disk",
            "image:tiny",
            "--nic",
            "private",
            "--tag",
            "database",
            "--anti-affinity",
            "database",
        ]);
        assert_eq!(request.model, InitModel::Twophase);
        assert_eq!(request.count, 3);
        let d = &request.descriptor;
        assert_eq!((d.name.as_str(), d.cpu, d.memory_mb), ("db", 2, 1024));
        assert_eq!(d.memory_max_mb, Some(8192));
        assert_eq!(d.cpu_max, None);
        assert_eq!(d.disks.len(), 1);
        assert_eq!(
            d.disks[0]
                .source
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("image:tiny")
        );
        assert!(d.disks[0].clone);
        assert_eq!(d.nics[0].network, "private");
        assert_eq!(d.tags, vec!["database"]);
        assert_eq!(d.anti_affinity, vec!["database"]);
    }

    #[test]
    fn the_smallest_quick_descriptor_is_besteffort_and_one() {
        let request = json_request(&["--cpu", "1", "--memory-mb", "64"]);
        assert_eq!(request.model, InitModel::Besteffort);
        assert_eq!(request.count, 1);
        assert_eq!(request.descriptor, VeeDescriptor::minimal(1, 64));
    }

    #[test]
    fn flags_that_do_not_fit_together_are_usage_errors() {
        use clap::error::ErrorKind;
        // Nothing to describe the VEE with.
        assert_eq!(init_error(&[]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            init_error(&["--cpu", "1"]),
            ErrorKind::MissingRequiredArgument
        );
        // A file and quick flags at once.
        assert_eq!(
            init_error(&["--file", "d.json", "--cpu", "1", "--memory-mb", "64"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            init_error(&["--file", "d.json", "--name", "db"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            init_error(&["--ovf", "e.ovf", "--disk", "image:tiny"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            init_error(&["--file", "d.json", "--configuration", "big"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            init_error(&["--name", "db", "--configuration", "big"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            init_error(&["--cpu", "1", "--memory-mb", "64", "--disk", "tiny"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            init_error(&["--cpu", "1", "--memory-mb", "64", "--count", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            init_error(&["--cpu", "1", "--memory-mb", "64", "--model", "eager"]),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn a_descriptor_file_gets_the_extra_tags_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"{"name": "web", "cpu": 1, "memory_mb": 512, "tags": ["web"],
                "disks": [{"source": "image:tiny", "target": "vda"}]}"#,
        )
        .expect("written");
        let path = path.to_str().expect("a utf-8 path");
        let request = json_request(&["--file", path, "--tag", "web", "--tag", "front"]);
        assert_eq!(request.descriptor.name, "web");
        assert_eq!(request.descriptor.tags, vec!["web", "front"]);
        assert_eq!(request.descriptor.disks[0].target.as_deref(), Some("vda"));
    }

    #[test]
    fn a_bad_descriptor_file_names_the_file_and_the_field() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"{"cpu": 1, "memory_mb": 512, "disks": [{"source": "gopher://x"}]}"#,
        )
        .expect("written");
        let text = path.to_str().expect("a utf-8 path");
        let error = prepare_init(&init_args(&["--file", text])).expect_err("refused");
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!(
                "{text} is not a VEE descriptor: disks[0].source: "
            )),
            "{message}"
        );

        let missing = dir.path().join("absent.json");
        let text = missing.to_str().expect("a utf-8 path");
        let error = prepare_init(&init_args(&["--file", text])).expect_err("refused");
        assert!(
            format!("{error:#}").starts_with(&format!("cannot read {text}: ")),
            "{error:#}"
        );
    }

    #[test]
    fn an_ovf_envelope_goes_with_its_query() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("e.ovf");
        std::fs::write(&path, "<Envelope/>").expect("written");
        let path = path.to_str().expect("a utf-8 path");
        let body = prepare_init(&init_args(&[
            "--ovf",
            path,
            "--configuration",
            "big",
            "--count",
            "2",
            "--tag",
            "web",
            "--anti-affinity",
            "web",
        ]))
        .expect("a request");
        assert_eq!(
            body,
            InitBody::Ovf {
                envelope: "<Envelope/>".into(),
                query: OvfQuery {
                    model: InitModel::Besteffort,
                    count: 2,
                    tags: vec!["web".into()],
                    anti_affinity: vec!["web".into()],
                    configuration: Some("big".into()),
                },
            }
        );
    }

    #[test]
    fn ctl_takes_actions_in_any_case_and_defaults_to_list_order() {
        let cli = Cli::try_parse_from(["veem", "vee", "ctl", "Suspend", "vee-1", "vee-2"])
            .expect("valid arguments");
        let Command::Vee(VeeCommand::Ctl(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.action, ControlAction::Suspend);
        assert_eq!(args.ids, vec!["vee-1", "vee-2"]);
        assert!(!args.set);
        assert_eq!(args.timeout_ms, None);
        assert!(Cli::try_parse_from(["veem", "vee", "ctl", "reboot", "vee-1"]).is_err());
        assert!(Cli::try_parse_from(["veem", "vee", "ctl", "destroy"]).is_err());
    }

    #[test]
    fn ls_states_are_case_insensitive_and_patch_needs_a_change() {
        let cli = Cli::try_parse_from(["veem", "vee", "ls", "--state", "active"])
            .expect("valid arguments");
        let Command::Vee(VeeCommand::Ls(args)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.state, Some(VmiState::Active));
        assert!(Cli::try_parse_from(["veem", "vee", "ls", "--state", "running"]).is_err());
        assert!(Cli::try_parse_from(["veem", "vee", "patch", "vee-1"]).is_err());
        assert!(
            Cli::try_parse_from(["veem", "vee", "patch", "vee-1", "--memory-mb", "8192"]).is_ok()
        );
    }

    #[test]
    fn batch_rows_follow_the_request_and_mark_failures() {
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let failed = vec![ItemFailure {
            id: "b".into(),
            error: "wrong_state".into(),
            detail: "b is DESTROYED".into(),
        }];
        let rows = batch_rows(&ids, &["c".into(), "a".into()], &failed, "applied");
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.result.as_str(), r.failed))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "applied", false),
                ("b", "wrong_state", true),
                ("c", "applied", false)
            ]
        );
        assert_eq!(rows[1].detail, "b is DESTROYED");
        let silent = batch_rows(&["x".into()], &[], &[], "applied");
        assert!(silent[0].failed, "an id the answer forgot is not a success");
    }

    #[test]
    fn a_missing_token_is_reported_before_any_request() {
        let cli =
            Cli::try_parse_from(["veem", "--token", "", "host", "ls"]).expect("valid arguments");
        let error = connect(&cli.global).expect_err("no token");
        assert_eq!(
            error.to_string(),
            "no token: pass --token or set VEEM_TOKEN"
        );
    }
}
