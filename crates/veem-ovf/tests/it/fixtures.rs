//! The real exports at the top of `govmomi/`: what veem reads from each, value by value.

use std::collections::BTreeMap;

use veem_model::VeeDescriptor;
use veem_ovf::OvfError;

use crate::parse_file;

/// The parts of a descriptor an envelope decides, in a comparable shape.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    cpu: u32,
    memory_mb: u64,
    /// (source, size in GiB, target)
    disks: Vec<(Option<String>, Option<u64>, String)>,
    /// (network, target)
    nics: Vec<(String, String)>,
    hypervisor: Option<String>,
}

fn seen(d: &VeeDescriptor) -> Seen {
    Seen {
        name: d.name.clone(),
        cpu: d.cpu,
        memory_mb: d.memory_mb,
        disks: d
            .disks
            .iter()
            .map(|disk| {
                (
                    disk.source.as_ref().map(ToString::to_string),
                    disk.size_gb,
                    disk.target.clone().unwrap_or_default(),
                )
            })
            .collect(),
        nics: d
            .nics
            .iter()
            .map(|n| (n.network.clone(), n.target.clone().unwrap_or_default()))
            .collect(),
        hypervisor: d.hypervisor.clone(),
    }
}

fn load(file: &str, configuration: Option<&str>) -> VeeDescriptor {
    parse_file(file, configuration)
        .unwrap_or_else(|e| panic!("{file} ({configuration:?}) must parse: {e}"))
}

fn disk(source: Option<&str>, size_gb: u64, target: &str) -> (Option<String>, Option<u64>, String) {
    (source.map(str::to_owned), Some(size_gb), target.to_owned())
}

fn nic(network: &str, target: &str) -> (String, String) {
    (network.to_owned(), target.to_owned())
}

fn properties(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn ttylinux() {
    let d = load("ttylinux.ovf", None);
    assert_eq!(
        seen(&d),
        Seen {
            name: "ttylinux-pc_i486-16.1".into(),
            cpu: 1,
            memory_mb: 32,
            // 30 MiB, rounded up to a whole GiB.
            disks: vec![disk(
                Some("image:ttylinux-pc_i486-16.1-disk1.vmdk"),
                1,
                "vda"
            )],
            nics: vec![nic("nat", "eth0")],
            hypervisor: Some("vmx-09".into()),
        }
    );
    assert!(d.context.properties.is_empty());
    assert_eq!((d.cpu_max, d.memory_max_mb), (None, None));
}

#[test]
fn properties_with_class_and_instance() {
    let d = load("properties.ovf", None);
    assert_eq!((d.cpu, d.memory_mb), (2, 2048));
    assert_eq!(d.nics[0].network, "VM-Network");
    assert_eq!(d.hypervisor.as_deref(), Some("vmx-19"));
    assert_eq!(
        d.context.properties,
        properties(&[
            ("ttylinux.ntp-server.vm", ""),
            ("ttylinux.enable_ssh.vm", "false"),
            ("ttylinux.nfs_mount.vm", "/transfer"),
            // An int written "  42  ": XML Schema drops the whitespace around numbers.
            ("ttylinux.whitespace_int.vm", "42"),
            ("vm.vmname", "vcsim_test"),
        ])
    );
}

#[test]
fn deployment_configs_default_and_each_configuration() {
    let large = load("deployment-configs.ovf", None);
    assert_eq!(
        seen(&large),
        seen(&load("deployment-configs.ovf", Some("large")))
    );
    assert_eq!(
        seen(&large),
        Seen {
            name: "deployment-configs-vm".into(),
            cpu: 8,
            memory_mb: 8192,
            disks: vec![
                disk(Some("image:system-large.vmdk"), 4, "vda"),
                disk(Some("image:model-large.vmdk"), 4, "vdb"),
                disk(None, 4, "vdc"),
            ],
            nics: vec![nic("Management", "eth0")],
            hypervisor: Some("vmx-13".into()),
        }
    );
    assert_eq!(
        large.context.properties,
        properties(&[
            ("hostname", ""),
            ("size_preset", "medium"),
            ("tier_large", "large"),
            ("scratch_space_size_large", "20"),
        ])
    );

    let small = load("deployment-configs.ovf", Some("small"));
    assert_eq!((small.cpu, small.memory_mb), (2, 2048));
    assert_eq!(
        seen(&small).disks,
        vec![disk(Some("image:system-and-model-small.vmdk"), 1, "vda")]
    );
    assert_eq!(
        small.context.properties,
        properties(&[
            ("hostname", ""),
            ("size_preset", "medium"),
            ("tier_small", "small"),
            ("scratch_space_size_small", "10"),
        ])
    );

    let medium = load("deployment-configs.ovf", Some("medium"));
    assert_eq!((medium.cpu, medium.memory_mb), (4, 4096));
    assert_eq!(
        seen(&medium).disks,
        vec![
            disk(Some("image:system-and-model-medium.vmdk"), 2, "vda"),
            disk(None, 2, "vdb"),
        ]
    );
    assert_eq!(medium.context.properties["tier_medium"], "medium");
    assert!(!medium.context.properties.contains_key("tier_large"));

    let err = parse_file("deployment-configs.ovf", Some("xl")).expect_err("no xl");
    assert!(
        matches!(&err, OvfError::UnknownConfiguration { id, .. } if id == "xl"),
        "{err}"
    );
    assert!(err.to_string().contains("small, medium, large"), "{err}");
}

#[test]
fn multiple_disks_with_a_capacity_from_a_property() {
    let large = load("multiple_disks.ovf", None);
    assert_eq!(
        seen(&large),
        Seen {
            name: "uber".into(),
            cpu: 2,
            memory_mb: 64,
            disks: vec![
                disk(Some("image:disk0.vmdk"), 40, "vda"),
                disk(Some("image:disk1.vmdk"), 50, "vdb"),
                disk(Some("image:disk2.vmdk"), 100, "vdc"),
                // ovf:capacity="${scratch_space_size_large}", a property of value 20.
                disk(None, 20, "vdd"),
            ],
            nics: vec![nic("nat", "eth0")],
            hypervisor: Some("vmx-09".into()),
        }
    );
    let small = load("multiple_disks.ovf", Some("small"));
    assert_eq!((small.cpu, small.memory_mb), (1, 32));
    assert_eq!(
        seen(&small).disks,
        vec![
            disk(Some("image:disk0.vmdk"), 30, "vda"),
            disk(Some("image:disk1.vmdk"), 30, "vdb"),
            disk(None, 10, "vdc"),
        ]
    );
}

#[test]
fn virtual_system_collection_in_ovf_2() {
    let d = load("virtualsystemcollection.ovf", None);
    assert_eq!(
        seen(&d),
        Seen {
            // The collection's first VirtualSystem, by its Name.
            name: "Virtual Appliance One".into(),
            cpu: 1,
            memory_mb: 1024,
            // A StorageItem with no HostResource: a blank disk of VirtualQuantity GiB.
            disks: vec![disk(None, 1, "vda")],
            nics: vec![nic("VS-Network", "eth0")],
            hypervisor: None,
        }
    );
    assert_eq!(
        d.context.properties,
        properties(&[("adminemail", ""), ("app_ip", "192.168.0.10")])
    );
}

#[test]
fn photon5() {
    let d = load("photon5.ovf", None);
    assert_eq!(
        seen(&d),
        Seen {
            name: "Photon OS".into(),
            cpu: 1,
            memory_mb: 2048,
            disks: vec![disk(Some("image:photon-ova-disk1.vmdk"), 16, "vda")],
            nics: vec![nic("None", "eth0")],
            hypervisor: Some("vmx-15".into()),
        }
    );
    assert!(d.context.properties.is_empty());
}

#[test]
fn virtualbox_exports() {
    let storage = load("virtualbox-vbox5-all-storage-controllers.ovf", None);
    assert_eq!(
        seen(&storage),
        Seen {
            name: "vbox5".into(),
            cpu: 1,
            memory_mb: 384,
            // 4 MiB and 10 GiB, in bytes in the envelope.
            disks: vec![
                disk(Some("image:vbox5.vmdk"), 1, "vda"),
                disk(Some("image:vbox2.vmdk"), 10, "vdb"),
            ],
            nics: vec![nic("NAT", "eth0")],
            hypervisor: Some("virtualbox-2.2".into()),
        }
    );
    let nics = load("virtualbox-vbox10-four-nics.ovf", None);
    assert_eq!((nics.cpu, nics.memory_mb), (1, 192));
    assert!(nics.disks.is_empty());
    assert_eq!(
        seen(&nics).nics,
        vec![
            nic("NAT", "eth0"),
            nic("Bridged", "eth1"),
            nic("Internal", "eth2"),
            nic("HostOnly", "eth3"),
        ]
    );
}

#[test]
fn nostalgia_megabytes_in_the_2008_syntax() {
    // No default namespace, `<Section xsi:type="ovf:DiskSection_Type">`, `MegaBytes`.
    let d = load("nostalgia-megabytes.ovf", None);
    assert_eq!(
        seen(&d),
        Seen {
            name: "Nostalgia".into(),
            cpu: 1,
            memory_mb: 16,
            disks: vec![disk(Some("image:Nostalgia-disk1.vmdk"), 1, "vda")],
            nics: vec![nic("VM-Network", "eth0")],
            hypervisor: Some("vmx-04".into()),
        }
    );
}

#[test]
fn make_delta_with_spaced_units_per_configuration() {
    let cases = [
        (None, 1, 512, "100", "medium"),
        (Some("small"), 1, 256, "10", "small"),
        (Some("medium"), 1, 512, "100", "medium"),
        // `byte * 2 ^ 30` for 1 unit; the CPU override is written without the ovf: prefix.
        (Some("large"), 2, 1024, "1000", "large"),
    ];
    for (configuration, cpu, memory_mb, sessions, deployment) in cases {
        let d = load("make_delta-spaced-units.ovf", configuration);
        assert_eq!(d.name, "SugarmCRM Server", "the collection's first system");
        assert_eq!((d.cpu, d.memory_mb), (cpu, memory_mb), "{configuration:?}");
        assert_eq!(d.context.properties["hi.concurrentSessions.1"], sessions);
        assert_eq!(
            d.context.properties["hi.deploymentConfiguration.1"],
            deployment
        );
        assert_eq!(d.context.properties["ip2"], "${webIp}");
        assert_eq!(d.nics[0].network, "Network");
    }
}

#[test]
fn complete_vs_with_vendor_sections() {
    let d = load("complete_vs.ovf", None);
    assert_eq!(d.name, "Test System");
    // An empty VirtualHardwareSection: veem's defaults.
    assert_eq!(
        (d.cpu, d.memory_mb),
        (veem_ovf::DEFAULT_CPU, veem_ovf::DEFAULT_MEMORY_MB)
    );
    assert_eq!(
        d.context.properties,
        properties(&[
            ("com.vmware.test.username.117", ""),
            ("com.vmware.test.ip0.117", ""),
            ("com.vmware.test.optional0.117", "This is the default value"),
        ])
    );
}

#[test]
fn bounds_in_the_corpus_give_a_memory_ceiling() {
    for file in [
        "xmltestfiles/VirtualHardware_1_0/Pos/valid_bound.ovf",
        "xmltestfiles/VirtualHardware_1_0/Pos/maxonly_bound.ovf",
    ] {
        let d = load(file, None);
        assert_eq!((d.memory_mb, d.memory_max_mb), (512, Some(1024)), "{file}");
    }
    let d = load(
        "xmltestfiles/VirtualHardware_1_0/Pos/minonly_bound.ovf",
        None,
    );
    assert_eq!((d.memory_mb, d.memory_max_mb), (512, None));
}

#[test]
fn every_fixture_gives_a_descriptor_that_survives_json() {
    for file in [
        "ttylinux.ovf",
        "properties.ovf",
        "deployment-configs.ovf",
        "multiple_disks.ovf",
        "virtualsystemcollection.ovf",
        "photon5.ovf",
        "virtualbox-vbox5-all-storage-controllers.ovf",
        "virtualbox-vbox10-four-nics.ovf",
        "nostalgia-megabytes.ovf",
        "make_delta-spaced-units.ovf",
        "complete_vs.ovf",
    ] {
        let d = load(file, None);
        let json = serde_json::to_string(&d).expect("serializable");
        let mut back: VeeDescriptor = serde_json::from_str(&json).expect(file);
        back.validate().expect(file);
        assert_eq!(back, d, "{file}");
    }
}
