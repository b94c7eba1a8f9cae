//! The use cases of Section 2.2 of the RESERVOIR VMI paper, by name (networks come later).

use veem_api::{PatchApplied, PatchRequest};
use veem_model::{ControlAction as A, DiskSource, DiskSpec, ImageName, InitModel, VmiState};

use crate::harness::*;

on_every_driver!(
    uc_2_2_1_simple_service_deployment,
    uc_2_2_2_service_redeployment,
    uc_2_2_3_service_component_replication,
    uc_2_2_4_service_shutdown_keeps_the_disk_for_analysis,
    uc_2_2_5_service_restart_with_a_patched_image,
    uc_2_2_6_update_vees_memory_live,
    uc_2_2_7_stopping_a_replicated_vee,
    uc_2_2_8_restarting_a_stopped_vee_keeps_anti_affinity,
    uc_2_2_9_removing_all_data_related_to_a_service,
);

/// Uploads an image as sm-a: a stand-in on sim, the bootable test guest on QEMU.
async fn push(s: &Server, driver: Hypervisor, name: &str) -> Vec<u8> {
    let bytes = match driver {
        Hypervisor::Sim => format!("{name}: a stand-in image").into_bytes(),
        Hypervisor::Qemu => std::fs::read(guest_image().expect("QEMU is here")).expect("the guest"),
    };
    s.a.push_image_bytes(name, bytes.clone())
        .await
        .expect("upload");
    bytes
}

pub(crate) fn with_image(name: &str, image: &str) -> veem_model::VeeDescriptor {
    let mut d = small(name);
    d.disks.push(DiskSpec {
        source: Some(DiskSource::Image(ImageName::new(image).expect("valid"))),
        size_gb: Some(1),
        target: Some("vda".into()),
        clone: true,
        kind: veem_model::DiskKind::Disk,
    });
    d
}

pub(crate) fn db(name: &str, image: &str) -> veem_model::VeeDescriptor {
    let mut d = with_image(name, image);
    d.memory_mb = 1024;
    d.memory_max_mb = Some(8192);
    d.tags = vec!["database".into()];
    d.anti_affinity = vec!["database".into()];
    d
}

async fn uc_2_2_1_simple_service_deployment(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "web-v1").await;
    let id = init_one(&s.a, with_image("web", "web-v1")).await;
    assert_eq!(state_of(&s.a, &id).await, VmiState::Defined);
    let submitted = s.a.submit(std::slice::from_ref(&id)).await.expect("submit");
    assert_eq!(submitted.submitted, vec![id.clone()]);
    let v = wait_state(&s.a, &id, VmiState::Active).await;
    assert!(v.host.is_some(), "an ACTIVE VEE names its host");
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let host = hosts
        .hosts
        .iter()
        .find(|h| Some(&h.id) == v.host.as_ref())
        .expect("its host is listed");
    assert!(host.vees.contains(&id));
    assert_eq!(host.used.cpus, 1);
}

async fn uc_2_2_2_service_redeployment(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "web-v1").await;
    let old = init_one(&s.a, with_image("web", "web-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&old]).await;

    // Two new images: the database now runs in a component of its own.
    push(&s, driver, "web-v2").await;
    push(&s, driver, "db-v1").await;
    let new_db = init_one(&s.a, db("db", "db-v1")).await;
    let new_web = init_one(&s.a, with_image("web", "web-v2")).await;
    // Ordered: the database first, then the web tier that needs it, then the old one goes.
    ctl_ok(&s.a, A::Activate, &[&new_db, &new_web]).await;
    ctl_ok(&s.a, A::Destroy, &[&old]).await;

    let db_events = s.a.vee_events(&new_db).await.expect("events");
    let web_events = s.a.vee_events(&new_web).await.expect("events");
    let active_at = |events: &veem_api::EventList| {
        events
            .events
            .iter()
            .find(|e| e.to == VmiState::Active)
            .map(|e| e.t_ms)
            .expect("became ACTIVE")
    };
    assert!(
        active_at(&db_events) <= active_at(&web_events),
        "the list order is kept"
    );
    assert_eq!(state_of(&s.a, &new_web).await, VmiState::Active);
    assert_eq!(state_of(&s.a, &new_db).await, VmiState::Active);
    assert_eq!(state_of(&s.a, &old).await, VmiState::Destroyed);
}

async fn uc_2_2_3_service_component_replication(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "db-v1").await;
    let original = init_one(&s.a, db("db", "db-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&original]).await;
    let replica = init_one(&s.a, db("db-replica", "db-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&replica]).await;
    let o = get(&s.a, &original).await;
    let r = get(&s.a, &replica).await;
    assert_eq!(
        o.descriptor.disks[0].source, r.descriptor.disks[0].source,
        "same master image"
    );
    // Pack would put the replica beside the original; anti-affinity forbids it.
    assert!(o.host.is_some() && r.host.is_some());
    assert_ne!(
        o.host, r.host,
        "the replica never runs on the original's host"
    );
}

async fn uc_2_2_4_service_shutdown_keeps_the_disk_for_analysis(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    let image = push(&s, driver, "web-v1").await;
    let web = init_one(&s.a, with_image("web", "web-v1")).await;
    let dbv = init_one(&s.a, with_image("db", "web-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&web, &dbv]).await;
    // The guests write to their disks at boot; let them.
    wait_guest_ready(&s, driver, &web).await;
    wait_guest_ready(&s, driver, &dbv).await;

    // Immediately: DESTROY ends both at once; the disks stay until purge.
    ctl_ok(&s.a, A::Destroy, &[&web]).await;
    ctl_ok(&s.a, A::Shutdown, &[&dbv]).await;
    assert_eq!(state_of(&s.a, &web).await, VmiState::Destroyed);
    assert_eq!(state_of(&s.a, &dbv).await, VmiState::Defined);
    assert_eq!(get(&s.a, &web).await.host, None);

    for id in [&web, &dbv] {
        let out = s.dir.path().join(format!("{id}-vda.qcow2"));
        let n = s.a.download_disk(id, "vda", &out).await.expect("download");
        let bytes = std::fs::read(&out).expect("downloaded");
        assert_eq!(n as usize, bytes.len());
        match driver {
            // The sim driver's clone is a copy of the image: the owners get its bytes.
            Hypervisor::Sim => assert_eq!(bytes, image),
            // A standalone qcow2 holding what the guest wrote.
            Hypervisor::Qemu => {
                assert!(bytes.starts_with(b"QFI\xfb"), "a qcow2");
                let log = read_guest_file(&out, "/veem/boot.log");
                assert!(log.starts_with("boot 1"), "the guest's own write: {log:?}");
            }
        }
    }
    // Not while it runs.
    let running = init_one(&s.a, with_image("x", "web-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&running]).await;
    let err =
        s.a.download_disk(&running, "vda", &s.dir.path().join("x"))
            .await
            .expect_err("ACTIVE");
    assert_eq!(err.code(), Some("wrong_state"));
}

async fn uc_2_2_5_service_restart_with_a_patched_image(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "web-v1").await;
    let old = init_one(&s.a, with_image("web", "web-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&old]).await;
    ctl_ok(&s.a, A::Destroy, &[&old]).await;
    // The patched version is uploaded and put into use at once.
    push(&s, driver, "web-v1-patched").await;
    let new = init_one(&s.a, with_image("web", "web-v1-patched")).await;
    ctl_ok(&s.a, A::Activate, &[&new]).await;
    assert_eq!(state_of(&s.a, &new).await, VmiState::Active);
    // The old image is still held by the destroyed VEE's disk until it is purged.
    let err = s.a.delete_image("web-v1").await.expect_err("in use");
    assert_eq!(err.code(), Some("in_use"));
    s.a.purge_vee(&old).await.expect("purge");
    s.a.delete_image("web-v1").await.expect("no longer in use");
}

async fn uc_2_2_6_update_vees_memory_live(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "db-v1").await;
    let original = init_one(&s.a, db("db", "db-v1")).await;
    let replica = init_one(&s.a, db("db-replica", "db-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&original, &replica]).await;
    for id in [&original, &replica] {
        let before = get(&s.a, id).await;
        let patched =
            s.a.patch_vee(
                id,
                &PatchRequest {
                    memory_mb: Some(8192),
                    cpu: None,
                },
            )
            .await
            .expect("raised to 8 GB");
        assert_eq!(patched.applied, PatchApplied::Live, "without a restart");
        assert_eq!(patched.vee.descriptor.memory_mb, 8192);
        assert_eq!(patched.vee.state, VmiState::Active);
        assert_eq!(patched.vee.host, before.host, "same host, not restarted");
    }
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let used: u64 = hosts.hosts.iter().map(|h| h.used.memory_mb).sum();
    assert_eq!(used, 2 * 8192, "placement books the new size");
    // Beyond the ceiling fixed at definition: refused, nothing changes.
    let err =
        s.a.patch_vee(
            &original,
            &PatchRequest {
                memory_mb: Some(9000),
                cpu: None,
            },
        )
        .await
        .expect_err("over memory_max_mb");
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("memory_max_mb"), "{err}");
    assert_eq!(get(&s.a, &original).await.descriptor.memory_mb, 8192);
}

#[tokio::test]
async fn a_raise_the_host_cannot_hold_is_refused_not_overbooked() {
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        ..Setup::default()
    })
    .await;
    let mut big = small("big");
    big.memory_mb = 4096;
    big.memory_max_mb = Some(16384);
    let mut neighbour = small("neighbour");
    neighbour.memory_mb = 10240;
    let big = init_one(&s.a, big).await;
    let neighbour = init_one(&s.a, neighbour).await;
    ctl_ok(&s.a, A::Activate, &[&big, &neighbour]).await;
    let err =
        s.a.patch_vee(
            &big,
            &PatchRequest {
                memory_mb: Some(8192),
                cpu: None,
            },
        )
        .await
        .expect_err("4096 + 10240 fill the host");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("insufficient_resources"))
    );
    assert_eq!(
        get(&s.a, &big).await.descriptor.memory_mb,
        4096,
        "nothing changed"
    );
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert_eq!(hosts.hosts[0].used.memory_mb, 4096 + 10240);
    // Within what is free, it works; a DEFINED VEE takes the change at its next activation.
    let ok =
        s.a.patch_vee(
            &big,
            &PatchRequest {
                memory_mb: Some(6144),
                cpu: None,
            },
        )
        .await
        .expect("fits");
    assert_eq!(ok.applied, PatchApplied::Live);
    ctl_ok(&s.a, A::Shutdown, &[&big]).await;
    let later =
        s.a.patch_vee(
            &big,
            &PatchRequest {
                memory_mb: Some(16384),
                cpu: None,
            },
        )
        .await
        .expect("defined");
    assert_eq!(later.applied, PatchApplied::NextActivation);
    let r =
        s.a.update_state(&veem_api::UpdateStateRequest {
            order: veem_api::Order::List,
            ids: vec![big.clone()],
            action: A::Activate,
            timeout_ms: Some(300),
        })
        .await
        .expect("answers");
    assert_eq!(
        r.failed.first().map(|f| f.error.as_str()),
        Some("pending"),
        "16384 MB do not fit beside the neighbour"
    );
}

async fn uc_2_2_7_stopping_a_replicated_vee(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "db-v1").await;
    let original = init_one(&s.a, db("db", "db-v1")).await;
    let replica = init_one(&s.a, db("db-replica", "db-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&original, &replica]).await;
    let host = get(&s.a, &replica).await.host.expect("placed");
    // Stopped to save costs, restartable: SUSPEND frees the host and keeps the memory.
    ctl_ok(&s.a, A::Suspend, &[&replica]).await;
    let v = get(&s.a, &replica).await;
    assert_eq!(v.state, VmiState::Suspended);
    assert_eq!(v.host, None);
    let hosts = s.ops.list_hosts().await.expect("hosts");
    let h = hosts.hosts.iter().find(|h| h.id == host).expect("listed");
    assert!(!h.vees.contains(&replica), "its host is freed");
    assert_eq!(h.used.memory_mb, 0);
}

async fn uc_2_2_8_restarting_a_stopped_vee_keeps_anti_affinity(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "db-v1").await;
    let original = init_one(&s.a, db("db", "db-v1")).await;
    let replica = init_one(&s.a, db("db-replica", "db-v1")).await;
    ctl_ok(&s.a, A::Activate, &[&original, &replica]).await;
    // Stopped by SHUTDOWN (back to DEFINED), then ACTIVATEd again: placed anew.
    ctl_ok(&s.a, A::Shutdown, &[&replica]).await;
    assert_eq!(state_of(&s.a, &replica).await, VmiState::Defined);
    // Pack prefers the fullest host, the original's, were anti-affinity not to forbid it.
    ctl_ok(&s.a, A::Activate, &[&replica]).await;
    let o = get(&s.a, &original).await;
    let r = get(&s.a, &replica).await;
    assert_eq!(r.state, VmiState::Active);
    assert_ne!(
        o.host, r.host,
        "again on a different host than the original"
    );
    // And from SUSPENDED too.
    ctl_ok(&s.a, A::Suspend, &[&replica]).await;
    ctl_ok(&s.a, A::Activate, &[&replica]).await;
    assert_ne!(get(&s.a, &replica).await.host, o.host);
}

async fn uc_2_2_9_removing_all_data_related_to_a_service(driver: Hypervisor) {
    let Some(s) = Server::start_on(driver).await else {
        return;
    };
    push(&s, driver, "web-v1").await;
    let ids = init(&s.a, InitModel::Besteffort, 3, with_image("web", "web-v1")).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ctl_ok(&s.a, A::Activate, &refs).await;
    ctl_ok(&s.a, A::Suspend, &refs[..1]).await;
    for id in &ids {
        assert!(
            s.data_dir().join("vees").join(id).exists(),
            "{id} has files"
        );
    }
    for id in &ids {
        s.a.purge_vee(id).await.expect("purge");
    }
    let digest = s.a.get_image("web-v1").await.expect("the image").sha256;
    s.a.delete_image("web-v1").await.expect("image removed");
    for id in &ids {
        let err = s.a.get_vee(id).await.expect_err("gone");
        assert_eq!(err.status(), Some(404));
        assert!(
            !s.data_dir().join("vees").join(id).exists(),
            "{id}: every byte gone"
        );
    }
    // Its bytes go with it, unless another image has the same (the guest `tiny` on qemu).
    let digest = digest.expect("a digest");
    let named_elsewhere =
        s.a.list_images()
            .await
            .expect("images")
            .images
            .iter()
            .any(|i| i.sha256.as_ref() == Some(&digest));
    assert_eq!(
        veem_layout::blob_path(&s.data_dir(), &digest).exists(),
        named_elsewhere
    );
    let hosts = s.ops.list_hosts().await.expect("hosts");
    assert!(hosts
        .hosts
        .iter()
        .all(|h| h.vees.is_empty() && h.used.cpus == 0));
    // Ids are never reused.
    let next = init_one(&s.a, small("after")).await;
    assert!(
        ids.iter().all(|old| &next > old),
        "{next} is newer than {ids:?}"
    );
}
