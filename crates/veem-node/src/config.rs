//! The `[[host]]`s of `veem serve`'s config file: hosts run in the VEEM's process, each with
//! its driver's settings. The rest of the file is the server's ([`veem_server::Config`]), which
//! leaves `[[host]]` to this crate; both read the same TOML text, each its own part.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use veem_agent::sim::SimConfig;
use veem_agent::QemuConfig;
use veem_model::HostId;

/// `veem serve`'s config file: the server's settings and the hosts in its process.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub server: veem_server::Config,
    pub hosts: Vec<HostConfig>,
}

/// A `[[host]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub name: HostId,
    pub driver: DriverKind,
    pub cpus: u32,
    pub memory_mb: u64,
    /// Latencies and fault injection of the simulated driver.
    #[serde(default)]
    pub sim: SimConfig,
    /// The qemu driver's settings (binary, accelerator, migration limits...).
    #[serde(default)]
    pub qemu: QemuConfig,
    /// Where this host keeps its VEEs' directories as its own storage, which no other host
    /// sees (relative to `data_dir`); by default they are the site's shared `data_dir/vees`.
    /// A VEE moves live to or from such a host with its disks copied.
    #[serde(default)]
    pub vees_dir: Option<PathBuf>,
}

impl HostConfig {
    /// The driver this host runs, with its settings.
    pub fn settings(&self) -> DriverSettings {
        match self.driver {
            DriverKind::Sim => DriverSettings::Sim(self.sim.clone()),
            DriverKind::Qemu => DriverSettings::Qemu(self.qemu.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The simulated hypervisor, for scale and fault tests.
    Sim,
    /// QEMU over QMP: KVM where the CPU has it, TCG otherwise.
    Qemu,
}

/// Which driver a host runs, with its settings.
#[derive(Debug, Clone)]
pub enum DriverSettings {
    Sim(SimConfig),
    Qemu(QemuConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The part of the file this crate reads; every other key is the server's.
#[derive(Deserialize)]
struct HostSections {
    #[serde(default, rename = "host")]
    hosts: Vec<HostConfig>,
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut server = veem_server::Config::parse(text)?;
        let HostSections { hosts } = toml::from_str(text).map_err(|e| e.to_string())?;
        check_hosts(&hosts)?;
        let federation = &mut server.federation;
        if federation.lan_endpoints.is_none() {
            federation.lan_endpoints = Some(lan_endpoints_of(&hosts));
        }
        Ok(Self { server, hosts })
    }
}

/// The site's VXLAN endpoints as its `[[host]]`s' `[host.qemu.vxlan]` name them: this machine's
/// `local` and its `peers` (the site's other machines), at `port`, when every host with such a
/// table names the same ones, without a multicast `group` (whose machines are not named), and
/// as addresses. Otherwise none: the endpoints other sites reach are then the operator's to
/// say (`[federation] lan_endpoints`), as they are whenever the underlay addresses are not
/// what other sites reach (NAT).
fn lan_endpoints_of(hosts: &[HostConfig]) -> Vec<std::net::SocketAddr> {
    let tables: Vec<_> = hosts.iter().filter_map(|h| h.qemu.vxlan.as_ref()).collect();
    let Some(first) = tables.first() else {
        return Vec::new();
    };
    let agree = tables
        .iter()
        .all(|t| (&t.local, &t.peers, t.port) == (&first.local, &first.peers, first.port));
    if !agree || first.group.is_some() {
        return Vec::new();
    }
    let addresses: Result<Vec<std::net::IpAddr>, _> = std::iter::once(&first.local)
        .chain(&first.peers)
        .map(|a| a.parse())
        .collect();
    let Ok(mut addresses) = addresses else {
        return Vec::new();
    };
    addresses.dedup();
    if addresses
        .iter()
        .any(|a| a.is_unspecified() || a.is_multicast())
    {
        return Vec::new();
    }
    addresses
        .into_iter()
        .map(|a| std::net::SocketAddr::new(a, first.port))
        .collect()
}

fn check_hosts(hosts: &[HostConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for h in hosts {
        if !names.insert(&h.name) {
            return Err(format!("host {} is listed twice", h.name));
        }
        if h.cpus == 0 || h.memory_mb == 0 {
            return Err(format!(
                "host {}: cpus and memory_mb must be positive",
                h.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lan_endpoints_default_to_the_hosts_vxlan_when_they_agree() {
        let base = "listen = \"127.0.0.1:7070\"\ndata_dir = \"/var/lib/veem\"\n";
        let host = |name: &str, vxlan: &str| {
            format!("[[host]]\nname = \"{name}\"\ndriver = \"qemu\"\ncpus = 4\nmemory_mb = 4096\n{vxlan}\n")
        };
        let table =
            "qemu = { vxlan = { local = \"192.0.2.1\", peers = [\"192.0.2.2\"], port = 4790 } }";
        let endpoints = |text: String| {
            SiteConfig::parse(&text)
                .expect("valid")
                .server
                .federation
                .lan_endpoints
                .expect("set or derived")
        };
        let at = |a: &str| a.parse::<std::net::SocketAddr>().expect("an address");
        assert_eq!(
            endpoints(format!("{base}{}{}", host("h1", table), host("h2", table))),
            [at("192.0.2.1:4790"), at("192.0.2.2:4790")],
            "this machine and its peers, at the port"
        );
        let other = "qemu = { vxlan = { local = \"192.0.2.9\", port = 4790 } }";
        let group = "qemu = { vxlan = { local = \"192.0.2.1\", group = \"239.1.1.1\" } }";
        let name = "qemu = { vxlan = { local = \"underlay.example\" } }";
        for (text, why) in [
            (
                format!("{base}{}{}", host("h1", table), host("h2", other)),
                "they disagree",
            ),
            (
                format!("{base}{}", host("h1", group)),
                "a group names no machines",
            ),
            (format!("{base}{}", host("h1", name)), "not an address"),
            (format!("{base}{}", host("h1", "")), "no vxlan"),
        ] {
            assert!(endpoints(text).is_empty(), "{why}");
        }
        let said = format!(
            "{base}[federation]\nlan_endpoints = [\"198.51.100.1:4789\"]\n{}",
            host("h1", table)
        );
        assert_eq!(
            endpoints(said),
            [at("198.51.100.1:4789")],
            "the operator's word wins"
        );
        let none = format!(
            "{base}[federation]\nlan_endpoints = []\n{}",
            host("h1", table)
        );
        assert!(endpoints(none).is_empty(), "none, as said");
    }

    /// The README's examples, `[[host]]`s with their drivers' settings included.
    #[test]
    fn the_example_configs_parse() {
        let qemu = SiteConfig::parse(include_str!("../../../examples/veem.toml")).expect("valid");
        assert_eq!(qemu.server.principals.len(), 3);
        let names: Vec<&str> = qemu.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
        assert!(qemu
            .hosts
            .iter()
            .all(|h| matches!(h.settings(), DriverSettings::Qemu(_))));
        assert_eq!((qemu.hosts[0].cpus, qemu.hosts[0].memory_mb), (8, 16384));

        let sim =
            SiteConfig::parse(include_str!("../../../examples/veem-sim.toml")).expect("valid");
        let DriverSettings::Sim(slow) = sim.hosts[2].settings() else {
            panic!("h3 runs the sim driver");
        };
        assert_eq!(slow.latency_ms.deploy, 200);
        let DriverSettings::Sim(plain) = sim.hosts[0].settings() else {
            panic!("h1 runs the sim driver");
        };
        assert_eq!(
            plain.latency_ms.deploy,
            SimConfig::default().latency_ms.deploy
        );
    }

    #[test]
    fn qemu_settings_are_the_qemu_drivers() {
        let site = SiteConfig::parse(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n\
             [[host]]\nname = \"q\"\ndriver = \"qemu\"\ncpus = 4\nmemory_mb = 8192\n\
             qemu = { accel = \"tcg\" }\n",
        )
        .expect("valid");
        assert!(matches!(
            site.hosts[0].settings(),
            DriverSettings::Qemu(QemuConfig {
                accel: veem_agent::qemu::AccelChoice::Tcg,
                ..
            })
        ));
    }

    #[test]
    fn a_host_may_keep_its_vees_directories_as_its_own() {
        let site = SiteConfig::parse(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n\
             [[host]]\nname = \"a\"\ndriver = \"sim\"\ncpus = 1\nmemory_mb = 1\n\
             vees_dir = \"own/a\"\n\
             [[host]]\nname = \"b\"\ndriver = \"sim\"\ncpus = 1\nmemory_mb = 1\n",
        )
        .expect("valid");
        assert_eq!(site.hosts[0].vees_dir, Some(PathBuf::from("own/a")));
        assert_eq!(
            site.hosts[1].vees_dir, None,
            "the shared data_dir/vees by default"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let base = "listen = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n";
        let host = |extra: &str| {
            format!("[[host]]\nname=\"h\"\ndriver=\"sim\"\ncpus=1\nmemory_mb=1\n{extra}")
        };
        let cases = [
            (
                "[[host]]\nname=\"h\"\ndriver=\"vmware\"\ncpus=1\nmemory_mb=1\n".to_owned(),
                "driver",
            ),
            (
                format!("{}{}", host(""), host("")),
                "host h is listed twice",
            ),
            (
                "[[host]]\nname=\"h\"\ndriver=\"sim\"\ncpus=0\nmemory_mb=1\n".to_owned(),
                "host h: cpus and memory_mb must be positive",
            ),
            (host("colour = \"red\"\n"), "colour"),
            (host("sim = { latency_ms = { nap = 1 } }\n"), "nap"),
            (
                "[[host]]\nname=\"../h\"\ndriver=\"sim\"\ncpus=1\nmemory_mb=1\n".to_owned(),
                "name",
            ),
            // The server's part is still checked.
            ("colour = \"red\"\n".to_owned(), "colour"),
            ("host_dead_after_ms = 10\n".to_owned(), "host_dead_after_ms"),
        ];
        for (extra, needle) in cases {
            let err = SiteConfig::parse(&format!("{base}{extra}")).expect_err(&extra);
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
