//! Use case 2.2.2 with its networks, on real guests over three qemu hosts: the web tier on the
//! public network and a private one, the database on the private one only, on another host. What
//! reaches what is checked from the host (TCP to the guests' echo service, port 7) and from the
//! guests themselves (they probe addresses at boot and write the results on their disks).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use veem_model::{ControlAction as A, VeeDescriptor};

use crate::harness::*;

/// Ranges no machine of ours uses, so the host's own routes cannot answer for a guest.
const PUBLIC_CIDR: &str = "10.213.7.0/24";
const PRIVATE_CIDR: &str = "10.214.7.0/24";

pub(crate) fn guest_on(name: &str, on: &[(&str, Option<&str>)], probes: &[String]) -> VeeDescriptor {
    let mut d = small(name);
    d.disks.push(tiny_disk());
    d.nics = nics(on);
    if !probes.is_empty() {
        d.context
            .properties
            .insert(veem_guest::PROBE_PROPERTY.into(), probes.join(","));
    }
    // The web tier and the database never share a host.
    d.tags = vec!["tier".into()];
    d.anti_affinity = vec!["tier".into()];
    d
}

/// Sends a line to `ip:7` and answers whether it came back (the guest's echo service).
pub(crate) fn echoes(ip: &str) -> bool {
    let address: SocketAddr = format!("{ip}:7").parse().expect("an address");
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"veem-echo\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 10];
    stream.read_exact(&mut answer).is_ok() && &answer == b"veem-echo\n"
}

/// Shuts the VEE down and reads what its guest wrote in its probe log.
pub(crate) async fn probe_log(s: &Server, client: &veem_client::Client, id: &str) -> String {
    ctl_ok(client, A::Shutdown, &[id]).await;
    let out = s.dir.path().join(format!("{id}.qcow2"));
    client
        .download_disk(id, "vda", &out)
        .await
        .expect("the disk downloads");
    read_guest_file(&out, &format!("/{}", veem_guest::PROBE_LOG_PATH))
}

#[tokio::test]
async fn uc_2_2_2_the_database_is_reachable_only_from_the_web_tier() {
    let Some(s) = Server::start_on(Hypervisor::Qemu).await else {
        return;
    };
    s.ops
        .create_network("public", PUBLIC_CIDR, true)
        .await
        .expect("the site's public network");
    s.a.create_network("private", PRIVATE_CIDR, false)
        .await
        .expect("sm-a's LAN");
    s.b.create_network("private", PRIVATE_CIDR, false)
        .await
        .expect("sm-b's LAN of the same name and range: another LAN");

    let db = init_one(&s.a, guest_on("db", &[("private", None)], &[])).await;
    let db_ip = get(&s.a, &db).await.generated.nics[0]
        .ip
        .clone()
        .expect("an address");
    ctl_ok(&s.a, A::Activate, &[&db]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &db).await;

    let web = init_one(
        &s.a,
        guest_on(
            "web",
            &[("public", None), ("private", None)],
            &[format!("{db_ip}:7")],
        ),
    )
    .await;
    let web_view = get(&s.a, &web).await;
    let web_public = web_view.generated.nics[0].ip.clone().expect("an address");
    let web_private = web_view.generated.nics[1].ip.clone().expect("an address");
    ctl_ok(&s.a, A::Activate, &[&web]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &web).await;
    assert_ne!(
        get(&s.a, &web).await.host,
        get(&s.a, &db).await.host,
        "web and db run on different hosts"
    );

    // sm-b's VEE, on its own "private" with the same range, tries both of sm-a's.
    let other = init_one(
        &s.b,
        guest_on(
            "other",
            &[("private", Some("10.214.7.50"))],
            &[format!("{db_ip}:7"), format!("{web_private}:7")],
        ),
    )
    .await;
    ctl_ok(&s.b, A::Activate, &[&other]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &other).await;

    assert!(
        echoes(&web_public),
        "the host reaches web's public address {web_public}"
    );
    assert!(!echoes(&db_ip), "the host does not reach db at {db_ip}");
    assert!(
        !echoes(&web_private),
        "nor web's private address {web_private}"
    );

    let web_log = probe_log(&s, &s.a, &web).await;
    assert!(
        web_log.contains(&format!("{db_ip}:7 ok")),
        "web reaches db across hosts: {web_log:?}"
    );
    let other_log = probe_log(&s, &s.b, &other).await;
    assert!(
        other_log.contains(&format!("{db_ip}:7 fail"))
            && other_log.contains(&format!("{web_private}:7 fail")),
        "another principal's LAN reaches neither: {other_log:?}"
    );
}
