//! Builders shared by the tests.

use std::path::{Path, PathBuf};

use veem_agent::sim::{SimConfig, SimDriver};
use veem_api::agent::{DeploySpec, DiskPlan, SourcePlan};
use veem_model::{DiskKind, VeeId};

pub fn vee(seq: u64) -> VeeId {
    VeeId::from_seq(seq)
}

/// A VEE named `name` with its directory under `shared` and no disks.
pub fn spec(seq: u64, name: &str, shared: &Path) -> DeploySpec {
    let vee = vee(seq);
    DeploySpec {
        vee_dir: shared.join("vees").join(vee.as_str()),
        stale_own_dir: false,
        vee,
        name: name.to_owned(),
        cpu: 2,
        cpu_max: 4,
        memory_mb: 1024,
        memory_max_mb: 4096,
        disks: vec![],
        nics: vec![],
        hypervisor: None,
        raw: String::new(),
        ovf_env: None,
        boot: None,
    }
}

pub fn clone_of(target: &str, source: &Path) -> DiskPlan {
    DiskPlan {
        target: target.to_owned(),
        source: Some(SourcePlan::file(source)),
        source_format: None,
        size_gb: None,
        clone: true,
        kind: DiskKind::Disk,
    }
}

pub fn in_place(target: &str, source: &Path) -> DiskPlan {
    DiskPlan {
        clone: false,
        ..clone_of(target, source)
    }
}

pub fn blank(target: &str, size_gb: u64) -> DiskPlan {
    DiskPlan {
        target: target.to_owned(),
        source: None,
        source_format: None,
        size_gb: Some(size_gb),
        clone: false,
        kind: DiskKind::Disk,
    }
}

/// Writes an image file into the shared storage's image store.
pub fn image(shared: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = shared.join("images").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A host: a sim driver with its own state directory below `root`.
pub fn host(root: &Path, name: &str, config: SimConfig) -> SimDriver {
    SimDriver::new(config, root.join("hosts").join(name)).unwrap()
}
