//! Devices: a VEE's disks and NICs added or removed after InitializeVEEs (OCCI's
//! `storagelink` and `networkinterface` made or deleted on an existing compute).
//!
//! Rules kept here:
//! - Only a DEFINED VEE of this site changes its devices: one that holds no host and keeps no
//!   saved memory (a suspended guest's memory expects the devices it had). Any other state, or
//!   a VEE run by another site, is `WrongState`.
//! - The new descriptor is checked as InitializeVEEs checks one (`VeeDescriptor::validate`,
//!   the `file:` source rules, an image the owner may use); bad input changes nothing.
//! - The changed record is committed (generation compare-and-swap, `Veem::update`) before the
//!   books change; a NIC's address is taken before and given back if the commit fails; a
//!   removed NIC's address is given back once the removal is durable.
//! - A removed disk's file in the VEE's directory goes (from an earlier deployment), so a disk
//!   added later under the same target starts from its source, not from the old contents.

use std::sync::Arc;

use veem_model::{mac_address, DiskSource, DiskSpec, NicSpec, VeeId, VeeRecord, VmiState};

use super::{remove_file_if_present, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

/// How many NICs a VEE's MAC addresses tell apart (the low 6 bits of [`mac_address`]).
const MAC_INDEXES: usize = 64;

impl Veem {
    /// Adds `disk` to the DEFINED VEE `id`, last; its target is the next free `vdX` when not
    /// given. Answers the record and the new disk's index.
    pub async fn add_disk(
        &self,
        caller: &Caller,
        id: &VeeId,
        mut disk: DiskSpec,
    ) -> Result<(VeeRecord, usize), CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        disks_changeable(&record)?;
        let mut descriptor = (*record.descriptor).clone();
        if disk.target.is_none() {
            disk.target = Some(free_disk_target(&descriptor.disks)?);
        }
        descriptor.disks.push(disk);
        descriptor
            .validate()
            .map_err(CoreError::MalformedDescriptor)?;
        self.inner
            .config
            .file_sources
            .check_descriptor(caller.admin, &descriptor)?;
        let index = descriptor.disks.len() - 1;
        let added = &descriptor.disks[index];
        if let Some(DiskSource::Image(name)) = &added.source {
            if self.inner.images.resolve(&record.owner, name).is_none() {
                return Err(CoreError::NotFound(format!(
                    "image {name} is not in {}'s image store nor among the shared images",
                    record.owner
                )));
            }
        }
        let target = added
            .target
            .clone()
            .ok_or_else(|| CoreError::broken("a validated disk has a target"))?;
        // A file left under this target (a removal whose cleanup failed) would be taken for
        // the new disk's contents at the next deployment.
        self.remove_disk_files(id, &target).await?;
        let detail = format!("disk {target} added");
        let descriptor = Arc::new(descriptor);
        let updated = self
            .update(seq, Some(detail), |r| r.descriptor = descriptor)
            .await?;
        Ok((updated, index))
    }

    /// Removes disk `index` of the DEFINED VEE `id`, and its file in the VEE's directory.
    pub async fn remove_disk(
        &self,
        caller: &Caller,
        id: &VeeId,
        index: usize,
    ) -> Result<VeeRecord, CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        disks_changeable(&record)?;
        let mut descriptor = (*record.descriptor).clone();
        if index >= descriptor.disks.len() {
            return Err(CoreError::NotFound(format!("VEE {id} has no disk {index}")));
        }
        let removed = descriptor.disks.remove(index);
        let detail = format!("disk {} removed", removed.target.as_deref().unwrap_or("?"));
        let descriptor = Arc::new(descriptor);
        let updated = self
            .update(seq, Some(detail), |r| r.descriptor = descriptor)
            .await?;
        if let Some(target) = &removed.target {
            // The removal is durable: a file that stays is removed again when a disk is added
            // under its target.
            if let Err(e) = self.remove_disk_files(id, target).await {
                tracing::warn!(vee = %id, target, error = %e, "the removed disk's file stays");
            }
        }
        Ok(updated)
    }

    /// Adds `nic` to the DEFINED VEE `id`, last, with its addresses (the next free `ethN`
    /// when no target is given). Answers the record and the new NIC's index.
    pub async fn add_nic(
        &self,
        caller: &Caller,
        id: &VeeId,
        mut nic: NicSpec,
    ) -> Result<(VeeRecord, usize), CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        devices_changeable(&record)?;
        let mut descriptor = (*record.descriptor).clone();
        if nic.target.is_none() {
            nic.target = Some(free_nic_target(&descriptor.nics));
        }
        descriptor.nics.push(nic);
        descriptor
            .validate()
            .map_err(CoreError::MalformedDescriptor)?;
        let index = descriptor.nics.len() - 1;
        // Its MAC must differ from those the VEE's other NICs kept (removals leave gaps).
        let mac_index = (0..MAC_INDEXES)
            .find(|i| {
                let mac = mac_address(&record.id, *i);
                !record.generated.nics.iter().any(|n| n.mac == mac)
            })
            .ok_or_else(|| CoreError::malformed("nics", format!("at most {MAC_INDEXES} NICs")))?;
        let address = self.inner.networks.take_nic(
            &record.owner,
            &descriptor.nics[index],
            index,
            mac_index,
            &record.id,
        )?;
        let detail = format!("NIC {} added", address.target);
        let descriptor = Arc::new(descriptor);
        let taken = address.clone();
        let updated = self
            .update(seq, Some(detail), |r| {
                r.descriptor = descriptor;
                r.generated.nics.push(taken);
            })
            .await;
        match updated {
            Ok(updated) => Ok((updated, index)),
            Err(e) => {
                self.inner.networks.release_chosen(&[vec![address]]);
                Err(e)
            }
        }
    }

    /// Removes NIC `index` of the DEFINED VEE `id`; its address can be given again.
    pub async fn remove_nic(
        &self,
        caller: &Caller,
        id: &VeeId,
        index: usize,
    ) -> Result<VeeRecord, CoreError> {
        let (seq, _guard, record) = self.lock_vee(caller, id).await?;
        devices_changeable(&record)?;
        let mut descriptor = (*record.descriptor).clone();
        if index >= descriptor.nics.len() {
            return Err(CoreError::NotFound(format!("VEE {id} has no NIC {index}")));
        }
        let removed = descriptor.nics.remove(index);
        let mut nics = record.generated.nics.clone();
        let released = (index < nics.len()).then(|| nics.remove(index));
        let detail = format!(
            "NIC {} removed",
            removed.target.unwrap_or_else(|| index.to_string())
        );
        let descriptor = Arc::new(descriptor);
        let updated = self
            .update(seq, Some(detail), |r| {
                r.descriptor = descriptor;
                r.generated.nics = nics;
            })
            .await?;
        if let Some(address) = released {
            self.inner.networks.release_chosen(&[vec![address]]);
        }
        Ok(updated)
    }

    /// Removes what a deployment left of disk `target` in the VEE's directory.
    async fn remove_disk_files(&self, id: &VeeId, target: &str) -> Result<(), CoreError> {
        let dir = self.vee_dir(id);
        remove_file_if_present(&veem_layout::disk_path(&dir, target)).await?;
        remove_file_if_present(&veem_layout::source_note_path(&dir, target)).await
    }
}

/// Whether a VEE's disks and NICs may change now, and if not, why.
fn devices_changeable(record: &VeeRecord) -> Result<(), CoreError> {
    let id = &record.id;
    if let Some(site) = &record.site {
        return Err(CoreError::WrongState(format!(
            "VEE {id} is run by site {site}; its disks and NICs do not change from here"
        )));
    }
    let why = match record.state {
        VmiState::Defined if record.has_saved_memory => {
            "it keeps saved memory that expects the devices it has"
        }
        VmiState::Defined => return Ok(()),
        VmiState::Initial => "it is being deployed on a host",
        VmiState::Active | VmiState::Paused => "it holds a host",
        VmiState::Suspended => "its saved memory expects the devices it has",
        VmiState::Destroyed => "it is destroyed",
    };
    Err(CoreError::WrongState(format!(
        "VEE {id} is {}: {why}; its disks and NICs change only while it is DEFINED",
        record.state
    )))
}

/// [`devices_changeable`], and the VEE's disks are in the VEEM's data directory: those a host
/// keeps on its own storage ([`VeeRecord::holder`]) are that host's, where a removed disk's
/// file could not be deleted from here (and would boot again under a new disk of its target).
fn disks_changeable(record: &VeeRecord) -> Result<(), CoreError> {
    devices_changeable(record)?;
    match &record.holder {
        Some(holder) => Err(CoreError::WrongState(format!(
            "the disks of VEE {} are on host {holder}'s own storage; they change only where \
             the VEEM keeps them",
            record.id
        ))),
        None => Ok(()),
    }
}

/// The first `vdX` no disk of `disks` uses.
fn free_disk_target(disks: &[DiskSpec]) -> Result<String, CoreError> {
    (b'a'..=b'z')
        .map(|letter| format!("vd{}", letter as char))
        .find(|t| !disks.iter().any(|d| d.target.as_deref() == Some(t)))
        .ok_or_else(|| CoreError::malformed("disks", "every target vda to vdz is used"))
}

/// The first `ethN` no NIC of `nics` uses.
fn free_nic_target(nics: &[NicSpec]) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|t| !nics.iter().any(|nic| nic.target.as_deref() == Some(t)))
        .expect("some ethN is free among finitely many NICs")
}

#[cfg(test)]
mod tests {
    use veem_model::{InitModel, Principal, SiteName, VeeDescriptor};

    use super::*;

    fn record(state: VmiState) -> VeeRecord {
        let mut record = VeeRecord::defined(
            VeeId::from_seq(7),
            Principal::new("sm-a").expect("a valid principal"),
            VeeDescriptor::minimal(1, 512),
            InitModel::Besteffort,
            0,
        );
        record.state = state;
        record
    }

    #[test]
    fn only_a_defined_vee_of_this_site_without_saved_memory_changes_devices() {
        assert!(devices_changeable(&record(VmiState::Defined)).is_ok());
        for state in [
            VmiState::Initial,
            VmiState::Active,
            VmiState::Paused,
            VmiState::Suspended,
            VmiState::Destroyed,
        ] {
            assert!(
                matches!(
                    devices_changeable(&record(state)),
                    Err(CoreError::WrongState(_))
                ),
                "{state}"
            );
        }
        let mut remembering = record(VmiState::Defined);
        remembering.has_saved_memory = true;
        assert!(matches!(
            devices_changeable(&remembering),
            Err(CoreError::WrongState(_))
        ));
        let mut remote = record(VmiState::Defined);
        remote.site = Some(SiteName::new("east").expect("a valid site"));
        match devices_changeable(&remote) {
            Err(CoreError::WrongState(why)) => assert!(why.contains("run by site east"), "{why}"),
            other => panic!("a VEE of another site is refused, not {other:?}"),
        }
        let mut held = record(VmiState::Defined);
        held.holder = Some(veem_model::HostId::new("h1").expect("a valid host"));
        assert!(devices_changeable(&held).is_ok(), "its NICs may change");
        match disks_changeable(&held) {
            Err(CoreError::WrongState(why)) => assert!(why.contains("h1's own storage"), "{why}"),
            other => panic!("disks a host keeps are refused, not {other:?}"),
        }
    }

    #[test]
    fn free_targets_fill_gaps_first() {
        let disk = |t: &str| DiskSpec {
            source: None,
            size_gb: Some(1),
            target: Some(t.to_owned()),
            clone: true,
            kind: veem_model::DiskKind::Disk,
        };
        assert_eq!(free_disk_target(&[]).expect("free"), "vda");
        assert_eq!(
            free_disk_target(&[disk("vdb"), disk("vda"), disk("vdd")]).expect("free"),
            "vdc"
        );
        let nic = |t: &str| NicSpec {
            network: "lan".into(),
            target: Some(t.to_owned()),
            ip: None,
        };
        assert_eq!(free_nic_target(&[nic("eth1")]), "eth0");
        assert_eq!(free_nic_target(&[nic("eth0"), nic("eth1")]), "eth2");
    }
}
