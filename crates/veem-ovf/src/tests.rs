//! Table tests of `parse_envelope` on small envelopes written here, one rule at a time.

use std::collections::BTreeMap;

use veem_model::{DiskKind, DiskSource, ImageName};

use super::*;

const NS: &str = r#"xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf""#;

/// An envelope: `package` goes before the VirtualSystem, `items` inside its hardware section,
/// `sections` after the hardware section.
fn envelope(package: &str, items: &str, sections: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<Envelope {NS}>
  {package}
  <VirtualSystem ovf:id="vm1">
    <Info>a VM</Info>
    <VirtualHardwareSection>
      <Info>hw</Info>
      <System><vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType></System>
      {items}
    </VirtualHardwareSection>
    {sections}
  </VirtualSystem>
</Envelope>"#
    )
}

fn item(id: u32, resource_type: u32, body: &str) -> String {
    format!(
        "<Item><rasd:InstanceID>{id}</rasd:InstanceID><rasd:ResourceType>{resource_type}</rasd:ResourceType>{body}</Item>"
    )
}

fn cpu(id: u32, count: u32) -> String {
    item(
        id,
        3,
        &format!("<rasd:VirtualQuantity>{count}</rasd:VirtualQuantity>"),
    )
}

fn memory(id: u32, quantity: &str, units: Option<&str>) -> String {
    let units = units
        .map(|u| format!("<rasd:AllocationUnits>{u}</rasd:AllocationUnits>"))
        .unwrap_or_default();
    item(
        id,
        4,
        &format!("{units}<rasd:VirtualQuantity>{quantity}</rasd:VirtualQuantity>"),
    )
}

fn parse(xml: &str) -> Result<VeeDescriptor, OvfError> {
    parse_envelope(xml, &ParseOptions::default())
}

fn parse_in(xml: &str, configuration: &str) -> Result<VeeDescriptor, OvfError> {
    parse_envelope(
        xml,
        &ParseOptions {
            configuration: Some(configuration.to_owned()),
        },
    )
}

fn ok(xml: &str) -> VeeDescriptor {
    match parse(xml) {
        Ok(d) => d,
        Err(e) => panic!("{e}\n{xml}"),
    }
}

fn refused(xml: &str) -> OvfError {
    match parse(xml) {
        Ok(d) => panic!("accepted: {d:?}\n{xml}"),
        Err(e) => e,
    }
}

#[test]
fn cpu_memory_name_and_hypervisor() {
    let d = ok(&envelope(
        "",
        &(cpu(1, 4) + &memory(2, "2048", Some("byte * 2^20"))),
        "",
    ));
    assert_eq!(
        (d.name.as_str(), d.cpu, d.memory_mb),
        ("vm1", 4, 2048),
        "{d:?}"
    );
    assert_eq!(d.hypervisor.as_deref(), Some("vmx-07"));
    assert_eq!((d.cpu_max, d.memory_max_mb), (None, None));
}

#[test]
fn without_cpu_or_memory_items_the_defaults_apply() {
    let d = ok(&envelope("", "", ""));
    assert_eq!((d.cpu, d.memory_mb), (DEFAULT_CPU, DEFAULT_MEMORY_MB));
}

#[test]
fn memory_units_every_spelling() {
    let cases = [
        (Some("byte * 2^20"), "512", 512),
        (Some("byte * 2 ^ 20"), "512", 512),
        (Some("byte*2^30"), "2", 2048),
        (Some("MegaBytes"), "192", 192),
        (Some("MB"), "64", 64),
        (Some("GigaBytes"), "1", 1024),
        (Some("KiloBytes"), "2048", 2),
        (Some("KiloBytes"), "1", 1),
        (Some("byte"), "1073741824", 1024),
        (Some("BYTE * 2^20"), "8", 8),
        (None, "256", 256),
    ];
    for (units, quantity, mb) in cases {
        let d = ok(&envelope("", &memory(2, quantity, units), ""));
        assert_eq!(d.memory_mb, mb, "{units:?} {quantity}");
    }
}

#[test]
fn the_error_names_the_item_and_the_bad_value() {
    let err = refused(&envelope("", &memory(3, "abc", None), ""));
    assert_eq!(
        err.to_string(),
        "VirtualHardwareSection/Item[InstanceID=3]: rasd:VirtualQuantity \"abc\" is not a number"
    );
    assert_eq!(err.element(), "VirtualHardwareSection/Item[InstanceID=3]");

    let err = refused(&envelope("", &memory(2, "1", Some("parsecs")), ""));
    assert_eq!(err.element(), "VirtualHardwareSection/Item[InstanceID=2]");
    assert!(err.to_string().contains("\"parsecs\""), "{err}");
}

#[test]
fn bounds_give_the_ceilings() {
    let items = cpu(1, 2)
        + &memory(2, "512", Some("MegaBytes"))
        + r#"<Item ovf:bound="max"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
<Item ovf:bound="min"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:Reservation>256</rasd:Reservation></Item>
<Item ovf:bound="max"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>GigaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>"#;
    let d = ok(&envelope("", &items, ""));
    assert_eq!((d.cpu, d.cpu_max), (2, Some(8)));
    assert_eq!((d.memory_mb, d.memory_max_mb), (512, Some(4096)));
}

#[test]
fn a_max_reservation_is_a_memory_ceiling_in_the_normal_items_units() {
    let items = memory(2, "512", Some("MegaBytes"))
        + r#"<Item ovf:bound="max"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:Reservation>1024</rasd:Reservation></Item>"#;
    let d = ok(&envelope("", &items, ""));
    assert_eq!(d.memory_max_mb, Some(1024));
}

#[test]
fn bad_bounds_are_refused() {
    let orphan = r#"<Item ovf:bound="max"><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>9</rasd:VirtualQuantity></Item>"#;
    let err = refused(&envelope("", &(memory(2, "512", None) + orphan), ""));
    assert_eq!(
        err.element(),
        "VirtualHardwareSection/Item[InstanceID=9,bound=max]"
    );

    let twice = r#"<Item ovf:bound="max"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>9</rasd:VirtualQuantity></Item>"#;
    let err = refused(&envelope("", &(memory(2, "512", None) + twice + twice), ""));
    assert!(matches!(err, OvfError::Duplicate { .. }), "{err}");

    let odd = r#"<Item ovf:bound="most"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType></Item>"#;
    let err = refused(&envelope("", &(memory(2, "512", None) + odd), ""));
    assert!(err.to_string().contains("\"most\""), "{err}");

    let below = r#"<Item ovf:bound="max"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>128</rasd:VirtualQuantity></Item>"#;
    let err = refused(&envelope("", &(memory(2, "512", None) + below), ""));
    assert_eq!(err.element(), "memory_max_mb");
}

const OPTIONS: &str = r#"<DeploymentOptionSection><Info>sizes</Info>
  <Configuration ovf:id="small"><Label>S</Label><Description>s</Description></Configuration>
  <Configuration ovf:id="large" ovf:default="true"><Label>L</Label><Description>l</Description></Configuration>
  <Configuration ovf:id="huge"><Label>H</Label><Description>h</Description></Configuration>
</DeploymentOptionSection>"#;

fn sized_items() -> String {
    // One default CPU Item overridden per configuration (same InstanceID, DSP0243 merging),
    // and memory Items that exist only in some configurations.
    cpu(1, 1)
        + r#"<Item ovf:configuration="large huge"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
<Item ovf:configuration="small"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
<Item ovf:configuration="large huge"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
<Item ovf:configuration="huge"><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>64</rasd:VirtualQuantity></Item>"#
}

#[test]
fn configurations_pick_items() {
    let xml = envelope(OPTIONS, &sized_items(), "");
    let default = ok(&xml);
    assert_eq!(
        (default.cpu, default.memory_mb),
        (4, 8192),
        "default is large"
    );
    let small = parse_in(&xml, "small").expect("small");
    assert_eq!((small.cpu, small.memory_mb), (1, 256));
    // The huge Item overrides VirtualQuantity and keeps the large Item's units (GiB).
    let huge = parse_in(&xml, "huge").expect("huge");
    assert_eq!((huge.cpu, huge.memory_mb), (4, 64 * 1024));
}

#[test]
fn without_a_default_the_first_configuration_is_in_force() {
    let options = OPTIONS.replace(r#" ovf:default="true""#, "");
    let d = ok(&envelope(&options, &sized_items(), ""));
    assert_eq!((d.cpu, d.memory_mb), (1, 256));
}

#[test]
fn unknown_configurations_are_refused() {
    let xml = envelope(OPTIONS, &sized_items(), "");
    let err = parse_in(&xml, "medium").expect_err("no medium");
    assert!(
        matches!(&err, OvfError::UnknownConfiguration { id, defined } if id == "medium" && defined == "small, large, huge"),
        "{err}"
    );
    assert_eq!(err.element(), "DeploymentOptionSection");

    let err = parse_in(&envelope("", &cpu(1, 1), ""), "small").expect_err("no options");
    assert!(
        err.to_string().contains("no DeploymentOptionSection"),
        "{err}"
    );

    let stray = r#"<Item ovf:configuration="tiny"><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>"#;
    let err = refused(&envelope(OPTIONS, stray, ""));
    assert!(
        matches!(&err, OvfError::Dangling { value, .. } if value == "tiny"),
        "{err}"
    );
}

#[test]
fn two_default_items_with_one_instance_id_are_refused() {
    let err = refused(&envelope("", &(cpu(1, 1) + &cpu(1, 2)), ""));
    assert!(
        matches!(&err, OvfError::Duplicate { value, .. } if value == "1"),
        "{err}"
    );
    let err = refused(&envelope("", &(cpu(1, 1) + &cpu(2, 2)), ""));
    assert!(err.to_string().contains("a second CPU Item"), "{err}");
    let err = refused(&envelope("", &(cpu(6, 1) + &memory(6, "1", None)), ""));
    assert!(err.to_string().contains("differs"), "{err}");
}

const PACKAGE: &str = r#"<References>
  <File ovf:id="f1" ovf:href="disks/system.vmdk" ovf:size="1000"/>
  <File ovf:id="f2" ovf:href="https://images.example.com/data.qcow2"/>
  <File ovf:id="iso" ovf:href="tools.iso"/>
</References>
<DiskSection><Info>disks</Info>
  <Disk ovf:diskId="system" ovf:fileRef="f1" ovf:capacity="329197568" ovf:format="vmdk"/>
  <Disk ovf:diskId="data" ovf:fileRef="f2" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^30" ovf:format="qcow2"/>
  <Disk ovf:diskId="scratch" ovf:capacity="${scratch}" ovf:capacityAllocationUnits="byte * 2^30"/>
</DiskSection>
<NetworkSection><Info>nets</Info><Network ovf:name="VM Network"><Description>d</Description></Network></NetworkSection>"#;

fn disk_item(id: u32, host_resource: &str) -> String {
    item(
        id,
        17,
        &format!("<rasd:HostResource>{host_resource}</rasd:HostResource>"),
    )
}

fn image(name: &str) -> Option<DiskSource> {
    Some(DiskSource::Image(ImageName::new(name).expect("valid")))
}

#[test]
fn disks_cdroms_and_nics() {
    let items = disk_item(10, "ovf:/disk/system")
        + &disk_item(11, "/disk/data")
        + &item(
            12,
            15,
            "<rasd:HostResource>ovf:/file/iso</rasd:HostResource>",
        )
        + &item(13, 15, "")
        + &item(14, 10, "<rasd:Connection>VM Network</rasd:Connection>");
    let d = ok(&envelope(PACKAGE, &items, ""));
    let disks: Vec<_> = d
        .disks
        .iter()
        .map(|d| {
            (
                d.source.clone(),
                d.size_gb,
                d.target.as_deref(),
                d.clone,
                d.kind,
            )
        })
        .collect();
    assert_eq!(
        disks,
        vec![
            (
                image("system.vmdk"),
                Some(1),
                Some("vda"),
                true,
                DiskKind::Disk
            ),
            (
                Some(DiskSource::Url(
                    "https://images.example.com/data.qcow2".to_owned()
                )),
                Some(8),
                Some("vdb"),
                true,
                DiskKind::Disk
            ),
            // The CD drive's medium: a read-only CD-ROM, never a copy nor a second hard disk.
            (
                image("tools.iso"),
                None,
                Some("vdc"),
                false,
                DiskKind::Cdrom
            ),
        ]
    );
    assert_eq!(d.nics.len(), 1);
    assert_eq!(d.nics[0].network, "VM-Network");
    assert_eq!(d.nics[0].target.as_deref(), Some("eth0"));
}

#[test]
fn a_dvd_drive_holding_a_disk_with_a_file_is_a_cdrom_and_one_without_media_is_ignored() {
    let product = r#"<ProductSection><Info>p</Info>
      <Property ovf:key="scratch" ovf:type="uint32" ovf:value="20"/></ProductSection>"#;
    let items = item(
        10,
        16,
        "<rasd:HostResource>ovf:/disk/system</rasd:HostResource>",
    ) + &item(
        11,
        15,
        "<rasd:HostResource>ovf:/disk/scratch</rasd:HostResource>",
    ) + &disk_item(12, "ovf:/disk/scratch");
    let d = ok(&envelope(PACKAGE, &items, product));
    let disks: Vec<_> = d
        .disks
        .iter()
        .map(|d| (d.source.clone(), d.size_gb, d.kind, d.clone))
        .collect();
    assert_eq!(
        disks,
        vec![
            (image("system.vmdk"), None, DiskKind::Cdrom, false),
            (None, Some(20), DiskKind::Disk, true),
        ]
    );
}

#[test]
fn a_capacity_can_come_from_a_property() {
    let product = r#"<ProductSection><Info>p</Info>
      <Property ovf:key="scratch" ovf:type="uint32" ovf:value="20"/></ProductSection>"#;
    let d = ok(&envelope(
        PACKAGE,
        &disk_item(10, "ovf:/disk/scratch"),
        product,
    ));
    assert_eq!(
        (d.disks[0].source.as_ref(), d.disks[0].size_gb),
        (None, Some(20))
    );
    assert_eq!(d.context.properties["scratch"], "20");

    let err = refused(&envelope(PACKAGE, &disk_item(10, "ovf:/disk/scratch"), ""));
    assert_eq!(err.element(), "DiskSection/Disk[diskId=scratch]");
}

#[test]
fn dangling_references_are_refused() {
    let cases = [
        (
            disk_item(10, "ovf:/disk/nosuch"),
            "VirtualHardwareSection/Item[InstanceID=10]",
        ),
        (
            disk_item(10, "ovf:/file/nosuch"),
            "VirtualHardwareSection/Item[InstanceID=10]",
        ),
        (
            disk_item(10, "somewhere"),
            "VirtualHardwareSection/Item[InstanceID=10]",
        ),
        (
            item(14, 10, "<rasd:Connection>Other</rasd:Connection>"),
            "VirtualHardwareSection/Item[InstanceID=14]",
        ),
        (
            item(14, 10, ""),
            "VirtualHardwareSection/Item[InstanceID=14]",
        ),
    ];
    for (items, element) in cases {
        let err = refused(&envelope(PACKAGE, &items, ""));
        assert_eq!(err.element(), element, "{err}");
    }
    let bad_ref = PACKAGE.replace(r#"ovf:fileRef="f2""#, r#"ovf:fileRef="f9""#);
    let err = refused(&envelope(&bad_ref, "", ""));
    assert_eq!(err.element(), "DiskSection/Disk[diskId=data]");
}

#[test]
fn optional_items_veem_cannot_map_are_ignored() {
    let optional = r#"<Item ovf:required="false"><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceType>89</rasd:ResourceType></Item>
<Item ovf:required="false"><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType><rasd:Connection>Nowhere</rasd:Connection></Item>"#;
    let d = ok(&envelope(PACKAGE, optional, ""));
    assert!(d.nics.is_empty());
    let required = item(7, 89, "");
    let err = refused(&envelope(PACKAGE, &required, ""));
    assert!(err.to_string().contains("ResourceType 89"), "{err}");
    // Controllers, sound, USB: left to the hypervisor driver, also when required.
    let devices = item(3, 6, "") + &item(4, 35, "") + &item(5, 23, "");
    let d = ok(&envelope(PACKAGE, &devices, ""));
    assert!(d.disks.is_empty() && d.nics.is_empty());
}

#[test]
fn unknown_elements_must_be_marked_optional() {
    let marked = item(
        3,
        6,
        r#"<vmw:Config ovf:required="false" vmw:key="k" vmw:value="v"/>"#,
    );
    ok(&envelope("", &marked, ""));
    let vendor = item(3, 6, r#"<vmw:Config vmw:key="k" vmw:value="v"/>"#);
    ok(&envelope("", &vendor, ""));
    let unknown_cim = item(3, 6, "<rasd:Colour>red</rasd:Colour>");
    let err = refused(&envelope("", &unknown_cim, ""));
    assert_eq!(
        err.element(),
        "VirtualHardwareSection/Item[InstanceID=3]/rasd:Colour"
    );
    let unknown_section = r#"<FancySection><Info>x</Info></FancySection>"#;
    let err = refused(&envelope("", "", unknown_section));
    assert_eq!(err.element(), "VirtualSystem[id=vm1]/FancySection");
    ok(&envelope(
        "",
        "",
        r#"<FancySection ovf:required="false"><Info>x</Info></FancySection>"#,
    ));
}

#[test]
fn sections_must_be_where_dsp0243_puts_them() {
    let err = refused(&envelope(
        "",
        "",
        r#"<DiskSection><Info>d</Info></DiskSection>"#,
    ));
    assert!(matches!(err, OvfError::Misplaced { .. }), "{err}");
    let err = refused(&envelope(
        r#"<ProductSection><Info>p</Info></ProductSection>"#,
        "",
        "",
    ));
    assert_eq!(err.element(), "ProductSection");
    let err = refused(&envelope(
        "",
        "",
        r#"<OperatingSystemSection ovf:id="1"><Description>d</Description></OperatingSystemSection>"#,
    ));
    assert_eq!(
        err.element(),
        "VirtualSystem[id=vm1]/OperatingSystemSection"
    );
    assert!(err.to_string().contains("missing Info"), "{err}");
}

#[test]
fn properties_keys_values_and_types() {
    let products = r#"<ProductSection><Info>p</Info>
  <Property ovf:key="plain" ovf:type="string" ovf:value="a &amp; b"/>
  <Property ovf:key="empty" ovf:type="string"/>
  <Property ovf:key="size" ovf:type="uint16" ovf:value="10">
    <Value ovf:value="20" ovf:configuration="large"/>
    <Value ovf:value="30" ovf:configuration="huge"/>
  </Property>
  <Property ovf:key="only_small" ovf:type="boolean" ovf:value="True" ovf:configuration="small"/>
</ProductSection>
<ProductSection ovf:class="org.app" ovf:instance="2"><Info>p</Info>
  <Property ovf:key="ip" ovf:type="string" ovf:value="10.0.0.2"/>
</ProductSection>
<ProductSection ovf:class="vm"><Info>p</Info>
  <Property ovf:key="name" ovf:type="string" ovf:value="x"/>
</ProductSection>"#;
    let xml = envelope(OPTIONS, "", products);
    let large = ok(&xml).context.properties;
    let expected: BTreeMap<String, String> = [
        ("plain", "a & b"),
        ("empty", ""),
        ("size", "20"),
        ("org.app.ip.2", "10.0.0.2"),
        ("vm.name", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(large, expected);
    let small = parse_in(&xml, "small").expect("small").context.properties;
    assert_eq!(small["size"], "10");
    assert_eq!(small["only_small"], "True");
}

#[test]
fn bad_properties_are_refused() {
    let cases = [
        (r#"<Property ovf:type="string"/>"#, "missing ovf:key"),
        (r#"<Property ovf:key="k"/>"#, "missing ovf:type"),
        (r#"<Property ovf:key="k" ovf:type="float"/>"#, "\"float\""),
        (
            r#"<Property ovf:key="k" ovf:type="uint8" ovf:value="300"/>"#,
            "not a valid uint8",
        ),
        (
            r#"<Property ovf:key="k" ovf:type="string"/><Property ovf:key="k" ovf:type="string"/>"#,
            "used more than once",
        ),
    ];
    for (properties, reason) in cases {
        let xml = envelope(
            "",
            "",
            &format!("<ProductSection><Info>p</Info>{properties}</ProductSection>"),
        );
        let err = refused(&xml);
        assert!(err.to_string().contains(reason), "{err} !~ {reason}");
        assert!(
            err.element()
                .starts_with("VirtualSystem[id=vm1]/ProductSection"),
            "{err}"
        );
    }
}

#[test]
fn the_hypervisor_is_one_word_and_prefers_kvm() {
    let cases = [
        ("vmx-04 xen-3", Some("vmx-04")),
        ("foobar, vmx-04, xen3", Some("foobar")),
        ("xen3, kvm", Some("kvm")),
        ("virtualbox-2.2", Some("virtualbox-2.2")),
        ("", None),
    ];
    for (types, hypervisor) in cases {
        let xml = envelope("", "", "").replace("vmx-07", types);
        assert_eq!(ok(&xml).hypervisor.as_deref(), hypervisor, "{types:?}");
    }
}

#[test]
fn the_name_element_wins_over_the_id() {
    let xml = envelope("", "", "").replace(
        "<Info>a VM</Info>",
        "<Info>a VM</Info><Name>Web server</Name>",
    );
    assert_eq!(ok(&xml).name, "Web server");
}

#[test]
fn ovf_2_envelopes_are_read() {
    let xml = envelope("", &cpu(1, 2), "").replace("ovf/envelope/1", "ovf/envelope/2");
    assert_eq!(ok(&xml).cpu, 2);
}

#[test]
fn other_namespaces_are_refused_by_name() {
    let xml = envelope("", "", "").replace(
        "http://schemas.dmtf.org/ovf/envelope/1",
        "http://www.vmware.com/schema/ovf/1/envelope",
    );
    let err = refused(&xml);
    assert!(err.to_string().contains("OVF 0.9"), "{err}");
    let xml = envelope("", "", "").replace(
        "http://schemas.dmtf.org/ovf/envelope/1",
        "urn:something-else",
    );
    assert!(matches!(refused(&xml), OvfError::UnknownNamespace { .. }));
    let err = refused("<html><body/></html>");
    assert_eq!(err.element(), "html");
}

#[test]
fn a_collection_deploys_its_first_virtual_system_with_its_properties() {
    let xml = format!(
        r#"<Envelope {NS}>
  <VirtualSystemCollection ovf:id="app">
    <Info>two VMs</Info>
    <ProductSection><Info>p</Info><Property ovf:key="shared" ovf:type="string" ovf:value="s"/></ProductSection>
    <VirtualSystem ovf:id="web"><Info>w</Info><VirtualHardwareSection><Info>h</Info>{}</VirtualHardwareSection></VirtualSystem>
    <VirtualSystem ovf:id="db"><Info>d</Info><VirtualHardwareSection><Info>h</Info>{}</VirtualHardwareSection></VirtualSystem>
  </VirtualSystemCollection>
</Envelope>"#,
        cpu(1, 2),
        cpu(1, 8)
    );
    let d = ok(&xml);
    assert_eq!((d.name.as_str(), d.cpu), ("web", 2));
    assert_eq!(d.context.properties["shared"], "s");
    // A broken second system breaks the envelope.
    let broken = xml.replace(&cpu(1, 8), &memory(2, "x", None));
    assert!(parse(&broken).is_err());
}

#[test]
fn an_empty_collection_is_valid_but_has_nothing_to_deploy() {
    let xml = format!(
        r#"<Envelope {NS}><VirtualSystemCollection ovf:id="empty"><Info>i</Info></VirtualSystemCollection></Envelope>"#
    );
    validate_envelope(&xml, &ParseOptions::default()).expect("valid OVF");
    let err = refused(&xml);
    assert_eq!(err.element(), "VirtualSystemCollection[id=empty]");
    assert!(err.to_string().contains("nothing to deploy"), "{err}");
}

#[test]
fn dtds_are_refused_before_parsing() {
    let xml = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE Envelope [<!ENTITY e \"x\">]>{}",
        envelope("", "", "").trim_start_matches("<?xml version=\"1.0\"?>")
    );
    let err = refused(&xml);
    assert!(matches!(err, OvfError::DtdNotAllowed), "{err}");
    assert!(err.to_string().contains("DTDs are not allowed"), "{err}");
    assert_eq!(err.element(), "DOCTYPE");
}

#[test]
fn oversized_input_is_refused_unread() {
    let xml = " ".repeat(MAX_ENVELOPE_BYTES + 1);
    assert!(matches!(refused(&xml), OvfError::TooLarge { .. }));
}

#[test]
fn descriptor_rules_map_to_their_field() {
    let err = refused(&envelope("", &cpu(1, 5000), ""));
    assert!(matches!(err, OvfError::Descriptor(_)), "{err}");
    assert_eq!(err.element(), "cpu");
}
