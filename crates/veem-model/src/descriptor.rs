//! The VEE descriptor (Table 2.2 of the paper): everything the VEEM needs to place and run a VEE.
//!
//! The JSON shape of this type is the descriptor of the HTTP contract, so it derives serde
//! directly; `validate` then checks what serde cannot (ranges, ceilings, unique targets) and names
//! the offending field the way the contract asks (`disks[0].size_gb`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ImageName, SiteName};
use crate::network::MAX_NICS;

/// No host we know of has more; larger numbers are typos, not requests.
pub const MAX_CPUS: u32 = 1024;
/// 64 TiB.
pub const MAX_MEMORY_MB: u64 = 64 * 1024 * 1024;
/// A preference longer than this names more sites than a federation has.
pub const MAX_SITES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeeDescriptor {
    #[serde(default)]
    pub name: String,
    /// Virtual CPUs reserved on the host.
    pub cpu: u32,
    /// Ceiling up to which `cpu` can be raised without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<u32>,
    /// Memory reserved on the host.
    pub memory_mb: u64,
    /// Ceiling up to which `memory_mb` can be raised live (use case 2.2.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max_mb: Option<u64>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Hypervisor type (OVF `vssd:VirtualSystemType`), e.g. `kvm` or `qemu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// Semantic-free marks, set by the SM (e.g. `database`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// For each tag here, never share a host with another VEE of the same principal carrying it.
    #[serde(default)]
    pub anti_affinity: Vec<String>,
    /// Passed through to the hypervisor driver untouched.
    #[serde(default)]
    pub raw: String,
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
    /// Prefix of the VEE's monitoring FQNs; the VEE id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqn_prefix: Option<String>,
    /// How many times the VEEM boots the VEE again from its own disks when its instance dies
    /// (the hypervisor process ended or the guest crashed) before recording it FAILED. The
    /// count starts again at each ACTIVATE from DEFINED. A guest that powers itself off is not
    /// a failure: it becomes DEFINED.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_attempts: u32,
    /// Direct kernel boot: the hypervisor loads this kernel (and initrd) itself. Without it
    /// the VEE boots its first disk through the firmware, as a cloud image expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<KernelBoot>,
    /// Where the VEE may run, in order of preference: this site's own name means its local
    /// hosts, another a registered site. Empty: local hosts first, then the registered sites
    /// in order (spill-over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteName>,
}

/// A kernel and initrd for direct kernel boot, each an image or URL like a disk source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: DiskSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<DiskSource>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
}

/// The most restarts a descriptor may ask for: beyond a few, a VEE that keeps dying needs an
/// operator, not another boot.
pub const MAX_RESTART_ATTEMPTS: u32 = 100;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Where the disk's first contents come from; a blank disk of `size_gb` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DiskSource>,
    /// Size of the disk; grows the source image when larger than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<u64>,
    /// Guest device the disk maps to (`vda`, `hda`, ...); assigned in order when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `true`: the VEE gets its own copy-on-write copy; `false`: the source itself is used.
    #[serde(default = "default_clone")]
    pub clone: bool,
    /// What the guest sees: a hard disk (the default) or a read-only CD-ROM drive holding the
    /// source as its medium.
    #[serde(default, skip_serializing_if = "DiskKind::is_disk")]
    pub kind: DiskKind,
}

/// The device a disk of the descriptor becomes in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    /// A writable hard disk.
    #[default]
    Disk,
    /// A read-only CD-ROM drive whose medium is the disk's source (an ISO image, say). It is
    /// never written: it is attached from its source as it is, so it has no size of its own
    /// and is never a copy (`clone` is `false`).
    Cdrom,
}

impl DiskKind {
    pub fn is_disk(&self) -> bool {
        *self == DiskKind::Disk
    }
}

fn default_clone() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The network's name: the caller's own network of that name, else a public one. A name no
    /// such network has leaves the NIC unattached (it gets a MAC address, no IP address).
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A chosen address in the network's range; the VEEM chooses one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
}

/// Contextualization: becomes the `ovf-env.xml` on an extra disk of the VEE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// A whole OVF environment document, given instead of `properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovf_env: Option<String>,
}

impl Context {
    pub fn is_empty(&self) -> bool {
        self.properties.is_empty() && self.ovf_env.is_none()
    }
}

/// Where a disk's contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DiskSource {
    /// `image:<name>`: an image of the caller's image store (or an admin's shared one).
    Image(ImageName),
    /// `http://`, `https://` or `file:` URL, resolved at deployment.
    Url(String),
}

impl DiskSource {
    /// Whether this is a `file:` URL, which names a file of the host itself.
    pub fn is_file_url(&self) -> bool {
        matches!(self, DiskSource::Url(url) if url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:")))
    }

    /// Whether this is an `http://` or `https://` URL, which the host fetches.
    pub fn is_http_url(&self) -> bool {
        matches!(self, DiskSource::Url(_)) && !self.is_file_url()
    }
}

/// The longest path a `file:` source may name (Linux's `PATH_MAX`).
pub const MAX_FILE_PATH_BYTES: usize = 4096;

/// Why a `file:` URL names no local path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileUrlError {
    #[error("is not a file: URL")]
    NotFile,
    #[error("names a file of host {0:?}; only this machine's files (no host, or localhost) can be named")]
    OtherHost(String),
    #[error("has no absolute path")]
    NotAbsolute,
    #[error("has a bad percent-encoding")]
    BadEscape,
    #[error("holds a NUL byte")]
    Nul,
    #[error("is not UTF-8 once decoded")]
    NotUtf8,
    #[error("names a path longer than {MAX_FILE_PATH_BYTES} bytes")]
    TooLong,
    #[error("has a query or fragment")]
    QueryOrFragment,
}

/// The local path a `file:` URL names (RFC 8089): `file:/p`, `file:///p` and
/// `file://localhost/p` all name `/p`; any other host is refused. Percent-escapes are decoded
/// (`%20` is a space, `%2e%2e` is `..`): the caller must resolve the result (`..` and
/// symlinks) before judging it, never compare the text. NUL bytes, a query or fragment and
/// over-long paths are refused.
pub fn file_url_path(url: &str) -> Result<String, FileUrlError> {
    let rest = match url.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("file:") => &url[5..],
        _ => return Err(FileUrlError::NotFile),
    };
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => {
            let split = authority_and_path
                .find('/')
                .unwrap_or(authority_and_path.len());
            let (host, path) = authority_and_path.split_at(split);
            if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                return Err(FileUrlError::OtherHost(host.to_owned()));
            }
            path
        }
        None => rest,
    };
    if path.contains(['?', '#']) {
        return Err(FileUrlError::QueryOrFragment);
    }
    if !path.starts_with('/') {
        return Err(FileUrlError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(FileUrlError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| FileUrlError::BadEscape)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| FileUrlError::BadEscape)?;
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    if decoded.contains(&0) {
        return Err(FileUrlError::Nul);
    }
    if decoded.len() > MAX_FILE_PATH_BYTES {
        return Err(FileUrlError::TooLong);
    }
    String::from_utf8(decoded).map_err(|_| FileUrlError::NotUtf8)
}

impl TryFrom<String> for DiskSource {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("image:") {
            return ImageName::new(name)
                .map(DiskSource::Image)
                .map_err(|e| e.to_string());
        }
        let lower = text.to_ascii_lowercase();
        let has_rest = |scheme: &str| text.len() > scheme.len();
        for scheme in ["http://", "https://"] {
            if lower.starts_with(scheme) && has_rest(scheme) {
                return Ok(DiskSource::Url(text));
            }
        }
        // Every `file:` form (`file:/p`, `file:///p`, `file://host/p`) is kept as written, so
        // the VEEM's file-source rules judge it and name it, rather than a parse error here.
        if lower.starts_with("file:") {
            return Ok(DiskSource::Url(text));
        }
        Err(format!(
            "disk source {text:?} must be 'image:<name>' or an http(s):// or file:// URL"
        ))
    }
}

impl From<DiskSource> for String {
    fn from(source: DiskSource) -> String {
        source.to_string()
    }
}

impl fmt::Display for DiskSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskSource::Image(name) => write!(f, "image:{name}"),
            DiskSource::Url(url) => f.write_str(url),
        }
    }
}

/// A descriptor that breaks a rule; `field` is a JSON path (`disks[1].target`) or an OVF element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DescriptorError {
    pub field: String,
    pub reason: String,
}

impl DescriptorError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a name the descriptor and its neighbours use as a word (a tag, a network's name):
/// 1 to 64 of letters, digits, `.`, `_`, `-` and `:`.
pub fn check_word(field: String, text: &str) -> Result<(), DescriptorError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(DescriptorError::new(
            field,
            format!("{text:?} must be 1 to 64 characters of letters, digits, '.', '_', '-' or ':'"),
        ))
    }
}

impl VeeDescriptor {
    /// A descriptor with just what the contract requires.
    pub fn minimal(cpu: u32, memory_mb: u64) -> Self {
        Self {
            name: String::new(),
            cpu,
            cpu_max: None,
            memory_mb,
            memory_max_mb: None,
            disks: Vec::new(),
            nics: Vec::new(),
            hypervisor: None,
            tags: Vec::new(),
            anti_affinity: Vec::new(),
            raw: String::new(),
            context: Context::default(),
            fqn_prefix: None,
            restart_attempts: 0,
            boot: None,
            sites: Vec::new(),
        }
    }

    /// The CPU ceiling: `cpu_max`, or `cpu` when none was fixed.
    pub fn cpu_ceiling(&self) -> u32 {
        self.cpu_max.unwrap_or(self.cpu)
    }

    /// The memory ceiling: `memory_max_mb`, or `memory_mb` when none was fixed.
    pub fn memory_ceiling_mb(&self) -> u64 {
        self.memory_max_mb.unwrap_or(self.memory_mb)
    }

    /// Checks every rule serde cannot express, and fills in disk and NIC targets left out
    /// (`vda`, `vdb`, ... and `eth0`, `eth1`, ...), so that a stored descriptor is complete.
    pub fn validate(&mut self) -> Result<(), DescriptorError> {
        if self.name.len() > 255 {
            return Err(DescriptorError::new(
                "name",
                "must be at most 255 characters",
            ));
        }
        if self.sites.len() > MAX_SITES {
            return Err(DescriptorError::new(
                "sites",
                format!("at most {MAX_SITES} sites, not {}", self.sites.len()),
            ));
        }
        for (i, site) in self.sites.iter().enumerate() {
            if self.sites[..i].contains(site) {
                return Err(DescriptorError::new(
                    format!("sites[{i}]"),
                    format!("{site} is named twice"),
                ));
            }
        }
        if self.cpu == 0 || self.cpu > MAX_CPUS {
            return Err(DescriptorError::new(
                "cpu",
                format!("must be between 1 and {MAX_CPUS}, not {}", self.cpu),
            ));
        }
        if let Some(max) = self.cpu_max {
            if max < self.cpu || max > MAX_CPUS {
                return Err(DescriptorError::new(
                    "cpu_max",
                    format!(
                        "must be between cpu ({}) and {MAX_CPUS}, not {max}",
                        self.cpu
                    ),
                ));
            }
        }
        if self.memory_mb < 1 || self.memory_mb > MAX_MEMORY_MB {
            return Err(DescriptorError::new(
                "memory_mb",
                format!(
                    "must be between 1 and {MAX_MEMORY_MB}, not {}",
                    self.memory_mb
                ),
            ));
        }
        if let Some(max) = self.memory_max_mb {
            if max < self.memory_mb || max > MAX_MEMORY_MB {
                return Err(DescriptorError::new(
                    "memory_max_mb",
                    format!(
                        "must be between memory_mb ({}) and {MAX_MEMORY_MB}, not {max}",
                        self.memory_mb
                    ),
                ));
            }
        }
        if self.restart_attempts > MAX_RESTART_ATTEMPTS {
            return Err(DescriptorError::new(
                "restart_attempts",
                format!(
                    "must be at most {MAX_RESTART_ATTEMPTS}, not {}",
                    self.restart_attempts
                ),
            ));
        }
        if let Some(boot) = &self.boot {
            // The command line reaches QEMU as one argument; a NUL would cut it short.
            if boot.cmdline.len() > 4096 || boot.cmdline.contains('\0') {
                return Err(DescriptorError::new(
                    "boot.cmdline",
                    "must be at most 4096 characters, without NUL",
                ));
            }
        }
        let mut targets = Vec::new();
        for (i, disk) in self.disks.iter_mut().enumerate() {
            let field = |name: &str| format!("disks[{i}].{name}");
            if disk.source.is_none() && disk.size_gb.is_none() {
                return Err(DescriptorError::new(
                    field("size_gb"),
                    "a disk without a source needs a size",
                ));
            }
            if disk.size_gb == Some(0) {
                return Err(DescriptorError::new(field("size_gb"), "must be at least 1"));
            }
            if disk.source.is_none() && !disk.clone {
                return Err(DescriptorError::new(
                    field("clone"),
                    "a blank disk has no source to share; clone must be true",
                ));
            }
            if disk.kind == DiskKind::Cdrom {
                if disk.source.is_none() {
                    return Err(DescriptorError::new(
                        field("source"),
                        "a cdrom needs a source: its medium",
                    ));
                }
                if disk.size_gb.is_some() {
                    return Err(DescriptorError::new(
                        field("size_gb"),
                        "a cdrom is its medium as it is: it has no size of its own",
                    ));
                }
                // A CD-ROM is never written, so it is never a copy: its medium is attached
                // read-only as it is.
                disk.clone = false;
            } else if !disk.clone && disk.source.as_ref().is_some_and(DiskSource::is_http_url) {
                return Err(DescriptorError::new(
                    field("clone"),
                    "an http(s) source is fetched into the host's cache and cannot be written in place; clone must be true",
                ));
            } else if !disk.clone && matches!(disk.source, Some(DiskSource::Image(_))) {
                // Image bytes are content-addressed and shared by every image (of any owner)
                // of the same bytes, and hosts fetch them by digest: writing them in place
                // would change other images and break their digest.
                return Err(DescriptorError::new(
                    field("clone"),
                    "an image's bytes are shared by digest and never written in place; clone must be true",
                ));
            }
            let target = match &disk.target {
                Some(t) => {
                    // A disk's target names its file in the VEE's directory on the hosts
                    // (`disks/<target>.qcow2`): a word that cannot be a hidden file nor `..`.
                    check_word(field("target"), t)?;
                    if t.starts_with('.') || t.contains(':') {
                        return Err(DescriptorError::new(
                            field("target"),
                            format!("{t:?} must not start with '.' nor hold ':'"),
                        ));
                    }
                    t.clone()
                }
                None => {
                    let letter = (b'a' + u8::try_from(i).unwrap_or(25).min(25)) as char;
                    format!("vd{letter}")
                }
            };
            if targets.contains(&target) {
                return Err(DescriptorError::new(
                    field("target"),
                    format!("{target:?} is used by another disk"),
                ));
            }
            disk.target = Some(target.clone());
            targets.push(target);
        }
        if self.nics.len() > MAX_NICS {
            return Err(DescriptorError::new(
                "nics",
                format!("at most {MAX_NICS} NICs, not {}", self.nics.len()),
            ));
        }
        let mut nic_targets = Vec::new();
        for (i, nic) in self.nics.iter_mut().enumerate() {
            let field = |name: &str| format!("nics[{i}].{name}");
            check_word(field("network"), &nic.network)?;
            let target = match &nic.target {
                Some(t) => {
                    check_word(field("target"), t)?;
                    t.clone()
                }
                None => format!("eth{i}"),
            };
            if nic_targets.contains(&target) {
                return Err(DescriptorError::new(
                    field("target"),
                    format!("{target:?} is used by another NIC"),
                ));
            }
            nic.target = Some(target.clone());
            nic_targets.push(target);
        }
        for (i, tag) in self.tags.iter().enumerate() {
            check_word(format!("tags[{i}]"), tag)?;
        }
        for (i, tag) in self.anti_affinity.iter().enumerate() {
            check_word(format!("anti_affinity[{i}]"), tag)?;
        }
        if let Some(h) = &self.hypervisor {
            check_word("hypervisor".into(), h)?;
        }
        for key in self.context.properties.keys() {
            if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
                return Err(DescriptorError::new(
                    format!("context.properties.{key}"),
                    "a property key must be 1 to 255 printable characters",
                ));
            }
        }
        if !self.context.properties.is_empty() && self.context.ovf_env.is_some() {
            return Err(DescriptorError::new(
                "context",
                "give either properties or ovf_env, not both",
            ));
        }
        if let Some(prefix) = &self.fqn_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 512
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                });
            if !ok {
                return Err(DescriptorError::new(
                    "fqn_prefix",
                    "must be dot-separated words of letters, digits, '_' or '-'",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VeeDescriptor, String> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let mut d: VeeDescriptor = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        d.validate().map_err(|e| e.field)?;
        Ok(d)
    }

    #[test]
    fn the_contract_example_parses() {
        let d = parse(
            r#"{"name": "db", "cpu": 2, "memory_mb": 1024, "memory_max_mb": 8192,
            "disks": [{"source": "image:tiny", "size_gb": 1, "target": "vda", "clone": true}],
            "nics": [{"network": "private", "target": "eth0"}], "hypervisor": "kvm",
            "tags": ["database"], "anti_affinity": ["database"], "raw": "",
            "context": {"properties": {"db_host": "10.0.0.2"}},
            "fqn_prefix": "tid.customers.EasyJet.services.Web.serviceComponents.DBServer.replicas.1"}"#,
        )
        .expect("valid");
        assert_eq!(d.memory_ceiling_mb(), 8192);
        assert_eq!(
            d.disks[0].source,
            Some(DiskSource::Image(
                ImageName::new("tiny").expect("valid name")
            ))
        );
    }

    #[test]
    fn sites_are_a_preference_of_names_each_named_once() {
        let d = parse(r#"{"cpu": 1, "memory_mb": 64, "sites": ["east", "west"]}"#).expect("valid");
        assert_eq!(
            d.sites,
            vec![
                SiteName::new("east").expect("valid"),
                SiteName::new("west").expect("valid")
            ]
        );
        assert_eq!(
            parse(r#"{"cpu": 1, "memory_mb": 64, "sites": ["east", "west", "east"]}"#),
            Err("sites[2]".to_owned())
        );
        assert!(
            parse(r#"{"cpu": 1, "memory_mb": 64, "sites": ["no/slash"]}"#)
                .expect_err("not a name")
                .starts_with("sites[0]")
        );
        let many: Vec<String> = (0..=MAX_SITES).map(|i| format!("\"s{i}\"")).collect();
        let json = format!(
            r#"{{"cpu": 1, "memory_mb": 64, "sites": [{}]}}"#,
            many.join(",")
        );
        assert_eq!(parse(&json), Err("sites".to_owned()));
        let bare = serde_json::to_string(&VeeDescriptor::minimal(1, 64)).expect("serializes");
        assert!(
            !bare.contains("sites"),
            "no preference, nothing written: {bare}"
        );
    }

    #[test]
    fn direct_boot_and_restarts_round_trip() {
        let json = r#"{"cpu":1,"memory_mb":64,"restart_attempts":2,
            "boot":{"kernel":"image:vmlinuz","initrd":"file:///srv/initrd.img","cmdline":"console=ttyS0"}}"#;
        let d = parse(json).expect("valid");
        assert_eq!(d.restart_attempts, 2);
        let boot = d.boot.clone().expect("a boot section");
        assert_eq!(boot.kernel.to_string(), "image:vmlinuz");
        assert_eq!(
            boot.initrd.map(|i| i.to_string()).as_deref(),
            Some("file:///srv/initrd.img")
        );
        assert_eq!(boot.cmdline, "console=ttyS0");
        let again = parse(&serde_json::to_string(&d).expect("serializes")).expect("valid");
        assert_eq!(again, d);
        let plain = serde_json::to_value(VeeDescriptor::minimal(1, 64)).expect("serializes");
        assert!(plain.get("restart_attempts").is_none() && plain.get("boot").is_none());
    }

    #[test]
    fn targets_are_filled_in_order() {
        let d = parse(r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1},{"size_gb":2}],"nics":[{"network":"n"}]}"#)
            .expect("valid");
        assert_eq!(d.disks[0].target.as_deref(), Some("vda"));
        assert_eq!(d.disks[1].target.as_deref(), Some("vdb"));
        assert_eq!(d.nics[0].target.as_deref(), Some("eth0"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"memory_mb":64}"#, "cpu"),
            (r#"{"cpu":0,"memory_mb":64}"#, "cpu"),
            (r#"{"cpu":"two","memory_mb":64}"#, "cpu"),
            (
                r#"{"cpu":1,"memory_mb":64,"memory_max_mb":32}"#,
                "memory_max_mb",
            ),
            (r#"{"cpu":2,"memory_mb":64,"cpu_max":1}"#, "cpu_max"),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"ftp://x"}]}"#,
                "disks[0].source",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{}]}"#,
                "disks[0].size_gb",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1,"target":"vda"},{"size_gb":1,"target":"vda"}]}"#,
                "disks[1].target",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1,"target":".."}]}"#,
                "disks[0].target",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1,"target":"../../x"}]}"#,
                "disks[0].target",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1,"target":"c:d"}]}"#,
                "disks[0].target",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"nics":[{"network":"a b"}]}"#,
                "nics[0].network",
            ),
            (r#"{"cpu":1,"memory_mb":64,"colour":"red"}"#, "colour"),
            (
                r#"{"cpu":1,"memory_mb":64,"fqn_prefix":"a..b"}"#,
                "fqn_prefix",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"restart_attempts":101}"#,
                "restart_attempts",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"boot":{"initrd":"image:i"}}"#,
                "boot",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"boot":{"kernel":"ftp://k"}}"#,
                "boot.kernel",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"boot":{"kernel":"image:k","cmdline":"a\u0000b"}}"#,
                "boot.cmdline",
            ),
        ];
        for (json, field) in cases {
            let err = parse(json).expect_err(json);
            assert!(
                err.contains(field),
                "{json}: error {err:?} should name {field:?}"
            );
        }
    }

    #[test]
    fn file_urls_name_local_paths_only() {
        let ok = [
            ("file:///etc/passwd", "/etc/passwd"),
            ("FILE:///etc/passwd", "/etc/passwd"),
            ("file:/etc/passwd", "/etc/passwd"),
            ("file://localhost/etc/passwd", "/etc/passwd"),
            ("file://LOCALHOST/etc/passwd", "/etc/passwd"),
            // Decoded, then resolved by the caller: the text is never what is judged.
            (
                "file:///allowed/%2e%2e/etc/passwd",
                "/allowed/../etc/passwd",
            ),
            (
                "file:///allowed%2f..%2fetc/passwd",
                "/allowed/../etc/passwd",
            ),
            ("file:///srv/my%20disk.qcow2", "/srv/my disk.qcow2"),
        ];
        for (url, path) in ok {
            assert_eq!(file_url_path(url).as_deref(), Ok(path), "{url}");
        }
        let long = format!("file:///{}", "a".repeat(MAX_FILE_PATH_BYTES));
        let refused = [
            ("http://x/y", FileUrlError::NotFile),
            (
                "file://otherhost/x",
                FileUrlError::OtherHost("otherhost".into()),
            ),
            (
                "file://127.0.0.1/etc/passwd",
                FileUrlError::OtherHost("127.0.0.1".into()),
            ),
            ("file:etc/passwd", FileUrlError::NotAbsolute),
            ("file:", FileUrlError::NotAbsolute),
            ("file:///etc/passwd%00.qcow2", FileUrlError::Nul),
            ("file:///x%zz", FileUrlError::BadEscape),
            ("file:///x%2", FileUrlError::BadEscape),
            ("file:///x%ff", FileUrlError::NotUtf8),
            ("file:///x?y", FileUrlError::QueryOrFragment),
            (long.as_str(), FileUrlError::TooLong),
        ];
        for (url, error) in refused {
            assert_eq!(file_url_path(url), Err(error), "{url}");
        }
        assert_eq!(file_url_path("file:///a\0b"), Err(FileUrlError::Nul));
    }

    #[test]
    fn every_file_form_is_a_url_the_vee_m_judges() {
        for text in [
            "file:///etc/passwd",
            "FILE:///x",
            "file:/etc/passwd",
            "file://h/x",
            "file:",
        ] {
            let source = DiskSource::try_from(text.to_owned()).expect(text);
            assert!(source.is_file_url() && !source.is_http_url(), "{text}");
        }
        let http = DiskSource::try_from("HTTPS://example.com/x".to_owned()).expect("a URL");
        assert!(http.is_http_url() && !http.is_file_url());
    }

    #[test]
    fn cdroms_are_read_only_media() {
        let d =
            parse(r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"image:iso","kind":"cdrom"}]}"#)
                .expect("valid");
        assert_eq!(d.disks[0].kind, DiskKind::Cdrom);
        assert!(!d.disks[0].clone, "a cdrom is never a copy");
        let json = serde_json::to_value(&d).expect("serializes");
        assert_eq!(json["disks"][0]["kind"], "cdrom");
        let plain = parse(r#"{"cpu":1,"memory_mb":64,"disks":[{"size_gb":1}]}"#).expect("valid");
        assert_eq!(plain.disks[0].kind, DiskKind::Disk);
        let json = serde_json::to_value(&plain).expect("serializes");
        assert!(
            json["disks"][0].get("kind").is_none(),
            "the default is not written"
        );
        for (json, field) in [
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"kind":"cdrom","size_gb":1}]}"#,
                "disks[0].source",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"image:i","kind":"cdrom","size_gb":1}]}"#,
                "disks[0].size_gb",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"image:i","kind":"floppy"}]}"#,
                "disks[0].kind",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"http://h/x","clone":false}]}"#,
                "disks[0].clone",
            ),
            (
                r#"{"cpu":1,"memory_mb":64,"disks":[{"source":"image:i","clone":false}]}"#,
                "disks[0].clone",
            ),
        ] {
            let err = parse(json).expect_err(json);
            assert!(err.contains(field), "{json}: {err} should name {field}");
        }
    }
}
