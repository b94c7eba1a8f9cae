//! `veem tls init`: the certificates a small site needs, so an operator never hand-runs
//! openssl. A CA of the site's own signs the server's certificate (for HTTPS and `wss://`) and
//! one client certificate per host agent (mTLS); private keys are written readable by their
//! owner only.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// The CA outlives the certificates it signs, which an operator renews with a new site.
const CA_VALIDITY_DAYS: i64 = 10 * 365;
const LEAF_VALIDITY_DAYS: i64 = 2 * 365;

/// What `init_site` makes certificates for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteSpec {
    /// DNS names of the server, besides `localhost`.
    pub names: Vec<String>,
    /// Addresses of the server, besides 127.0.0.1 and ::1.
    pub ips: Vec<IpAddr>,
    /// Host agents that get a client certificate (`agent-<name>.pem`).
    pub agents: Vec<String>,
}

/// The files `init_site` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Per agent: (name, certificate, key).
    pub agents: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes into `dir` (made if missing) `ca.pem`/`ca.key`, `server.pem`/`server.key` (names:
/// localhost, 127.0.0.1, ::1 and those of `spec`) and `agent-<name>.pem`/`.key` per agent.
/// Refuses a directory that already holds a site CA, and never overwrites a file.
pub fn init_site(dir: &Path, spec: &SiteSpec) -> Result<SiteFiles, TlsError> {
    for name in &spec.agents {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(TlsError::BadAgentName { name: name.clone() });
        }
    }
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(TlsError::SiteExists { path: ca_key_path });
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    // A day back, so a host whose clock lags a little accepts the certificates at once.
    let not_before = now - Duration::days(1);
    let generate = |e| TlsError::Generate(e);

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name(&format!(
        "veem site CA {}",
        spec.names.first().map_or("localhost", String::as_str)
    ));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(generate)?)
        .map_err(generate)?;

    let leaf = |common: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(common);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(generate)?;
        let certificate = params.signed_by(&key, &ca).map_err(generate)?;
        Ok::<_, TlsError>((certificate.pem(), key.serialize_pem()))
    };

    let mut sans = vec![SanType::DnsName("localhost".try_into().map_err(generate)?)];
    for name in &spec.names {
        let san = SanType::DnsName(name.as_str().try_into().map_err(generate)?);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let loopback = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    for ip in loopback.iter().chain(&spec.ips) {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let server_name = spec.names.first().map_or("localhost", String::as_str);
    let (server_pem, server_key) = leaf(server_name, sans, ExtendedKeyUsagePurpose::ServerAuth)?;

    let files = SiteFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: ca_key_path,
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        agents: spec
            .agents
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    dir.join(format!("agent-{name}.pem")),
                    dir.join(format!("agent-{name}.key")),
                )
            })
            .collect(),
    };
    write_new(&files.ca_key, ca.key().serialize_pem().as_bytes(), true)?;
    write_new(&files.ca_cert, ca.pem().as_bytes(), false)?;
    write_new(&files.server_key, server_key.as_bytes(), true)?;
    write_new(&files.server_cert, server_pem.as_bytes(), false)?;
    for (name, cert, key) in &files.agents {
        let (agent_pem, agent_key) = leaf(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
        write_new(key, agent_key.as_bytes(), true)?;
        write_new(cert, agent_pem.as_bytes(), false)?;
    }
    Ok(files)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Creates `path` (never replacing a file); a secret is readable by its owner only from the
/// moment it exists.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
}
