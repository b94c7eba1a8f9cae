//! An operator's setup, done once per site: `veem tls init` (the site's CA, the server's and
//! the agents' certificates) and `veem token new` (a principal's token and the hash the config
//! keeps of it).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::{emit, pairs, to_json, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a site's CA, the server's certificate and host agents' client certificates
    Init(TlsInitArgs),
}

#[derive(Debug, Args)]
pub struct TlsInitArgs {
    /// The directory to write into (made if missing; never overwritten)
    pub dir: PathBuf,
    /// A DNS name of the server, besides localhost (repeat for more)
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// An address of the server, besides 127.0.0.1 and ::1 (repeat for more)
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// A host agent that gets a client certificate, agent-<NAME>.pem (repeat for more)
    #[arg(long = "agent")]
    pub agents: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token and the token_sha256 a [[principal]] may hold instead
    New,
}

#[derive(Serialize)]
struct SiteOutput {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    agents: Vec<AgentOutput>,
    config: String,
}

#[derive(Serialize)]
struct AgentOutput {
    name: String,
    cert: PathBuf,
    key: PathBuf,
    flags: String,
}

pub fn run_tls(format: OutputFormat, command: TlsCommand) -> anyhow::Result<()> {
    let TlsCommand::Init(args) = command;
    let files = veem_tls::init_site(
        &args.dir,
        &veem_tls::SiteSpec {
            names: args.names,
            ips: args.ips,
            agents: args.agents,
        },
    )
    .with_context(|| {
        format!(
            "cannot make the site's certificates in {}",
            args.dir.display()
        )
    })?;
    // Absolute, so the lines pasted into a config work wherever veem is started.
    let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
    let (ca, cert, key) = (
        absolute(&files.ca_cert),
        absolute(&files.server_cert),
        absolute(&files.server_key),
    );
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string()
    );
    let agents: Vec<AgentOutput> = files
        .agents
        .iter()
        .map(|(name, cert, key)| {
            let (cert, key) = (absolute(cert), absolute(key));
            AgentOutput {
                flags: format!(
                    "--name {name} --ca {} --cert {} --key {}",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                name: name.clone(),
                cert,
                key,
            }
        })
        .collect();
    let output = SiteOutput {
        ca_cert: ca.clone(),
        ca_key: absolute(&files.ca_key),
        server_cert: cert,
        server_key: key,
        agents,
        config,
    };
    match format {
        OutputFormat::Json => emit(&to_json(&output)?),
        OutputFormat::Table => {
            let mut text = format!(
                "wrote {} (keep ca.key offline: it signs new certificates)\n\n\
                 paste into veem serve's config:\n\n{}",
                args.dir.display(),
                output.config
            );
            for agent in &output.agents {
                text.push_str(&format!(
                    "\nagent {}: veem agent --server https://<this server>:<port> {}\n",
                    agent.name, agent.flags
                ));
            }
            text.push_str(&format!(
                "\nclients: --ca {} (or VEEM_CA)\n",
                output.ca_cert.display()
            ));
            emit(&text)
        }
    }
}

#[derive(Serialize)]
struct TokenOutput {
    token: String,
    token_sha256: String,
}

pub fn run_token(format: OutputFormat, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::New = command;
    let (token, token_sha256) = veem_server::token::new_token();
    let output = TokenOutput {
        token,
        token_sha256,
    };
    match format {
        OutputFormat::Json => emit(&to_json(&output)?),
        OutputFormat::Table => emit(&format!(
            "{}\nin the config, instead of token = \"...\":\n  token_sha256 = \"{}\"\n",
            pairs(&[
                ("token", output.token.clone()),
                ("token_sha256", output.token_sha256.clone()),
            ]),
            output.token_sha256
        )),
    }
}
