//! OVF for veem: turns an OVF envelope (DSP0243 1.x or 2.x) into a VEE descriptor, and writes
//! the OVF environment document (`ovf-env.xml`) a VEE reads its context from.
//!
//! This crate is pure: it never does I/O, never touches a clock, tokio or the network, and never
//! expands an XML entity (a document with a DTD is refused before it is parsed). It must never
//! panic on any input; a fuzz target and property tests hold it to that.
//!
//! How an envelope becomes a descriptor (Table 2.2 of the RESERVOIR VMI paper):
//!
//! - The envelope holds one VirtualSystem, or a VirtualSystemCollection: then veem deploys the
//!   collection's first VirtualSystem in document order (one submission makes one VEE; an SM
//!   deploys a collection's other members with their own submissions), after checking all of
//!   them. Its `Name`, else its `ovf:id`, is the descriptor's name. A collection without any
//!   VirtualSystem is valid OVF ([`validate_envelope`] accepts it) but has nothing to deploy.
//! - The VirtualHardwareSection (the first naming kvm or qemu when there are several) gives CPUs
//!   (ResourceType 3), memory (4), disks (17, 31, and CD/DVD drives 15/16 holding media) and
//!   NICs (10); every other CIM device is left to the hypervisor driver. A VirtualSystem with
//!   no CPU Item gets [`DEFAULT_CPU`], with no memory Item [`DEFAULT_MEMORY_MB`]. Disk and NIC
//!   targets are left to `VeeDescriptor::validate` (vda, vdb, ...; eth0, eth1, ...).
//! - A disk's capacity (rounded up to whole GiB; `${key}` reads a property) is its size; its
//!   File's href is its source: `image:<href>` for a relative href (its last path component
//!   when the href is a path, with characters an image name cannot hold turned into '_'), the
//!   URL itself for http(s):// and file://. A Disk without a File is a blank disk.
//! - A NIC's `rasd:Connection` must name a Network of the NetworkSection; veem's network name
//!   is that name with each run of characters other than letters, digits, '.', '_' and ':'
//!   turned into one '-' ("VM Network" becomes "VM-Network").
//! - `vssd:VirtualSystemType` is the hypervisor type, as written ("vmx-07", "virtualbox-2.2");
//!   when it lists several, kvm or qemu if listed, else the first.
//! - ProductSection properties (also of the enclosing collection) become the context
//!   properties, keyed `[class.]key[.instance]`.
//! - DeploymentOptionSection: the configuration named in [`ParseOptions::configuration`], else
//!   the one marked `ovf:default="true"`, else the first, decides which Items and properties
//!   are in force.
//!
//! Leniencies, each because real exports (or VMware's own conformance corpus) need it: the OVF
//! 1.0 `rasd:InstanceId` spelling; OVF attributes written without the `ovf:` prefix; elements
//! in no namespace, and the 2008 `<Section xsi:type="ovf:DiskSection_Type">` form; a
//! VirtualSystem or AnnotationSection without `Info`; a Disk without `ovf:format` (veem sniffs
//! image formats); Files shared by several Disks; the property type `int` (read as `sint32`);
//! vendor extension elements (`vmw:`, `vbox:`) without `ovf:required="false"`; the undeclared
//! conventional prefixes `ovfstr`, `rasd`, `vssd`, `vmw`, `xsi` and `cim`. The pre-DMTF OVF 0.9
//! namespace of VMware is refused by name.

mod environment;
mod error;
mod hardware;
mod package;
mod product;
mod structure;
#[cfg(test)]
mod tests;
mod units;
mod xml;

use roxmltree::{Document, Node};
use veem_model::VeeDescriptor;

pub use environment::write_ovf_env;
pub use error::OvfError;
pub use xml::MAX_ENVELOPE_BYTES;

use package::{Configurations, Package};
use xml::{display_name, text_of, Ovf, OVF09_NS, OVF1_NS, OVF2_NS};

/// CPUs of a VirtualSystem whose hardware has no CPU Item.
pub const DEFAULT_CPU: u32 = 1;
/// Memory of a VirtualSystem whose hardware has no memory Item.
pub const DEFAULT_MEMORY_MB: u64 = 512;

/// How to read an envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// The DeploymentOptionSection configuration to deploy; the envelope's default when `None`.
    pub configuration: Option<String>,
}

/// Reads an OVF envelope into a validated descriptor (targets filled in) of its first
/// VirtualSystem, or says which element makes it unusable. The whole envelope is checked, every
/// VirtualSystem of a collection included.
pub fn parse_envelope(xml: &str, options: &ParseOptions) -> Result<VeeDescriptor, OvfError> {
    xml::with_document(xml, |doc| {
        let (systems, top) = read_systems(doc, options)?;
        systems.into_iter().next().ok_or_else(|| {
            OvfError::missing(
                top,
                "VirtualSystem: the envelope holds none, so there is nothing to deploy",
            )
        })
    })
}

/// Checks an envelope as [`parse_envelope`] does, but accepts one with no VirtualSystem to
/// deploy (an empty VirtualSystemCollection is valid OVF).
pub fn validate_envelope(xml: &str, options: &ParseOptions) -> Result<(), OvfError> {
    xml::with_document(xml, |doc| read_systems(doc, options).map(|_| ()))
}

/// Descriptors of every VirtualSystem in document order, and the path of the envelope's
/// content (for "nothing to deploy").
fn read_systems(
    doc: &Document<'_>,
    options: &ParseOptions,
) -> Result<(Vec<VeeDescriptor>, String), OvfError> {
    let envelope = doc.root_element();
    let ovf = envelope_namespace(envelope)?;
    structure::check(ovf, envelope)?;
    let package = Package::read(ovf, envelope)?;
    let configurations = Configurations::read(ovf, envelope, options.configuration.as_deref())?;
    let mut systems = Vec::new();
    collect_virtual_systems(ovf, envelope, None, &mut systems);
    let top = envelope
        .children()
        .find(|c| ovf.is(*c, "VirtualSystemCollection") || ovf.is(*c, "VirtualSystem"))
        .map(|c| content_path(ovf, c))
        .unwrap_or_else(|| "Envelope".to_owned());
    let descriptors = systems
        .into_iter()
        .map(|(system, collection)| read_system(ovf, system, collection, &package, &configurations))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descriptors, top))
}

fn read_system(
    ovf: Ovf<'_>,
    system: Node<'_, '_>,
    collection: Option<Node<'_, '_>>,
    package: &Package,
    configurations: &Configurations,
) -> Result<VeeDescriptor, OvfError> {
    let id = ovf.attr(system, "id").unwrap_or_default();
    let system_path = content_path(ovf, system);
    let section = hardware::choose_section(ovf, system)
        .ok_or_else(|| OvfError::missing(&system_path, "VirtualHardwareSection"))?;
    let collection = collection.map(|c| (c, content_path(ovf, c)));
    let properties = product::read(ovf, system, &system_path, collection, configurations)?;
    let hardware = hardware::read(ovf, section, package, configurations, &properties)?;

    let mut descriptor = VeeDescriptor::minimal(
        hardware.cpu.unwrap_or(DEFAULT_CPU),
        hardware.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
    );
    descriptor.name = display_name_of(ovf, system, id);
    descriptor.cpu_max = hardware.cpu_max;
    descriptor.memory_max_mb = hardware.memory_max_mb;
    descriptor.disks = hardware.disks;
    descriptor.nics = hardware.nics;
    descriptor.hypervisor = hardware.hypervisor;
    descriptor.context.properties = properties;
    descriptor.validate()?;
    Ok(descriptor)
}

fn content_path(ovf: Ovf<'_>, content: Node<'_, '_>) -> String {
    format!(
        "{}[id={}]",
        ovf.name_of(content).unwrap_or("VirtualSystem"),
        ovf.attr(content, "id").unwrap_or_default()
    )
}

fn envelope_namespace(envelope: Node<'_, '_>) -> Result<Ovf<'static>, OvfError> {
    let root = display_name(envelope);
    let namespace = envelope.tag_name().namespace().unwrap_or_default();
    let ns = match namespace {
        OVF1_NS => OVF1_NS,
        OVF2_NS => OVF2_NS,
        OVF09_NS => {
            return Err(OvfError::Ovf09 {
                root,
                namespace: OVF09_NS.to_owned(),
            })
        }
        _ if envelope.tag_name().name() != "Envelope" => {
            return Err(OvfError::invalid(
                root,
                "the document's root element is not an OVF Envelope",
            ))
        }
        other => {
            return Err(OvfError::UnknownNamespace {
                root,
                namespace: other.to_owned(),
            })
        }
    };
    if envelope.tag_name().name() != "Envelope" {
        return Err(OvfError::invalid(
            root,
            "the document's root element is not an OVF Envelope",
        ));
    }
    Ok(Ovf { ns })
}

/// Every VirtualSystem in document order, with the collection holding it, if any.
fn collect_virtual_systems<'n, 'i>(
    ovf: Ovf<'_>,
    node: Node<'n, 'i>,
    collection: Option<Node<'n, 'i>>,
    found: &mut Vec<(Node<'n, 'i>, Option<Node<'n, 'i>>)>,
) {
    for child in node.children() {
        if ovf.is(child, "VirtualSystem") {
            found.push((child, collection));
        } else if ovf.is(child, "VirtualSystemCollection") {
            collect_virtual_systems(ovf, child, Some(child), found);
        }
    }
}

/// The VirtualSystem's `Name`, else its id; cut to the 255 bytes a descriptor name may have.
fn display_name_of(ovf: Ovf<'_>, system: Node<'_, '_>, id: &str) -> String {
    let name = ovf.child(system, "Name").and_then(text_of).unwrap_or(id);
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}
