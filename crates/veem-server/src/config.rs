//! The server's configuration file (TOML). Outside checks depend on the documented fields
//! (`listen`, `data_dir`, `placement`, `[[principal]]`, `[[host]]`); others are veem's own.
//! `[[host]]` (hosts run in the VEEM's process, with their drivers' settings) is read by the
//! binary (`veem-node`) from the same file: the server knows no drivers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use veem_model::Principal;
use veem_placement::Policy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub placement: Policy,
    /// This site's name, shown as `site` of every VEE.
    #[serde(default = "default_site")]
    pub site: String,
    /// Where peer sites reach this VEEM's VMI (the pushes of the VEEs it runs there come back
    /// to it); default: `listen`, over https when `[tls]` has a certificate.
    #[serde(default)]
    pub url: Option<String>,
    /// How long SHUTDOWN waits for the guest before forcing it off.
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// How long the VEEM waits for a host agent to answer one request.
    #[serde(default = "default_agent_timeout_ms")]
    pub agent_timeout_ms: u64,
    /// How often host health is checked and the placement queue retried.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// A host whose agent has not been heard for this long is down and its VEEs are moved to
    /// other hosts (per their `restart_attempts`).
    #[serde(default = "default_host_dead_after_ms")]
    pub host_dead_after_ms: u64,
    /// How often the VEEM produces HARDWARE monitoring events of its ACTIVE VEEs.
    #[serde(default = "default_monitoring_interval_ms")]
    pub monitoring_interval_ms: u64,
    /// `text` (default) or `json` structured logs on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Directories under which admins may name `file:` sources (disks, kernels, initrds);
    /// none by default. `data_dir` and everything under it are refused whatever is listed.
    #[serde(default)]
    pub file_sources: Vec<PathBuf>,
    /// The largest `http(s)://` source an in-process host fetches, in bytes (default: the
    /// hosts' own, 20 GiB).
    #[serde(default)]
    pub fetch_max_bytes: Option<u64>,
    /// Networks that are not public but that hosts may fetch `http(s)://` sources from
    /// nevertheless (the site's own image servers), e.g. `["10.20.0.0/16"]`; none by default:
    /// loopback, private and link-local addresses are refused.
    #[serde(default)]
    pub fetch_allow: Vec<ipnet::IpNet>,
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalConfig>,
    /// `[[host]]`: read by the binary, which makes the hosts (see the module's comment).
    #[serde(default, rename = "host")]
    _hosts: serde::de::IgnoredAny,
    /// HTTPS on `listen`, client certificates of host agents, and extra roots for outgoing
    /// https; absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How this site's LANs join other sites' (the paper's VAN); absent: they do not.
    #[serde(default)]
    pub federation: FederationConfig,
    /// This front-end's name among those sharing one database (`GET /cluster`); default: the
    /// site's name.
    #[serde(default)]
    pub name: Option<String>,
    /// How the other front-ends and host agents reach this one; default: `url`, else `listen`.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// Where the books are kept: SQLite in `data_dir` (default) or a PostgreSQL database that
    /// several front-ends share.
    #[serde(default)]
    pub store: StoreConfig,
    /// How long the leader's lease lasts unrenewed (several front-ends): a dead leader is
    /// replaced within about this long. It renews every quarter of it.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// The bearer token `GET /metrics` asks for; absent: Prometheus scrapes it without one.
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// `[occi]`: OCCI 1.2 on a listener of its own; absent: none.
    #[serde(default)]
    pub occi: Option<OcciConfig>,
}

/// `[occi]`: the OCCI 1.2 interface (same principals and tokens as the VMI; HTTPS when `[tls]`
/// has a certificate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcciConfig {
    /// Where OCCI is served, e.g. `"127.0.0.1:7072"`.
    pub listen: SocketAddr,
}

/// `[store]`: absent, or without `url`, the books are SQLite in `data_dir`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgresql://user@host:port/database`: several `veem serve` may share it, one leading.
    #[serde(default)]
    pub url: Option<String>,
}

/// `[federation]`: a private LAN of this VEEM extends to the sites where its VEEs run, its
/// hosts joined with theirs by VXLAN. The VXLAN underlay is neither encrypted nor
/// authenticated: list only endpoints and principals on a network the sites trust.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// This site's hosts' VXLAN endpoints (`"address:port"`, as other sites reach them: each
    /// machine's `[host.qemu.vxlan]` `local` and `port`). Empty: no LAN spans this site and
    /// another. Unset: `veem serve` derives them from its `[[host]]`s' `[host.qemu.vxlan]`
    /// when those agree (see veem-node), else none.
    #[serde(default)]
    pub lan_endpoints: Option<Vec<SocketAddr>>,
    /// The principals (other sites' VEEMs) that may join this site's hosts to their LANs
    /// (`POST /networks` with `extends`). Empty: none may.
    #[serde(default)]
    pub lan_extension: Vec<Principal>,
}

/// `[tls]`: with `cert` and `key`, veem serves HTTPS only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// Extra trust anchors for outgoing https (callbacks, and hosts fetching `https://`
    /// sources), besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The CA whose client certificates authenticate host agents over `wss://` (default:
    /// `ca_file`).
    pub client_ca: Option<PathBuf>,
}

impl Config {
    /// This front-end's name: `name`, else the site's.
    pub fn front_end_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.site)
    }

    /// Where the other front-ends and agents reach this one: `advertise_url`, else
    /// [`Config::public_url`].
    pub fn advertise_url(&self) -> String {
        match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => self.public_url(),
        }
    }

    /// Where peer sites reach this VEEM: `url`, else `listen`.
    pub fn public_url(&self) -> String {
        match &self.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let https = self.tls.as_ref().is_some_and(|t| t.cert.is_some());
                format!("{}://{}", if https { "https" } else { "http" }, self.listen)
            }
        }
    }
}

impl TlsConfig {
    /// The CA of agents' client certificates, if any.
    pub fn client_ca(&self) -> Option<&Path> {
        self.client_ca.as_deref().or(self.ca_file.as_deref())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: Principal,
    /// The bearer token, in clear; or else `token_sha256`.
    #[serde(default)]
    pub token: Option<String>,
    /// The SHA-256 of the bearer token (hex), so the config need not hold the token itself
    /// (`veem token new` prints both).
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// Whether the migration between sites is open to it (`POST /vees/incoming`, `POST
    /// /vees/{id}/send`): hosts then listen for, and connect out to, addresses it names. For
    /// the principal a peer site's VEEM presents; nobody else needs it.
    #[serde(default)]
    pub migrate_vees: bool,
}

impl PrincipalConfig {
    /// The SHA-256 of this principal's token, from either form.
    pub fn token_digest(&self) -> Result<[u8; 32], String> {
        match (&self.token, &self.token_sha256) {
            (Some(token), None) => {
                if token.len() < 4 {
                    return Err(format!(
                        "principal {}: token must be at least 4 characters",
                        self.name
                    ));
                }
                Ok(crate::token::token_sha256(token))
            }
            (None, Some(hex)) => crate::token::parse_sha256_hex(hex).ok_or_else(|| {
                format!(
                    "principal {}: token_sha256 must be 64 hexadecimal digits",
                    self.name
                )
            }),
            _ => Err(format!(
                "principal {}: give exactly one of token and token_sha256",
                self.name
            )),
        }
    }
}

fn default_site() -> String {
    "local".to_owned()
}
fn default_shutdown_deadline_ms() -> u64 {
    30_000
}
fn default_agent_timeout_ms() -> u64 {
    120_000
}
fn default_health_interval_ms() -> u64 {
    1_000
}
fn default_host_dead_after_ms() -> u64 {
    10_000
}
/// Below this, an agent's lease (half of it) leaves too little room for its heartbeats.
const MIN_HOST_DEAD_AFTER_MS: u64 = 1_000;
/// A dead leader is replaced within about 4 s, and one renewal may fail without a change.
fn default_lease_ttl_ms() -> u64 {
    4_000
}
/// Below this, renewals (every quarter) come too often for a database's round trips.
const MIN_LEASE_TTL_MS: u64 = 400;
fn default_monitoring_interval_ms() -> u64 {
    10_000
}

impl Config {
    /// The server's part of a config file's text (the binary reads the file, see `veem-node`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        for p in &self.principals {
            let digest = p.token_digest()?;
            if !names.insert(&p.name) {
                return Err(format!("principal {} is listed twice", p.name));
            }
            if !tokens.insert(digest) {
                return Err(format!(
                    "principal {}: its token is another principal's",
                    p.name
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err("[tls]: cert and key go together".to_owned());
            }
        }
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS {
            return Err(format!("lease_ttl_ms must be at least {MIN_LEASE_TTL_MS}"));
        }
        if let Some(url) = &self.store.url {
            if !url.starts_with("postgresql://") && !url.starts_with("postgres://") {
                return Err(format!(
                    "[store] url {url:?} must be a postgresql:// URL (leave it out for SQLite in data_dir)"
                ));
            }
        }
        if self.host_dead_after_ms < MIN_HOST_DEAD_AFTER_MS {
            return Err(format!(
                "host_dead_after_ms must be at least {MIN_HOST_DEAD_AFTER_MS}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_config_parses() {
        let config = Config::parse(
            r#"
listen = "127.0.0.1:7070"
data_dir = "/var/lib/veem"
placement = "spread"
[[principal]]
name = "sm-a"
token = "secret"
admin = false
[[host]]
name = "h1"
driver = "sim"
cpus = 8
memory_mb = 16384
"#,
        )
        .expect("valid");
        assert_eq!(config.placement, Policy::Spread);
        assert_eq!(config.principals[0].name.as_str(), "sm-a");
        assert_eq!(config.site, "local");
        assert_eq!(config.host_dead_after_ms, 10_000);
        assert!(config.tls.is_none());
    }

    #[test]
    fn tls_and_hashed_tokens_parse() {
        let config = Config::parse(
            r#"
listen = "0.0.0.0:7443"
data_dir = "/var/lib/veem"
[tls]
cert = "/etc/veem/server.pem"
key = "/etc/veem/server.key"
ca_file = "/etc/veem/ca.pem"
[[principal]]
name = "ops"
token_sha256 = "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B"
admin = true
"#,
        )
        .expect("valid");
        let tls = config.tls.expect("[tls]");
        assert_eq!(tls.client_ca(), Some(Path::new("/etc/veem/ca.pem")));
        assert_eq!(
            config.principals[0].token_digest(),
            Ok(crate::token::token_sha256("secret"))
        );
    }

    #[test]
    fn federation_lans_parse_and_are_off_by_default() {
        let base = "listen = \"127.0.0.1:7070\"\ndata_dir = \"/var/lib/veem\"\n";
        let off = Config::parse(base).expect("parses");
        assert!(off.federation.lan_endpoints.is_none() && off.federation.lan_extension.is_empty());
        let on = Config::parse(&format!(
            "{base}[federation]\nlan_endpoints = [\"192.0.2.10:4789\"]\nlan_extension = [\"west\"]\n"
        ))
        .expect("parses");
        assert_eq!(
            on.federation.lan_endpoints,
            Some(vec!["192.0.2.10:4789"
                .parse::<SocketAddr>()
                .expect("an address")])
        );
        assert_eq!(on.federation.lan_extension[0].as_str(), "west");
        for bad in [
            "[federation]\nlan_endpoints = [\"192.0.2.10\"]\n",
            "[federation]\nlan_extension = [\"not a name\"]\n",
            "[federation]\nlan_peers = []\n",
        ] {
            assert!(Config::parse(&format!("{base}{bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let base = "listen = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n";
        let cases = [
            ("[[principal]]\nname=\"a\"\ntoken=\"secret\"\n[[principal]]\nname=\"a\"\ntoken=\"other1\"\n", "listed twice"),
            ("[[principal]]\nname=\"a\"\ntoken=\"secret\"\n[[principal]]\nname=\"b\"\ntoken=\"secret\"\n", "another principal"),
            ("colour = \"red\"\n", "colour"),
            ("[[principal]]\nname=\"a\"\n", "exactly one of token and token_sha256"),
            ("[[principal]]\nname=\"a\"\ntoken=\"secret\"\ntoken_sha256=\"00\"\n", "exactly one"),
            ("[[principal]]\nname=\"sm-x\"\ntoken_sha256=\"xyz\"\n", "principal sm-x: token_sha256 must be 64 hexadecimal"),
            ("[[principal]]\nname=\"a\"\ntoken=\"secret\"\n[[principal]]\nname=\"b\"\ntoken_sha256=\"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"\n", "another principal"),
            ("[tls]\ncert=\"/x.pem\"\n", "cert and key go together"),
            ("host_dead_after_ms = 10\n", "host_dead_after_ms"),
        ];
        for (extra, needle) in cases {
            let err = Config::parse(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
