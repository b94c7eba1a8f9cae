//! The envelope-level catalogue the virtual systems refer to: References (files), DiskSection,
//! NetworkSection and DeploymentOptionSection, each checked for the dangling and duplicate
//! references that make an envelope meaningless.

use std::collections::{BTreeMap, HashMap, HashSet};

use roxmltree::Node;
use veem_model::{DiskSource, ImageName};

use crate::units::{bytes_per_unit, round_up, GIB};
use crate::xml::Ovf;
use crate::OvfError;

pub(crate) struct FileDef {
    pub id: String,
    pub href: String,
}

pub(crate) struct DiskDef {
    pub capacity: Capacity,
    pub file: Option<usize>,
    pub path: String,
}

/// A Disk's capacity: a size, or (DSP0243) `${key}`, a property giving the number of units.
pub(crate) enum Capacity {
    Gb(u64),
    Property { key: String, bytes_per_unit: u128 },
}

impl DiskDef {
    /// The size in GiB, rounded up, reading a `${key}` capacity from the properties in force.
    pub fn size_gb(&self, properties: &BTreeMap<String, String>) -> Result<u64, OvfError> {
        match &self.capacity {
            Capacity::Gb(size) => Ok(*size),
            Capacity::Property {
                key,
                bytes_per_unit,
            } => {
                let value = properties.get(key).ok_or_else(|| {
                    OvfError::dangling(
                        &self.path,
                        "ovf:capacity",
                        format!("${{{key}}}"),
                        "property in force",
                    )
                })?;
                let quantity = parse_capacity(value, &self.path)?;
                round_up(quantity, *bytes_per_unit, GIB).ok_or_else(|| {
                    OvfError::invalid(&self.path, format!("ovf:capacity {value:?} is too large"))
                })
            }
        }
    }
}

/// What the virtual systems of an envelope can point at.
pub(crate) struct Package {
    pub files: Vec<FileDef>,
    file_index: HashMap<String, usize>,
    disks: HashMap<String, DiskDef>,
    /// `None` when the envelope has no NetworkSection.
    pub networks: Option<HashSet<String>>,
}

impl Package {
    pub fn read(ovf: Ovf<'_>, envelope: Node<'_, '_>) -> Result<Self, OvfError> {
        let files = read_files(ovf, envelope)?;
        let file_index: HashMap<String, usize> = files
            .iter()
            .enumerate()
            .map(|(index, f)| (f.id.clone(), index))
            .collect();
        let disks = read_disks(ovf, envelope, &file_index)?;
        let networks = read_networks(ovf, envelope)?;
        Ok(Package {
            files,
            file_index,
            disks,
            networks,
        })
    }

    pub fn file(&self, id: &str) -> Option<&FileDef> {
        self.file_index.get(id).map(|index| &self.files[*index])
    }

    pub fn disk(&self, id: &str) -> Option<&DiskDef> {
        self.disks.get(id)
    }
}

fn read_files(ovf: Ovf<'_>, envelope: Node<'_, '_>) -> Result<Vec<FileDef>, OvfError> {
    let mut files: Vec<FileDef> = Vec::new();
    let mut ids: HashSet<&str> = HashSet::new();
    let mut hrefs: HashMap<&str, &str> = HashMap::new();
    let Some(references) = ovf.child(envelope, "References") else {
        return Ok(files);
    };
    for (n, file) in ovf.children(references, "File").enumerate() {
        let Some(id) = ovf.attr(file, "id") else {
            return Err(OvfError::missing(
                format!("References/File[{}]", n + 1),
                "ovf:id",
            ));
        };
        let path = format!("References/File[id={id}]");
        if !ids.insert(id) {
            return Err(OvfError::duplicate(path, "ovf:id", id));
        }
        let href = ovf
            .attr(file, "href")
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| OvfError::missing(&path, "ovf:href"))?;
        if let Some(other) = hrefs.insert(href, id) {
            return Err(OvfError::invalid(
                path,
                format!(
                    "ovf:href {href:?} is also the href of File {other:?}; two Files cannot be one file"
                ),
            ));
        }
        // The size is only a hint (the real size comes with the file), but it must be one.
        for field in ["size", "chunkSize"] {
            if let Some(v) = ovf.attr(file, field) {
                if v.trim().parse::<i128>().is_err() {
                    return Err(OvfError::not_a_number(&path, format!("ovf:{field}"), v));
                }
            }
        }
        if let Some(c) = ovf.attr(file, "compression") {
            if !matches!(c.trim(), "" | "identity" | "gzip" | "bzip2") {
                return Err(OvfError::invalid(
                    path,
                    format!("ovf:compression {c:?} is none of identity, gzip, bzip2"),
                ));
            }
        }
        files.push(FileDef {
            id: id.to_owned(),
            href: href.to_owned(),
        });
    }
    Ok(files)
}

fn read_disks(
    ovf: Ovf<'_>,
    envelope: Node<'_, '_>,
    files: &HashMap<String, usize>,
) -> Result<HashMap<String, DiskDef>, OvfError> {
    let mut disks: HashMap<String, DiskDef> = HashMap::new();
    let mut parents: Vec<(String, String)> = Vec::new();
    let Some(section) = ovf.child(envelope, "DiskSection") else {
        return Ok(disks);
    };
    for (n, disk) in ovf.children(section, "Disk").enumerate() {
        let Some(id) = ovf.attr(disk, "diskId") else {
            return Err(OvfError::missing(
                format!("DiskSection/Disk[{}]", n + 1),
                "ovf:diskId",
            ));
        };
        let path = format!("DiskSection/Disk[diskId={id}]");
        if disks.contains_key(id) {
            return Err(OvfError::duplicate(path, "ovf:diskId", id));
        }
        let capacity = ovf
            .attr(disk, "capacity")
            .ok_or_else(|| OvfError::missing(&path, "ovf:capacity"))?;
        let capacity_units = match ovf.attr(disk, "capacityAllocationUnits") {
            None => 1,
            Some(u) => bytes_per_unit(u).ok_or_else(|| {
                OvfError::invalid(
                    &path,
                    format!("ovf:capacityAllocationUnits {u:?} is not a unit of bytes"),
                )
            })?,
        };
        let capacity = match capacity
            .trim()
            .strip_prefix("${")
            .and_then(|c| c.strip_suffix('}'))
        {
            Some(key) if !key.is_empty() => Capacity::Property {
                key: key.to_owned(),
                bytes_per_unit: capacity_units,
            },
            _ => {
                let quantity = parse_capacity(capacity, &path)?;
                let bytes = quantity.checked_mul(capacity_units).ok_or_else(|| {
                    OvfError::invalid(&path, format!("ovf:capacity {capacity:?} is too large"))
                })?;
                if let Some(populated) = ovf.attr(disk, "populatedSize") {
                    let populated_bytes: u128 = populated.trim().parse().map_err(|_| {
                        OvfError::not_a_number(&path, "ovf:populatedSize", populated)
                    })?;
                    if populated_bytes > bytes {
                        return Err(OvfError::invalid(
                            path,
                            format!(
                                "ovf:populatedSize {populated_bytes} is larger than the capacity \
                                 ({bytes} bytes)"
                            ),
                        ));
                    }
                }
                Capacity::Gb(round_up(quantity, capacity_units, GIB).ok_or_else(|| {
                    OvfError::invalid(&path, format!("ovf:capacity {capacity:?} is too large"))
                })?)
            }
        };
        // ovf:format is not required: veem sniffs an image's format from its first bytes.
        let file = match ovf.attr(disk, "fileRef") {
            None => None,
            Some(file_ref) => Some(*files.get(file_ref).ok_or_else(|| {
                OvfError::dangling(&path, "ovf:fileRef", file_ref, "File of References")
            })?),
        };
        if let Some(parent) = ovf.attr(disk, "parentRef") {
            parents.push((path.clone(), parent.to_owned()));
        }
        disks.insert(
            id.to_owned(),
            DiskDef {
                capacity,
                file,
                path,
            },
        );
    }
    for (path, parent) in parents {
        if !disks.contains_key(&parent) {
            return Err(OvfError::dangling(
                path,
                "ovf:parentRef",
                parent,
                "Disk of DiskSection",
            ));
        }
    }
    Ok(disks)
}

fn parse_capacity(capacity: &str, path: &str) -> Result<u128, OvfError> {
    let text = capacity.trim();
    let quantity: u128 = text
        .parse()
        .map_err(|_| OvfError::not_a_number(path, "ovf:capacity", capacity))?;
    if quantity == 0 {
        return Err(OvfError::invalid(
            path,
            "ovf:capacity must be positive, not 0",
        ));
    }
    Ok(quantity)
}

fn read_networks(
    ovf: Ovf<'_>,
    envelope: Node<'_, '_>,
) -> Result<Option<HashSet<String>>, OvfError> {
    let Some(section) = ovf.child(envelope, "NetworkSection") else {
        return Ok(None);
    };
    let mut names: HashSet<String> = HashSet::new();
    for (n, network) in ovf.children(section, "Network").enumerate() {
        let name = ovf
            .attr(network, "name")
            .ok_or_else(|| {
                OvfError::missing(format!("NetworkSection/Network[{}]", n + 1), "ovf:name")
            })?
            .to_owned();
        if names.contains(&name) {
            return Err(OvfError::duplicate(
                format!("NetworkSection/Network[name={name}]"),
                "ovf:name",
                name,
            ));
        }
        names.insert(name);
    }
    Ok(Some(names))
}

/// A File's href as a disk source: a relative href (or an absolute path without a scheme) is
/// an image of the caller's store (its last path component when the href is a path), never a
/// file of the host; an http(s):// URL stays a URL, and so does every `file:` form
/// (`file:/p`, `file:///p`, `file://host/p`), so that the VEEM's file-source rules (admins
/// only, under `file_sources`) judge it exactly as a JSON descriptor's.
pub(crate) fn source_from_href(href: &str, path: &str) -> Result<DiskSource, OvfError> {
    let lower = href.to_ascii_lowercase();
    if ["http://", "https://", "file:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
    {
        return DiskSource::try_from(href.to_owned()).map_err(|reason| {
            OvfError::invalid(path, format!("ovf:href {href:?} is not usable: {reason}"))
        });
    }
    if lower.contains("://") {
        return Err(OvfError::invalid(
            path,
            format!("ovf:href {href:?}: veem fetches only http://, https:// and file:// URLs"),
        ));
    }
    let last = href.rsplit(['/', '\\']).next().unwrap_or(href);
    ImageName::new(href)
        .or_else(|_| ImageName::new(last))
        .or_else(|e| image_word(last).ok_or(e).and_then(ImageName::new))
        .map(DiskSource::Image)
        .map_err(|e| {
            OvfError::invalid(
                path,
                format!("ovf:href {href:?} names no image veem can store: {e}"),
            )
        })
}

/// A file name made an image name: every character outside `[A-Za-z0-9._-]` becomes '_' and
/// leading dots go ("{0d71...}.vmdk", as VirtualBox names snapshot disks, becomes
/// "_0d71..._.vmdk").
fn image_word(name: &str) -> Option<String> {
    let word: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let word = word.trim_start_matches('.');
    (!word.is_empty() && word.chars().any(|c| c.is_ascii_alphanumeric())).then(|| word.to_owned())
}

/// The deployment configurations of the envelope and the one in force.
pub(crate) struct Configurations {
    defined: HashSet<String>,
    selected: Option<String>,
}

impl Configurations {
    pub fn read(
        ovf: Ovf<'_>,
        envelope: Node<'_, '_>,
        wanted: Option<&str>,
    ) -> Result<Self, OvfError> {
        let mut defined: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut default: Option<String> = None;
        if let Some(section) = ovf.child(envelope, "DeploymentOptionSection") {
            for (n, configuration) in ovf.children(section, "Configuration").enumerate() {
                let id = ovf.attr(configuration, "id").ok_or_else(|| {
                    OvfError::missing(
                        format!("DeploymentOptionSection/Configuration[{}]", n + 1),
                        "ovf:id",
                    )
                })?;
                let path = format!("DeploymentOptionSection/Configuration[id={id}]");
                if !seen.insert(id) {
                    return Err(OvfError::duplicate(path, "ovf:id", id));
                }
                let is_default = ovf
                    .attr(configuration, "default")
                    .is_some_and(|d| matches!(d.trim(), "true" | "1"));
                if is_default {
                    if let Some(first) = &default {
                        return Err(OvfError::invalid(
                            path,
                            format!("a second default configuration; {first:?} is the default"),
                        ));
                    }
                    default = Some(id.to_owned());
                }
                defined.push(id.to_owned());
            }
        }
        let selected = match wanted {
            Some(id) if defined.iter().any(|d| d == id) => Some(id.to_owned()),
            Some(id) => {
                return Err(OvfError::UnknownConfiguration {
                    id: id.to_owned(),
                    defined: if defined.is_empty() {
                        "none; the envelope has no DeploymentOptionSection".to_owned()
                    } else {
                        defined.join(", ")
                    },
                })
            }
            // DSP0243: without an explicit default, the first configuration is the default.
            None => default.or_else(|| defined.first().cloned()),
        };
        Ok(Configurations {
            defined: defined.into_iter().collect(),
            selected,
        })
    }

    /// Whether an element with this `ovf:configuration` list is in force; an id the
    /// DeploymentOptionSection does not define is an error.
    pub fn applies(&self, list: Option<&str>, path: &str) -> Result<bool, OvfError> {
        let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
            return Ok(true);
        };
        let mut in_force = false;
        for id in list.split(|c: char| c.is_whitespace() || c == ',') {
            if id.is_empty() {
                continue;
            }
            if !self.defined.contains(id) {
                return Err(OvfError::dangling(
                    path,
                    "ovf:configuration",
                    id,
                    "Configuration of DeploymentOptionSection",
                ));
            }
            in_force |= self.selected.as_deref() == Some(id);
        }
        Ok(in_force)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_become_images_or_urls() {
        let image = |name: &str| DiskSource::Image(ImageName::new(name).expect("valid"));
        let cases = [
            ("disk.vmdk", image("disk.vmdk")),
            ("../../../vmdk/valid_disk.vmdk", image("valid_disk.vmdk")),
            (r"\\pa-scratch\scratch\ubuntu.vmdk", image("ubuntu.vmdk")),
            ("{0d71abb2-e01f}.vmdk", image("_0d71abb2-e01f_.vmdk")),
            ("dir/a b.vmdk", image("a_b.vmdk")),
            (
                "http://example.com/~a/dummy.vmdk",
                DiskSource::Url("http://example.com/~a/dummy.vmdk".to_owned()),
            ),
            (
                "HTTPS://example.com/x",
                DiskSource::Url("HTTPS://example.com/x".to_owned()),
            ),
            // Host files stay file: URLs, for the VEEM to judge; a bare path is an image name.
            (
                "file:///etc/passwd",
                DiskSource::Url("file:///etc/passwd".to_owned()),
            ),
            (
                "file:/etc/passwd",
                DiskSource::Url("file:/etc/passwd".to_owned()),
            ),
            (
                "FILE://localhost/etc/shadow",
                DiskSource::Url("FILE://localhost/etc/shadow".to_owned()),
            ),
            ("/etc/passwd", image("passwd")),
            ("../../../../etc/passwd", image("passwd")),
        ];
        for (href, source) in cases {
            assert_eq!(source_from_href(href, "F").expect(href), source, "{href}");
        }
        for href in ["ftp://example.com/x.vmdk", "dir/", "dir/...", "x/{}"] {
            let err = source_from_href(href, "References/File[id=f]").expect_err(href);
            assert_eq!(err.element(), "References/File[id=f]");
        }
    }
}
