//! Where DSP0243 allows each section, how many of it, that sections and collections carry
//! `Info`, that contents carry unique ids, that collections nest boundedly, and that elements
//! veem does not understand are marked `ovf:required="false"`. Checked over the whole envelope
//! before anything is read from it.

use std::collections::HashSet;

use roxmltree::Node;

use crate::xml::{display_name, Ovf, OVF1_NS, OVF2_NS, STRINGS_NS};
use crate::OvfError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    Envelope,
    VirtualSystem,
    Collection,
}

impl Parent {
    fn name(self) -> &'static str {
        match self {
            Parent::Envelope => "Envelope",
            Parent::VirtualSystem => "VirtualSystem",
            Parent::Collection => "VirtualSystemCollection",
        }
    }
}

struct SectionRule {
    name: &'static str,
    parents: &'static [Parent],
    many: bool,
    /// Children in the OVF namespace this section may hold; `None`: not checked (2.x sections
    /// whose content veem never reads).
    children: Option<&'static [&'static str]>,
}

use Parent::{Collection, Envelope, VirtualSystem};

/// DSP0243 1.1 table 6, and the sections 2.x adds.
const SECTIONS: &[SectionRule] = &[
    SectionRule {
        name: "DiskSection",
        parents: &[Envelope],
        many: false,
        children: Some(&["Info", "Disk"]),
    },
    SectionRule {
        name: "NetworkSection",
        parents: &[Envelope],
        many: false,
        children: Some(&["Info", "Network"]),
    },
    SectionRule {
        name: "DeploymentOptionSection",
        parents: &[Envelope],
        many: false,
        children: Some(&["Info", "Configuration"]),
    },
    SectionRule {
        name: "ResourceAllocationSection",
        parents: &[Collection],
        many: false,
        children: Some(&["Info", "Item"]),
    },
    SectionRule {
        name: "AnnotationSection",
        parents: &[VirtualSystem, Collection],
        many: false,
        children: Some(&["Info", "Annotation"]),
    },
    SectionRule {
        name: "ProductSection",
        parents: &[VirtualSystem, Collection],
        many: true,
        children: Some(&[
            "Info",
            "Product",
            "Vendor",
            "Version",
            "FullVersion",
            "ProductUrl",
            "VendorUrl",
            "AppUrl",
            "Icon",
            "Category",
            "Property",
        ]),
    },
    SectionRule {
        name: "EulaSection",
        parents: &[VirtualSystem, Collection],
        many: true,
        children: Some(&["Info", "License"]),
    },
    SectionRule {
        name: "StartupSection",
        parents: &[Collection],
        many: false,
        children: Some(&["Info", "Item"]),
    },
    SectionRule {
        name: "OperatingSystemSection",
        parents: &[VirtualSystem],
        many: false,
        children: Some(&["Info", "Description"]),
    },
    SectionRule {
        name: "InstallSection",
        parents: &[VirtualSystem],
        many: false,
        children: Some(&["Info"]),
    },
    SectionRule {
        name: "VirtualHardwareSection",
        parents: &[VirtualSystem],
        many: true,
        children: Some(&[
            "Info",
            "System",
            "Item",
            "StorageItem",
            "EthernetPortItem",
            "BootDeviceSection",
        ]),
    },
    SectionRule {
        name: "EnvironmentFilesSection",
        parents: &[VirtualSystem],
        many: false,
        children: None,
    },
    SectionRule {
        name: "SharedDiskSection",
        parents: &[Envelope],
        many: false,
        children: None,
    },
    SectionRule {
        name: "ScaleOutSection",
        parents: &[Collection],
        many: true,
        children: None,
    },
    SectionRule {
        name: "PlacementGroupSection",
        parents: &[Envelope],
        many: true,
        children: None,
    },
    SectionRule {
        name: "PlacementSection",
        parents: &[VirtualSystem, Collection],
        many: false,
        children: None,
    },
    SectionRule {
        name: "EncryptionSection",
        parents: &[Envelope],
        many: false,
        children: None,
    },
];

/// Collections nest deeper than this in no real envelope; the limit keeps recursion bounded.
const MAX_COLLECTION_DEPTH: usize = 16;

/// Content ids seen so far, and how many collections the walk is inside.
struct Walk<'n> {
    content_ids: HashSet<&'n str>,
    depth: usize,
}

/// Checks the shape of the whole envelope; see the module doc.
pub(crate) fn check(ovf: Ovf<'_>, envelope: Node<'_, '_>) -> Result<(), OvfError> {
    let mut walk = Walk {
        content_ids: HashSet::new(),
        depth: 0,
    };
    check_children(ovf, envelope, Parent::Envelope, "Envelope", &mut walk)
}

fn check_children<'n>(
    ovf: Ovf<'_>,
    node: Node<'n, '_>,
    parent: Parent,
    path: &str,
    walk: &mut Walk<'n>,
) -> Result<(), OvfError> {
    let child_path = |name: &str| match parent {
        Parent::Envelope => name.to_owned(),
        _ => format!("{path}/{name}"),
    };
    let mut singles: Vec<&str> = Vec::new();
    let mut has_info = false;
    let mut contents = 0;
    let mut hardware_sections = 0;
    let mut references = 0;
    for child in node.children().filter(Node::is_element) {
        let Some(local) = ovf.name_of(child) else {
            let namespace = child.tag_name().namespace();
            if matches!(namespace, Some(OVF1_NS | OVF2_NS)) {
                return Err(OvfError::invalid(
                    format!("{path}/{}", display_name(child)),
                    "mixes the OVF 1.x and OVF 2.x namespaces in one envelope",
                ));
            }
            let is_strings = parent == Parent::Envelope
                && child.tag_name().name() == "Strings"
                && namespace == Some(STRINGS_NS);
            if !is_strings {
                check_unknown(ovf, child, path)?;
            }
            continue;
        };
        match (parent, local) {
            (Parent::VirtualSystem | Parent::Collection, "Info") => has_info = true,
            (Parent::VirtualSystem | Parent::Collection, "Name") => {}
            (Parent::Envelope, "Strings") => {}
            (Parent::Envelope, "References") => {
                references += 1;
                if references > 1 {
                    return Err(OvfError::invalid(
                        "References",
                        "an envelope has one References element, not several",
                    ));
                }
            }
            (
                Parent::Envelope | Parent::Collection,
                "VirtualSystem" | "VirtualSystemCollection",
            ) => {
                contents += 1;
                check_content(ovf, child, path, parent, walk)?;
            }
            _ => match SECTIONS.iter().find(|s| s.name == local) {
                Some(rule) => {
                    let section_path = child_path(local);
                    if !rule.parents.contains(&parent) {
                        let allowed: Vec<&str> = rule.parents.iter().map(|p| p.name()).collect();
                        return Err(OvfError::Misplaced {
                            element: section_path,
                            parent: parent.name().to_owned(),
                            allowed: allowed.join(" or "),
                        });
                    }
                    if !rule.many {
                        if singles.contains(&local) {
                            return Err(OvfError::invalid(
                                section_path,
                                format!("a {} holds at most one {local}", parent.name()),
                            ));
                        }
                        singles.push(local);
                    }
                    if local == "VirtualHardwareSection" {
                        hardware_sections += 1;
                    }
                    check_section(ovf, child, rule, &section_path)?;
                }
                None => check_unknown(ovf, child, path)?,
            },
        }
    }
    match parent {
        Parent::Envelope if contents == 0 => Err(OvfError::missing(
            "Envelope",
            "VirtualSystem or VirtualSystemCollection (nothing to deploy)",
        )),
        // A collection may be empty: VMware's corpus has such Pos files (nvapp003.ovf).
        Parent::Envelope if contents > 1 => Err(OvfError::invalid(
            "Envelope",
            "holds more than one VirtualSystem or VirtualSystemCollection; DSP0243 allows one",
        )),
        // A VirtualSystem without Info is accepted: VMware's corpus has such Pos files
        // (Envelope_1_0/Pos/bare_minimal.ovf), and Info is only text for people.
        Parent::Collection if !has_info => Err(OvfError::missing(path, "Info")),
        Parent::VirtualSystem if hardware_sections == 0 => {
            Err(OvfError::missing(path, "VirtualHardwareSection"))
        }
        _ => Ok(()),
    }
}

fn check_content<'n>(
    ovf: Ovf<'_>,
    content: Node<'n, '_>,
    parent_path: &str,
    parent: Parent,
    walk: &mut Walk<'n>,
) -> Result<(), OvfError> {
    let local = ovf.name_of(content).unwrap_or("VirtualSystem");
    let kind = if local == "VirtualSystem" {
        Parent::VirtualSystem
    } else {
        Parent::Collection
    };
    let shown_parent = match parent {
        Parent::Envelope => String::new(),
        _ => format!("{parent_path}/"),
    };
    let Some(id) = ovf.attr(content, "id") else {
        return Err(OvfError::missing(
            format!("{shown_parent}{local}"),
            "ovf:id",
        ));
    };
    let path = format!("{shown_parent}{local}[id={id}]");
    if !walk.content_ids.insert(id) {
        return Err(OvfError::duplicate(path, "ovf:id", id));
    }
    if kind == Parent::Collection {
        if walk.depth == MAX_COLLECTION_DEPTH {
            return Err(OvfError::invalid(
                path,
                format!("collections nest deeper than {MAX_COLLECTION_DEPTH}"),
            ));
        }
        walk.depth += 1;
    }
    let checked = check_children(ovf, content, kind, &path, walk);
    if kind == Parent::Collection {
        walk.depth -= 1;
    }
    checked?;
    if kind == Parent::Collection {
        check_startup(ovf, content, &path)?;
    }
    Ok(())
}

/// Every StartupSection entry names a direct child of its collection.
fn check_startup(ovf: Ovf<'_>, collection: Node<'_, '_>, path: &str) -> Result<(), OvfError> {
    let children: HashSet<&str> = collection
        .children()
        .filter(|c| ovf.is(*c, "VirtualSystem") || ovf.is(*c, "VirtualSystemCollection"))
        .filter_map(|c| ovf.attr(c, "id"))
        .collect();
    for startup in ovf.children(collection, "StartupSection") {
        for item in ovf.children(startup, "Item") {
            let item_path = format!("{path}/StartupSection/Item");
            let Some(id) = ovf.attr(item, "id") else {
                return Err(OvfError::missing(item_path, "ovf:id"));
            };
            if !children.contains(&id) {
                return Err(OvfError::dangling(
                    item_path,
                    "ovf:id",
                    id,
                    "VirtualSystem or VirtualSystemCollection of the collection",
                ));
            }
        }
    }
    Ok(())
}

fn check_section(
    ovf: Ovf<'_>,
    section: Node<'_, '_>,
    rule: &SectionRule,
    path: &str,
) -> Result<(), OvfError> {
    if rule.name != "AnnotationSection" && ovf.child(section, "Info").is_none() {
        return Err(OvfError::missing(path, "Info"));
    }
    let Some(known) = rule.children else {
        return Ok(());
    };
    for child in section.children().filter(Node::is_element) {
        let understood = ovf.name_of(child).is_some_and(|name| known.contains(&name));
        if !understood {
            check_unknown(ovf, child, path)?;
        }
    }
    Ok(())
}

fn check_unknown(ovf: Ovf<'_>, node: Node<'_, '_>, parent_path: &str) -> Result<(), OvfError> {
    if ovf.required(node) {
        Err(OvfError::UnknownRequired {
            element: format!("{parent_path}/{}", display_name(node)),
        })
    } else {
        Ok(())
    }
}
