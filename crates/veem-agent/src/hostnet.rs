//! The host's side of a VEE's NICs: the tap device each NIC is on the host. The only code in
//! veem that changes the host's network configuration; it runs iproute2's `ip`, as an operator
//! would, so what it does can be read (and undone) with the same tool.
//!
//! QEMU creates a NIC's tap itself (`-netdev tap,ifname=...,script=no`) and removes it when it
//! ends, so a tap never outlives its VEE's process; the agent only brings it up. Creating a
//! tap needs `CAP_NET_ADMIN` (root): a host without it fails the deployment with QEMU's reason.

use std::path::Path;

use veem_api::agent::LanPlan;
use veem_model::VeeId;

use crate::{command, DriverError};

/// Where the host kernel lists its interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// Linux's longest interface name (`IFNAMSIZ` less its terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

/// A fresh name for the tap of NIC `index` of `vee`: `vt`, the VEE's number (hex), the NIC's
/// index and a random part. Random because the two ends of a live migration on one machine
/// each need their own tap at the same time; the name is kept in the instance's record.
pub fn tap_name(vee: &VeeId, index: usize) -> String {
    let name = format!(
        "vt{:x}{:x}{:05x}",
        vee.seq(),
        index,
        rand::random::<u32>() & 0xf_ffff
    );
    // VEE numbers beyond 2^24 give longer names: keep the unique random part and the index.
    if name.len() <= MAX_INTERFACE_NAME {
        name
    } else {
        let cut = name.len() - MAX_INTERFACE_NAME;
        format!("vt{}", &name[2 + cut..])
    }
}

/// Sets an interface up (a tap QEMU made is down until then).
pub async fn set_up(ip: &Path, interface: &str) -> Result<(), DriverError> {
    let mut command = tokio::process::Command::new(ip);
    command.args(["link", "set", "dev", interface, "up"]);
    command::output("bring a tap up", command).await.map(drop)
}

/// The VXLAN device that joins a LAN's bridge to the other machines' (`vx` for `vb`).
pub fn vxlan_name(lan: &LanPlan) -> String {
    match lan.bridge.strip_prefix("vb") {
        Some(rest) => format!("vx{rest}"),
        None => format!("vx{:x}", lan.vni),
    }
}

/// Removes a LAN's bridge and VXLAN device from this host, if it has them.
pub async fn remove_lan(ip: &Path, lan: &LanPlan) -> Result<(), DriverError> {
    for interface in [vxlan_name(lan), lan.bridge.clone()] {
        if !Path::new(SYS_CLASS_NET).join(&interface).exists() {
            continue;
        }
        let mut command = tokio::process::Command::new(ip);
        command.args(["link", "del", "dev", &interface]);
        command::output("remove a lan", command).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux_and_differ_per_launch() {
        for seq in [1, 0xff_ffff, 99_999_999] {
            let vee = VeeId::from_seq(seq);
            let names: std::collections::HashSet<String> =
                (0..50).map(|_| tap_name(&vee, 3)).collect();
            for name in &names {
                assert!(name.len() <= MAX_INTERFACE_NAME, "{name}");
                assert!(name.starts_with("vt"), "{name}");
                assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
            }
            assert!(names.len() > 1, "launches get names of their own");
        }
        assert!(tap_name(&VeeId::from_seq(0x2a), 1).starts_with("vt2a1"));
    }
}
