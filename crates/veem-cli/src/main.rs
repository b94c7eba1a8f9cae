//! `veem`: the one binary of veem. Today it carries the SM-side commands (define, control and
//! inspect VEEs, images and hosts over the VMI); `serve` and `agent` join it.
//!
//! This binary only wires things together: it parses arguments, calls `veem-client` (or, for
//! `serve`, the server crate) and renders answers. It never talks HTTP itself, never decides
//! what the VEEM decides, and never ends in a panic or a `Debug` dump: every failure is one
//! `error:` line (and a hint), exit code 1; usage errors are clap's, exit code 2.

mod node;
mod output;
mod setup;
mod sm;
mod store;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use veem_client::ClientError;

use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "veem",
    version,
    about = "veem, a VEE manager implementing the RESERVOIR VMI",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands, before or after its name.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Where veem listens
    #[arg(
        long,
        env = "VEEM_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
    /// Bearer token naming the principal (an SM, a peer VEEM or an operator)
    #[arg(long, env = "VEEM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A CA (PEM) that verifies an https:// veem, besides the system's roots
    #[arg(long, env = "VEEM_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// `table` for people, `json` (the API's own documents) for scripts
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Define, control and inspect VEEs
    #[command(subcommand)]
    Vee(sm::VeeCommand),
    /// Upload, list and remove disk images
    #[command(subcommand)]
    Image(sm::ImageCommand),
    /// Inspect, disable and enable physical hosts (admin)
    #[command(subcommand)]
    Host(sm::HostCommand),
    /// Create, list and delete networks (virtual LANs)
    #[command(subcommand)]
    Net(sm::NetCommand),
    /// Register, list and remove the remote sites this VEEM may place VEEs at
    #[command(subcommand)]
    Site(sm::SiteCommand),
    /// Show the front-ends sharing the site's database and which one leads (admin)
    Cluster,
    /// Follow the monitoring events you see (STATE, HARDWARE, PROBE, AGENT)
    Events(sm::EventsArgs),
    /// Run the VEEM: the VMI over HTTP, placement, and the config's in-process hosts
    Serve(node::ServeArgs),
    /// Run a host agent as its own process, connected to a VEEM
    Agent(node::AgentArgs),
    /// Build veem's test guest
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Certificates of a site: its CA, the server's and the host agents'
    #[command(subcommand)]
    Tls(setup::TlsCommand),
    /// Principals' tokens
    #[command(subcommand)]
    Token(setup::TokenCommand),
    /// A site's books, offline: copy them from SQLite into PostgreSQL
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Print a completion script for a shell, e.g. `source <(veem completions bash)`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Build the test guest from Debian packages as one bootable qcow2 disk
    Build(GuestBuildArgs),
}

#[derive(Debug, Args)]
pub struct GuestBuildArgs {
    /// The qcow2 file to write
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// The disk's size in MiB
    #[arg(long, default_value_t = veem_guest::DEFAULT_SIZE_MB)]
    pub size_mb: u32,
    /// Keep the intermediate files here (default: a temporary directory)
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Where downloaded packages are kept (default: $XDG_CACHE_HOME/veem/guest)
    #[arg(long)]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Also write the kernel and initramfs into this directory (`vmlinuz`, `initrd.img`), for
    /// a descriptor's direct kernel boot
    #[arg(long)]
    pub boot_files: Option<std::path::PathBuf>,
    /// Also write the guest as a bootable installer ISO (isolinux, El Torito) at this path,
    /// for a VEE that boots from its CD-ROM
    #[arg(long)]
    pub iso: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report(&anyhow::Error::new(error).context("cannot start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Vee(command) => sm::run_vee(&cli.global, command).await,
        Command::Image(command) => sm::run_image(&cli.global, command).await,
        Command::Host(command) => sm::run_host(&cli.global, command).await,
        Command::Net(command) => sm::run_net(&cli.global, command).await,
        Command::Site(command) => sm::run_site(&cli.global, command).await,
        Command::Events(args) => sm::run_events(&cli.global, args).await,
        Command::Cluster => sm::run_cluster(&cli.global).await,
        Command::Serve(args) => node::serve(args).await,
        Command::Agent(args) => node::agent(args).await,
        Command::Guest(GuestCommand::Build(args)) => build_guest(args).await,
        Command::Tls(command) => setup::run_tls(cli.global.output, command),
        Command::Token(command) => setup::run_token(cli.global.output, command),
        Command::Store(command) => store::run_store(cli.global.output, command).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "veem", &mut script);
            output::emit(&String::from_utf8_lossy(&script))
        }
    }
}

async fn build_guest(args: GuestBuildArgs) -> anyhow::Result<()> {
    let options = veem_guest::BuildOptions {
        out: args.out,
        work_dir: args.work_dir,
        size_mb: args.size_mb,
        cache_dir: args.cache_dir,
        boot_files_dir: args.boot_files,
        iso: args.iso,
    };
    let image = tokio::task::spawn_blocking(move || veem_guest::build(&options))
        .await
        .map_err(|error| anyhow::anyhow!("the guest build stopped: {error}"))?
        .map_err(|error| anyhow::Error::new(error).context("cannot build the test guest"))?;
    println!(
        "{} (kernel {}, {} bytes)",
        image.path.display(),
        image.kernel_version,
        image.size_bytes
    );
    if let Some((kernel, initrd)) = &image.boot_files {
        println!(
            "{} and {} (kernel command line: {})",
            kernel.display(),
            initrd.display(),
            veem_guest::KERNEL_COMMAND_LINE
        );
    }
    if let Some(iso) = &image.iso {
        println!("{} (installer ISO)", iso.display());
    }
    Ok(())
}

/// Prints `error: <message>` and, when one helps, a `hint:` line on standard error.
fn report(error: &anyhow::Error) {
    if error.is::<output::AlreadyReported>() {
        return;
    }
    let (message, hint) = describe(error);
    let mut stderr = std::io::stderr().lock();
    // Nothing is left to tell the user with if standard error itself is gone.
    let _ = writeln!(stderr, "error: {message}");
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

/// The chain of contexts down to the first `ClientError`, whose message is already complete
/// (its sources would only repeat it in reqwest's words).
fn describe(error: &anyhow::Error) -> (String, Option<&'static str>) {
    let mut parts = Vec::new();
    let mut hint = None;
    for cause in error.chain() {
        parts.push(cause.to_string());
        if let Some(client_error) = cause.downcast_ref::<ClientError>() {
            hint = hint_for(client_error);
            break;
        }
    }
    (parts.join(": "), hint)
}

fn hint_for(error: &ClientError) -> Option<&'static str> {
    match error {
        ClientError::Transport(_) if error.to_string().contains("certificate") => Some(
            "veem's certificate is not trusted here: pass the CA that signed it with --ca / VEEM_CA",
        ),
        ClientError::Transport(_) => Some("is veem running there? check --url / VEEM_URL"),
        ClientError::InvalidUrl(_) => {
            Some("--url / VEEM_URL takes the address veem listens on, e.g. http://127.0.0.1:7070")
        }
        ClientError::InvalidToken => Some("check --token / VEEM_TOKEN"),
        ClientError::Api(_) | ClientError::Http { .. } => match error.status() {
            Some(401) => Some("check --token / VEEM_TOKEN"),
            Some(403) => Some(
                "a VEE is visible only to the principal that initialized it; \
                 host commands and migration need an admin token",
            ),
            Some(404) if error.code().is_none() => {
                Some("no such route: does --url point at veem, and is it as new as this client?")
            }
            _ => None,
        },
        ClientError::Tls(_) => Some("--ca / VEEM_CA takes a PEM file of CA certificates"),
        ClientError::Decode(_) | ClientError::Io(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use veem_api::Problem;

    fn problem(status: u16, code: &str) -> ClientError {
        ClientError::Api(Problem {
            type_: "about:blank".into(),
            title: "Unauthorized".into(),
            status,
            detail: "unknown token".into(),
            code: code.into(),
        })
    }

    #[test]
    fn a_401_hints_at_the_token() {
        let error = anyhow::Error::new(problem(401, "unauthenticated"));
        let (message, hint) = describe(&error);
        assert_eq!(message, "Unauthorized (unauthenticated): unknown token");
        assert_eq!(hint, Some("check --token / VEEM_TOKEN"));
    }

    #[test]
    fn contexts_come_first_and_client_sources_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = Err::<(), _>(ClientError::Io(io))
            .context("cannot upload disk.img")
            .expect_err("an error");
        let (message, hint) = describe(&error);
        assert_eq!(message, "cannot upload disk.img: no such file");
        assert_eq!(hint, None);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "veem",
            "vee",
            "ls",
            "-o",
            "json",
            "--url",
            "http://h:1",
            "--token",
            "t",
        ])
        .expect("valid arguments");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.url, "http://h:1");
        assert_eq!(cli.global.token.as_deref(), Some("t"));
        let cli = Cli::try_parse_from(["veem", "--output", "json", "host", "ls"])
            .expect("valid arguments");
        assert_eq!(cli.global.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["veem", "vee", "ls", "--ca", "/etc/veem/ca.pem"])
            .expect("valid arguments");
        assert_eq!(
            cli.global.ca.as_deref(),
            Some(std::path::Path::new("/etc/veem/ca.pem"))
        );
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
