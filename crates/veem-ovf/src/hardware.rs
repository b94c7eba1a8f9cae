//! VirtualHardwareSection -> CPUs, memory, disks, NICs and the hypervisor type.
//!
//! DSP0243 rules followed here: Items whose `ovf:configuration` does not list the configuration
//! in force are left out; the Items left with the same InstanceID and bound are merged, a later
//! Item's elements replacing an earlier one's of the same name (that is how a configuration
//! overrides a default). `ovf:bound="min"|"max"` Items give ranges around the unbounded
//! ("normal") Item of the same InstanceID: veem reads `max` of a CPU or memory Item as the
//! ceiling (`cpu_max`, `memory_max_mb`) and ignores `min`.

use std::collections::{BTreeMap, HashMap, HashSet};

use roxmltree::Node;
use veem_model::{DiskKind, DiskSpec, NicSpec, MAX_NICS};

use crate::package::{source_from_href, Configurations, Package};
use crate::units::{bytes_per_unit, round_up, MIB};
use crate::xml::{display_name, is_cim, text_of, Ovf};
use crate::OvfError;

/// What veem takes from the virtual hardware.
#[derive(Debug, Default)]
pub(crate) struct Hardware {
    pub cpu: Option<u32>,
    pub cpu_max: Option<u32>,
    pub memory_mb: Option<u64>,
    pub memory_max_mb: Option<u64>,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub hypervisor: Option<String>,
}

/// veem names disks vda to vdz.
const MAX_DISKS: usize = 26;

/// CIM resource types veem maps.
const CPU: u32 = 3;
const MEMORY: u32 = 4;
const ETHERNET: u32 = 10;
const CD_DRIVE: u32 = 15;
const DVD_DRIVE: u32 = 16;
const DISK_DRIVE: u32 = 17;
const LOGICAL_DISK: u32 = 31;

/// Elements of CIM_ResourceAllocationSettingData and its 2.x subclasses (storage, ethernet
/// port); anything else in an Item must be marked `ovf:required="false"`.
const KNOWN_ITEM_ELEMENTS: &[&str] = &[
    "Address",
    "AddressOnParent",
    "AllocationUnits",
    "AutomaticAllocation",
    "AutomaticDeallocation",
    "Caption",
    "ChangeableType",
    "ConfigurationName",
    "Connection",
    "ConsumerVisibility",
    "Description",
    "ElementName",
    "Generation",
    "HostResource",
    "InstanceID",
    "InstanceId",
    "Limit",
    "MappingBehavior",
    "OtherResourceType",
    "Parent",
    "PoolID",
    "Reservation",
    "ResourceSubType",
    "ResourceType",
    "VirtualQuantity",
    "VirtualQuantityUnits",
    "Weight",
    // CIM_StorageAllocationSettingData
    "Access",
    "HostExtentName",
    "HostExtentNameFormat",
    "HostExtentNameNamespace",
    "HostExtentStartingAddress",
    "HostResourceBlockSize",
    "OtherHostExtentNameFormat",
    "OtherHostExtentNameNamespace",
    "VirtualResourceBlockSize",
    // CIM_EthernetPortAllocationSettingData
    "AllowedPriorities",
    "AllowedToReceiveMACAddresses",
    "AllowedToReceiveVLANs",
    "AllowedToTransmitMACAddresses",
    "AllowedToTransmitVLANs",
    "DefaultPortVID",
    "DefaultPriority",
    "DesiredVLANEndpointMode",
    "GroupID",
    "ManagerID",
    "NetworkPortProfileID",
    "NetworkPortProfileIDType",
    "OtherEndpointMode",
    "OtherNetworkPortProfileIDTypeInfo",
    "PortCorrelationID",
    "PortVID",
    "Promiscuous",
    "ReceiveBandwidthLimit",
    "ReceiveBandwidthReservation",
    "SourceMACFilteringEnabled",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    Normal,
    Min,
    Max,
}

struct RawItem<'n, 'i> {
    node: Node<'n, 'i>,
    position: usize,
    id: &'n str,
    resource_type: u32,
    bound: Bound,
    configuration: Option<&'n str>,
    required: bool,
    path: String,
}

/// The Items of one InstanceID and bound in force, merged.
struct Merged<'n> {
    id: &'n str,
    bound: Bound,
    resource_type: u32,
    required: bool,
    position: usize,
    path: String,
    fields: HashMap<&'n str, Vec<&'n str>>,
}

impl<'n> Merged<'n> {
    fn field(&self, local: &str) -> Option<&'n str> {
        self.fields
            .get(local)
            .and_then(|values| values.first().copied())
    }
}

/// The VirtualHardwareSection veem deploys: the first whose VirtualSystemType names a
/// hypervisor veem drives (kvm, qemu), otherwise the first.
pub(crate) fn choose_section<'n, 'i>(ovf: Ovf<'_>, system: Node<'n, 'i>) -> Option<Node<'n, 'i>> {
    let sections: Vec<Node<'n, 'i>> = ovf.children(system, "VirtualHardwareSection").collect();
    sections
        .iter()
        .find(|s| system_types(ovf, **s).iter().any(|t| is_native(t)))
        .or(sections.first())
        .copied()
}

pub(crate) fn read(
    ovf: Ovf<'_>,
    section: Node<'_, '_>,
    package: &Package,
    configurations: &Configurations,
    properties: &BTreeMap<String, String>,
) -> Result<Hardware, OvfError> {
    let items = read_items(ovf, section)?;
    check_instance_ids(&items)?;
    let mut in_force = Vec::new();
    for item in items {
        if configurations.applies(item.configuration, &item.path)? {
            in_force.push(item);
        }
    }
    let merged = merge(&in_force);
    let mut hardware = Hardware {
        hypervisor: hypervisor(ovf, section),
        ..Hardware::default()
    };
    let mut cpu_item: Option<&Merged<'_>> = None;
    let mut memory_item: Option<&Merged<'_>> = None;
    for item in merged.iter().filter(|m| m.bound == Bound::Normal) {
        let device = match map_item(item, package, properties) {
            Ok(device) => device,
            Err(_) if !item.required => continue,
            Err(e) => return Err(e),
        };
        match device {
            Device::Cpu(count) => {
                if let Some(first) = cpu_item {
                    return Err(second_item(item, "CPU", first));
                }
                cpu_item = Some(item);
                hardware.cpu = Some(count);
            }
            Device::Memory(mb) => {
                if let Some(first) = memory_item {
                    return Err(second_item(item, "memory", first));
                }
                memory_item = Some(item);
                hardware.memory_mb = Some(mb);
            }
            Device::Disk(disk) => {
                if hardware.disks.len() == MAX_DISKS {
                    return Err(OvfError::invalid(
                        &item.path,
                        format!("more than {MAX_DISKS} disks (veem names them vda to vdz)"),
                    ));
                }
                hardware.disks.push(disk);
            }
            Device::Nic(nic) => {
                if hardware.nics.len() == MAX_NICS {
                    return Err(OvfError::invalid(
                        &item.path,
                        format!("more than {MAX_NICS} NICs"),
                    ));
                }
                hardware.nics.push(nic);
            }
            Device::Ignored => {}
        }
    }
    let normals: HashMap<&str, &Merged<'_>> = merged
        .iter()
        .filter(|m| m.bound == Bound::Normal)
        .map(|m| (m.id, m))
        .collect();
    for bounded in merged.iter().filter(|m| m.bound != Bound::Normal) {
        let Some(normal) = normals.get(bounded.id) else {
            return Err(OvfError::invalid(
                &bounded.path,
                "a bounded Item needs an unbounded (normal) Item with the same InstanceID",
            ));
        };
        let ceiling = bounded.bound == Bound::Max;
        match bounded.resource_type {
            CPU => {
                // Only VirtualQuantity counts CPUs; a CPU Reservation is in hertz.
                let count = match bounded.field("VirtualQuantity") {
                    Some(v) => Some(parse_count(bounded, "VirtualQuantity", v)?),
                    None => None,
                };
                if ceiling && cpu_item.is_some_and(|c| c.id == normal.id) {
                    hardware.cpu_max = count;
                }
            }
            MEMORY => {
                let amount = bounded
                    .field("VirtualQuantity")
                    .map(|v| ("VirtualQuantity", v))
                    .or(bounded.field("Reservation").map(|v| ("Reservation", v)));
                let mb = match amount {
                    Some((field, value)) => Some(memory_mb(bounded, normal, field, value)?),
                    None => None,
                };
                if ceiling && memory_item.is_some_and(|m| m.id == normal.id) {
                    hardware.memory_max_mb = mb;
                }
            }
            _ => {}
        }
    }
    Ok(hardware)
}

fn second_item(item: &Merged<'_>, what: &str, first: &Merged<'_>) -> OvfError {
    OvfError::invalid(
        &item.path,
        format!(
            "a second {what} Item; InstanceID {} already gives the {what}",
            first.id
        ),
    )
}

fn read_items<'n, 'i>(
    ovf: Ovf<'_>,
    section: Node<'n, 'i>,
) -> Result<Vec<RawItem<'n, 'i>>, OvfError> {
    let mut items = Vec::new();
    let item_nodes = section.children().filter(|c| {
        ovf.is(*c, "Item") || ovf.is(*c, "StorageItem") || ovf.is(*c, "EthernetPortItem")
    });
    for (position, node) in item_nodes.enumerate() {
        let local = node.tag_name().name();
        let id = cim_text(node, "InstanceID")
            .or_else(|| cim_text(node, "InstanceId"))
            .ok_or_else(|| {
                OvfError::missing(
                    format!("VirtualHardwareSection/{local}[{}]", position + 1),
                    "rasd:InstanceID",
                )
            })?;
        let bound = match ovf.attr(node, "bound").map(str::trim) {
            None | Some("normal") => Bound::Normal,
            Some("min") => Bound::Min,
            Some("max") => Bound::Max,
            Some(other) => {
                return Err(OvfError::invalid(
                    format!("VirtualHardwareSection/{local}[InstanceID={id}]"),
                    format!("ovf:bound {other:?} is none of min, max, normal"),
                ))
            }
        };
        let path = match bound {
            Bound::Normal => format!("VirtualHardwareSection/{local}[InstanceID={id}]"),
            Bound::Min => format!("VirtualHardwareSection/{local}[InstanceID={id},bound=min]"),
            Bound::Max => format!("VirtualHardwareSection/{local}[InstanceID={id},bound=max]"),
        };
        let resource_type = cim_text(node, "ResourceType")
            .ok_or_else(|| OvfError::missing(&path, "rasd:ResourceType"))?;
        let resource_type: u32 = resource_type
            .parse()
            .map_err(|_| OvfError::not_a_number(&path, "rasd:ResourceType", resource_type))?;
        for child in node.children().filter(Node::is_element) {
            let known = is_cim(child) && KNOWN_ITEM_ELEMENTS.contains(&child.tag_name().name());
            if !known && ovf.required(child) {
                return Err(OvfError::UnknownRequired {
                    element: format!("{path}/{}", display_name(child)),
                });
            }
        }
        let configuration = ovf.attr(node, "configuration");
        items.push(RawItem {
            node,
            position,
            id,
            resource_type,
            bound,
            configuration,
            required: ovf.required(node),
            path,
        });
    }
    Ok(items)
}

/// Several Items may share an InstanceID only to override each other per configuration: at
/// most one of them applies to every configuration, and all describe the same kind of device.
fn check_instance_ids(items: &[RawItem<'_, '_>]) -> Result<(), OvfError> {
    let mut first_type: HashMap<&str, u32> = HashMap::new();
    let mut unconfigured: HashSet<(&str, Bound)> = HashSet::new();
    for item in items {
        let resource_type = *first_type.entry(item.id).or_insert(item.resource_type);
        if resource_type != item.resource_type {
            return Err(OvfError::invalid(
                &item.path,
                format!(
                    "rasd:ResourceType {} differs from {resource_type} of the earlier Item with \
                     the same InstanceID",
                    item.resource_type
                ),
            ));
        }
        if item.configuration.is_none() && !unconfigured.insert((item.id, item.bound)) {
            return Err(OvfError::duplicate(&item.path, "rasd:InstanceID", item.id));
        }
    }
    Ok(())
}

fn merge<'n>(items: &[RawItem<'n, '_>]) -> Vec<Merged<'n>> {
    let mut merged: Vec<Merged<'n>> = Vec::new();
    let mut index_of: HashMap<(&str, Bound), usize> = HashMap::new();
    for item in items {
        let index = *index_of.entry((item.id, item.bound)).or_insert_with(|| {
            merged.push(Merged {
                id: item.id,
                bound: item.bound,
                resource_type: item.resource_type,
                required: false,
                position: item.position,
                path: item.path.clone(),
                fields: HashMap::new(),
            });
            merged.len() - 1
        });
        let target = &mut merged[index];
        target.required |= item.required;
        let mut replaced: HashSet<&str> = HashSet::new();
        for child in item.node.children().filter(|c| is_cim(*c)) {
            let local = child.tag_name().name();
            let local = if local == "InstanceId" {
                "InstanceID"
            } else {
                local
            };
            let value = text_of(child).unwrap_or("");
            let values = target.fields.entry(local).or_default();
            // A later Item's elements replace an earlier one's; one Item may repeat an element.
            if replaced.insert(local) {
                values.clear();
            }
            values.push(value);
        }
    }
    merged.sort_by_key(|m| m.position);
    merged
}

enum Device {
    Cpu(u32),
    Memory(u64),
    Disk(DiskSpec),
    Nic(NicSpec),
    Ignored,
}

fn map_item(
    item: &Merged<'_>,
    package: &Package,
    properties: &BTreeMap<String, String>,
) -> Result<Device, OvfError> {
    match item.resource_type {
        CPU => {
            let quantity = item
                .field("VirtualQuantity")
                .ok_or_else(|| OvfError::missing(&item.path, "rasd:VirtualQuantity"))?;
            Ok(Device::Cpu(parse_count(item, "VirtualQuantity", quantity)?))
        }
        MEMORY => {
            let quantity = item
                .field("VirtualQuantity")
                .ok_or_else(|| OvfError::missing(&item.path, "rasd:VirtualQuantity"))?;
            Ok(Device::Memory(memory_mb(
                item,
                item,
                "VirtualQuantity",
                quantity,
            )?))
        }
        ETHERNET => nic(item, package).map(Device::Nic),
        DISK_DRIVE | LOGICAL_DISK => disk(item, package, properties).map(Device::Disk),
        // A CD/DVD drive with media (a File of the envelope, directly or through a Disk)
        // becomes a read-only CD-ROM holding it, never a hard disk. An empty drive, or one
        // whose Disk has no File (no medium to hold), is ignored.
        CD_DRIVE | DVD_DRIVE => match item.field("HostResource") {
            Some(_) => disk(item, package, properties).map(|disk| match disk.source {
                Some(source) => Device::Disk(DiskSpec {
                    source: Some(source),
                    size_gb: None,
                    target: None,
                    clone: false,
                    kind: DiskKind::Cdrom,
                }),
                None => Device::Ignored,
            }),
            None => Ok(Device::Ignored),
        },
        // Controllers, USB, sound, video, serial ports...: the hypervisor driver provides its
        // own. 35 is VirtualBox's sound card, 32768 and up are vendor types.
        1..=35 | 32768..=65535 => Ok(Device::Ignored),
        other => Err(OvfError::invalid(
            &item.path,
            format!(
                "rasd:ResourceType {other} is not a CIM resource type; mark the Item \
                 ovf:required=\"false\" if the appliance can do without it"
            ),
        )),
    }
}

fn parse_count(item: &Merged<'_>, field: &str, value: &str) -> Result<u32, OvfError> {
    let count: u64 = value
        .parse()
        .map_err(|_| OvfError::not_a_number(&item.path, format!("rasd:{field}"), value))?;
    u32::try_from(count).map_err(|_| {
        OvfError::invalid(
            &item.path,
            format!("rasd:{field} {value:?} is more CPUs than veem can count"),
        )
    })
}

/// Memory in MiB, rounded up. Units come from the Item, else from the normal Item it bounds,
/// else MB (what every tool means when it leaves them out).
fn memory_mb(
    item: &Merged<'_>,
    normal: &Merged<'_>,
    field: &str,
    value: &str,
) -> Result<u64, OvfError> {
    let quantity: u128 = value
        .parse()
        .map_err(|_| OvfError::not_a_number(&item.path, format!("rasd:{field}"), value))?;
    let unit = match item
        .field("AllocationUnits")
        .or(normal.field("AllocationUnits"))
    {
        None => MIB,
        Some(u) => bytes_per_unit(u).ok_or_else(|| {
            OvfError::invalid(
                &item.path,
                format!("rasd:AllocationUnits {u:?} is not a unit of bytes"),
            )
        })?,
    };
    round_up(quantity, unit, MIB).ok_or_else(|| {
        OvfError::invalid(
            &item.path,
            format!("rasd:{field} {value:?} is more memory than veem can count"),
        )
    })
}

fn disk(
    item: &Merged<'_>,
    package: &Package,
    properties: &BTreeMap<String, String>,
) -> Result<DiskSpec, OvfError> {
    let blank = |size_gb| DiskSpec {
        source: None,
        size_gb: Some(size_gb),
        target: None,
        clone: true,
        kind: DiskKind::Disk,
    };
    let Some(resource) = item.field("HostResource") else {
        // A 2.x StorageItem may describe a blank disk by its size alone.
        let quantity = item
            .field("VirtualQuantity")
            .ok_or_else(|| OvfError::missing(&item.path, "rasd:HostResource"))?;
        let amount: u128 = quantity
            .parse()
            .map_err(|_| OvfError::not_a_number(&item.path, "rasd:VirtualQuantity", quantity))?;
        let unit = match item.field("AllocationUnits") {
            None => 1,
            Some(u) => bytes_per_unit(u).ok_or_else(|| {
                OvfError::invalid(
                    &item.path,
                    format!("rasd:AllocationUnits {u:?} is not a unit of bytes"),
                )
            })?,
        };
        let size = round_up(amount, unit, crate::units::GIB).ok_or_else(|| {
            OvfError::invalid(
                &item.path,
                format!("rasd:VirtualQuantity {quantity:?} is too large"),
            )
        })?;
        return Ok(blank(size));
    };
    // `ovf:/disk/<id>` per DSP0243; real exports also write `/disk/<id>` and `ovf://disk/<id>`.
    let reference = resource
        .strip_prefix("ovf:")
        .unwrap_or(resource)
        .trim_start_matches('/');
    if let Some(id) = reference.strip_prefix("disk/") {
        let disk = package.disk(id).ok_or_else(|| {
            OvfError::dangling(
                &item.path,
                "rasd:HostResource",
                resource,
                "Disk of DiskSection",
            )
        })?;
        let source = match disk.file {
            None => None,
            Some(index) => {
                let file = &package.files[index];
                Some(source_from_href(
                    &file.href,
                    &format!("References/File[id={}]", file.id),
                )?)
            }
        };
        return Ok(DiskSpec {
            source,
            ..blank(disk.size_gb(properties)?)
        });
    }
    if let Some(id) = reference.strip_prefix("file/") {
        let file = package.file(id).ok_or_else(|| {
            OvfError::dangling(
                &item.path,
                "rasd:HostResource",
                resource,
                "File of References",
            )
        })?;
        let source = source_from_href(&file.href, &format!("References/File[id={}]", file.id))?;
        return Ok(DiskSpec {
            source: Some(source),
            size_gb: None,
            target: None,
            clone: true,
            kind: DiskKind::Disk,
        });
    }
    Err(OvfError::invalid(
        &item.path,
        format!("rasd:HostResource {resource:?} is neither ovf:/disk/<id> nor ovf:/file/<id>"),
    ))
}

fn nic(item: &Merged<'_>, package: &Package) -> Result<NicSpec, OvfError> {
    let connection = item
        .field("Connection")
        .ok_or_else(|| OvfError::missing(&item.path, "rasd:Connection"))?;
    match &package.networks {
        None => {
            return Err(OvfError::dangling(
                &item.path,
                "rasd:Connection",
                connection,
                "Network: the envelope has no NetworkSection",
            ))
        }
        Some(names) if !names.contains(connection) => {
            return Err(OvfError::dangling(
                &item.path,
                "rasd:Connection",
                connection,
                "Network of NetworkSection",
            ))
        }
        Some(_) => {}
    }
    Ok(NicSpec {
        network: network_name(connection).ok_or_else(|| {
            OvfError::invalid(
                &item.path,
                format!("rasd:Connection {connection:?} has no letter or digit to name a network"),
            )
        })?,
        target: None,
        ip: None,
    })
}

/// OVF network names are free text ("VM Network"); veem's are words. Every run of other
/// characters becomes one '-': "VM Network 1" -> "VM-Network-1".
pub(crate) fn network_name(name: &str) -> Option<String> {
    let mut word = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':') {
            word.push(c);
        } else if !word.is_empty() && !word.ends_with('-') {
            word.push('-');
        }
    }
    let word = word.trim_end_matches('-');
    let word: String = word.chars().take(64).collect();
    let word = word.trim_end_matches('-');
    (!word.is_empty()).then(|| word.to_owned())
}

fn system_types(ovf: Ovf<'_>, section: Node<'_, '_>) -> Vec<String> {
    ovf.child(section, "System")
        .and_then(|system| cim_text(system, "VirtualSystemType"))
        .map(|types| {
            types
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn is_native(system_type: &str) -> bool {
    let lower = system_type.to_ascii_lowercase();
    lower.starts_with("kvm") || lower.starts_with("qemu")
}

/// `vssd:VirtualSystemType` may list several types ("vmx-04 xen-3", "foobar, vmx-04"): the one
/// veem drives natively if listed, otherwise the first that is a valid hypervisor word.
fn hypervisor(ovf: Ovf<'_>, section: Node<'_, '_>) -> Option<String> {
    let types = system_types(ovf, section);
    let is_word = |t: &&String| {
        t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    };
    types
        .iter()
        .filter(is_word)
        .find(|t| is_native(t))
        .or_else(|| types.iter().find(is_word))
        .cloned()
}

/// The text of the last CIM child with this local name (a later element wins, as in merging).
fn cim_text<'n>(node: Node<'n, '_>, local: &str) -> Option<&'n str> {
    node.children()
        .filter(|c| is_cim(*c) && c.tag_name().name() == local)
        .filter_map(text_of)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_become_words() {
        let cases = [
            ("VM Network", Some("VM-Network")),
            ("VM Network 1", Some("VM-Network-1")),
            ("NAT", Some("NAT")),
            ("  a  b  ", Some("a-b")),
            ("eth0:1", Some("eth0:1")),
            ("Réseau", Some("R-seau")),
            ("---", None),
            ("", None),
        ];
        for (name, word) in cases {
            assert_eq!(network_name(name).as_deref(), word, "{name:?}");
        }
        let long = "x".repeat(100);
        assert_eq!(network_name(&long).map(|w| w.len()), Some(64));
    }
}
