//! A VEE whose only bootable medium is a CD boots from it, on real QEMU: the test guest as an
//! installer ISO (isolinux, El Torito), uploaded as an image and given to a VEE as its one
//! `cdrom` disk, from a JSON descriptor and from an OVF envelope's CD/DVD drive. The firmware
//! finds nothing else to boot, so the guest's boot marker on the VEE's console shows the CD
//! was attached as a CD-ROM and booted (the ISO has no MBR: as a hard disk it would not boot).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use veem_api::{InitializeRequest, VeeView};
use veem_client::OvfQuery;
use veem_model::{ControlAction as A, DiskKind, VmiState};

use crate::harness::*;

/// The test guest's installer ISO, written into `dir` from its kernel and initramfs; `None`,
/// after a loud message, where QEMU, xorriso or isolinux is missing (in CI: a failure).
fn installer_iso(dir: &Path) -> Option<PathBuf> {
    let (kernel, initrd) = guest_boot_files()?;
    if !veem_guest::testing::require(
        veem_guest::installer_iso_tools_installed(),
        "xorriso or isolinux is not installed; run scripts/install-deps",
    ) {
        return None;
    }
    let iso = dir.join("installer.iso");
    veem_guest::write_installer_iso(&kernel, &initrd, &iso)
        .unwrap_or_else(|error| panic!("the installer ISO is written: {error}"));
    Some(iso)
}

/// Activates `id`, waits for the guest to be ready, and checks on its console that it booted
/// from its CD alone: no disk of its own, so no boot recorded. Gives the console and the time
/// from ACTIVATE to ready.
async fn boot_from_the_cd(s: &Server, id: &str) -> (String, Duration) {
    let started = Instant::now();
    ctl_ok(&s.a, A::Activate, &[id]).await;
    wait_guest_ready(s, Hypervisor::Qemu, id).await;
    let ready_after = started.elapsed();
    let text = console(s, id);
    assert!(
        text.contains(&format!("{} boot=0", veem_guest::BOOT_MARKER)),
        "{text}"
    );
    assert!(
        text.contains("veem-guest: no disk of its own to write: this boot is not recorded"),
        "{text}"
    );
    (text, ready_after)
}

/// The VEE's one disk is a CD-ROM holding `image`.
fn assert_one_cdrom(view: &VeeView, image: &str) {
    let disks = &view.descriptor.disks;
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0].kind, DiskKind::Cdrom, "{disks:?}");
    assert_eq!(
        disks[0].source.as_ref().map(ToString::to_string),
        Some(format!("image:{image}")),
        "{disks:?}"
    );
}

/// Shuts the VEE down (the guest powers off on the button, as from a disk) and checks the
/// medium the SM uploaded is byte for byte what it was.
async fn shut_down_and_check_the_medium(s: &Server, id: &str, image: &str, iso: &Path) {
    ctl_ok(&s.a, A::Shutdown, &[id]).await;
    assert_eq!(state_of(&s.a, id).await, VmiState::Defined);
    assert!(
        console(s, id).contains(veem_guest::POWEROFF_MARKER),
        "the guest powered off cleanly: {}",
        console(s, id)
    );
    let back = s.dir.path().join(format!("{image}.back"));
    s.a.image_data(image, &back).await.expect("the medium");
    assert!(
        std::fs::read(&back).expect("read") == std::fs::read(iso).expect("the ISO"),
        "the medium is unchanged"
    );
}

#[tokio::test]
async fn a_vee_whose_only_disk_is_an_installer_cdrom_boots_from_it() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let Some(iso) = installer_iso(s.dir.path()) else {
        return;
    };
    s.a.push_image("installer", &iso, None)
        .await
        .expect("the installer ISO uploads");
    let request: InitializeRequest = serde_json::from_value(json!({
        "model": "BESTEFFORT", "count": 1,
        "descriptor": {"name": "installer", "cpu": 1, "memory_mb": 256,
                       "disks": [{"source": "image:installer", "kind": "cdrom"}]}}))
    .expect("a request");
    let answer = s.a.initialize(&request).await.expect("initialized");
    let id = answer.vees[0].id.to_string();
    assert_one_cdrom(&get(&s.a, &id).await, "installer");

    let (_, ready_after) = boot_from_the_cd(&s, &id).await;
    eprintln!(
        "installer CD: ACTIVATE to {} in {ready_after:.2?}",
        veem_guest::READY_MARKER
    );
    shut_down_and_check_the_medium(&s, &id, "installer", &iso).await;
}

/// An envelope whose only drive is a CD/DVD drive (ResourceType 15) holding the File `href`,
/// with one ProductSection property: the VEE gets a context disk beside its CD.
fn envelope_with_a_cd(href: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="installer" ovf:href="{href}"/></References>
  <VirtualSystem ovf:id="installer-vm">
    <Info>an OS installer, booted from its CD</Info>
    <VirtualHardwareSection><Info>hardware</Info>
      <Item><rasd:ElementName>1 vCPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256 MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>CD/DVD drive 1</rasd:ElementName><rasd:HostResource>ovf:/file/installer</rasd:HostResource>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>15</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <ProductSection><Info>the installer's settings</Info>
      <Property ovf:key="installer.greeting" ovf:type="string" ovf:value="hello"/>
    </ProductSection>
  </VirtualSystem>
</Envelope>"#
    )
}

#[tokio::test]
async fn an_ovf_cd_drive_holding_an_installer_iso_boots_the_vee_from_it() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    let Some(iso) = installer_iso(s.dir.path()) else {
        return;
    };
    // An OVF File's href names an image by its last path segment.
    s.a.push_image("installer.iso", &iso, None)
        .await
        .expect("the installer ISO uploads");
    let answer =
        s.a.initialize_ovf(
            envelope_with_a_cd("media/installer.iso"),
            &OvfQuery::default(),
        )
        .await
        .expect("the envelope is accepted");
    let id = answer.vees[0].id.to_string();
    let view = get(&s.a, &id).await;
    assert_one_cdrom(&view, "installer.iso");
    assert_eq!(
        view.descriptor.context.properties.get("installer.greeting"),
        Some(&"hello".to_owned())
    );

    let (text, ready_after) = boot_from_the_cd(&s, &id).await;
    eprintln!(
        "OVF CD/DVD drive: ACTIVATE to {} in {ready_after:.2?}",
        veem_guest::READY_MARKER
    );
    // The context disk is the guest's first virtio disk, read-only: found, not taken for its own.
    assert!(text.contains("veem-guest: context from /dev/vda"), "{text}");
    shut_down_and_check_the_medium(&s, &id, "installer.iso", &iso).await;
}
