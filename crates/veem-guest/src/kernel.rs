//! The unpacked cloud kernel: its version, its `vmlinuz`, and the modules the guest loads, in
//! an order where each comes after what it depends on.
//!
//! Debian's package carries no `modules.dep` (depmod makes it at install time), so each
//! module's dependencies are read from its own `.modinfo` strings (`depends=a,b`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::tools::{XZ, ZSTD};
use crate::{io_error, GuestError};

/// What the guest always loads from the cloud kernel's modules, in load order; their
/// dependencies are added before them. `virtio_ring` first: the other virtio modules need it.
///
/// - virtio: the PCI transport, disks (virtio-blk), the balloon for live memory changes, the
///   console, and NICs (virtio-net, which needs `net_failover` and `failover`);
/// - the ACPI power button and evdev, through which busybox `acpid` hears it;
/// - vfat (with the code pages its default mount options need) and iso9660, the file
///   systems a context disk may have.
pub(crate) const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci",
    "virtio_blk",
    "virtio_balloon",
    "virtio_console",
    "virtio_net",
    "button",
    "evdev",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "isofs",
];

/// Loaded only when the machine has a virtio-scsi controller: a CD (`/dev/sr0`) is reached
/// through it (q35's AHCI has no driver in the cloud kernel). The SCSI stack costs a tenth of
/// a second of boot under TCG, so a guest without the controller skips it.
pub(crate) const VIRTIO_SCSI_MODULES: &[&str] = &["virtio_scsi", "sr_mod"];

/// The modules of the guest, uncompressed, each group in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestModules {
    pub(crate) always: Vec<Module>,
    /// After `always`, when a virtio-scsi controller is there.
    pub(crate) for_virtio_scsi: Vec<Module>,
}

/// The kernel found in an unpacked linux-image package.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) version: String,
    pub(crate) vmlinuz: PathBuf,
    modules_dir: PathBuf,
}

/// A module ready for `insmod`: its name and its uncompressed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) bytes: Vec<u8>,
}

impl Kernel {
    /// Finds the one `boot/vmlinuz-<version>` and its `lib/modules/<version>` (or
    /// `usr/lib/modules/<version>`, where newer Debian puts them).
    pub(crate) fn find(root: &Path, package: &str) -> Result<Self, GuestError> {
        let missing = |what: &str| GuestError::PackageContent {
            package: package.to_owned(),
            what: what.to_owned(),
        };
        let boot = root.join("boot");
        let entries = fs::read_dir(&boot).map_err(|_| missing("boot/ directory"))?;
        let mut versions: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_prefix("vmlinuz-").map(str::to_owned)
            })
            .collect();
        versions.sort();
        let [version] = versions.as_slice() else {
            return Err(missing("single boot/vmlinuz-<version>"));
        };
        let modules_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|dir| root.join(dir).join(version))
            .find(|dir| dir.is_dir())
            .ok_or_else(|| missing(&format!("lib/modules/{version}")))?;
        Ok(Self {
            vmlinuz: boot.join(format!("vmlinuz-{version}")),
            version: version.clone(),
            modules_dir,
        })
    }

    /// The modules the guest loads ([`GUEST_MODULES`], [`VIRTIO_SCSI_MODULES`] and their
    /// dependencies), uncompressed: busybox `insmod` reads only plain `.ko` files.
    pub(crate) fn guest_modules(&self) -> Result<GuestModules, GuestError> {
        let files = module_files(&self.modules_dir.join("kernel"))?;
        let builtin = builtin_modules(&self.modules_dir);
        let mut bytes_of: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut depends_of = |name: &str| {
            if let Some(path) = files.get(name) {
                let bytes = read_module(path)?;
                let depends = module_depends(&bytes);
                bytes_of.insert(name.to_owned(), bytes);
                Ok(Some(depends))
            } else if builtin.contains(name) {
                Ok(None)
            } else {
                Err(GuestError::MissingModule {
                    module: name.to_owned(),
                    kernel_version: self.version.clone(),
                })
            }
        };
        let mut done = BTreeSet::new();
        let always = load_order(GUEST_MODULES, &mut done, &mut depends_of)?;
        let for_virtio_scsi = load_order(VIRTIO_SCSI_MODULES, &mut done, &mut depends_of)?;
        let mut modules = |names: Vec<String>| -> Vec<Module> {
            names
                .into_iter()
                .filter_map(|name| {
                    let bytes = bytes_of.remove(&name)?;
                    Some(Module { name, bytes })
                })
                .collect()
        };
        Ok(GuestModules {
            always: modules(always),
            for_virtio_scsi: modules(for_virtio_scsi),
        })
    }
}

/// A module's name as the kernel knows it: '-' and '_' are the same.
fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// Every module file under `dir`, by module name.
fn module_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, GuestError> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let path = entry.map_err(io_error("read", &dir))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(module_name)
            {
                found.insert(name, path);
            }
        }
    }
    Ok(found)
}

/// The modules compiled into the kernel (`modules.builtin`: one `kernel/.../name.ko` a line).
fn builtin_modules(modules_dir: &Path) -> BTreeSet<String> {
    let list = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    list.lines()
        .filter_map(|line| line.rsplit('/').next().and_then(module_name))
        .collect()
}

fn read_module(path: &Path) -> Result<Vec<u8>, GuestError> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".xz") {
        Some(XZ)
    } else if name.ends_with(".zst") {
        Some(ZSTD)
    } else if name.ends_with(".gz") {
        Some(crate::tools::Tool {
            program: "gzip",
            hint: "install the Debian package gzip",
        })
    } else {
        None
    };
    match decompressor {
        Some(tool) => tool.run([std::ffi::OsStr::new("-dc"), path.as_os_str()], None),
        None => fs::read(path).map_err(io_error("read", path)),
    }
}

/// The `depends=` entry of a module's `.modinfo` strings (NUL-separated `key=value`).
pub(crate) fn module_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| at + KEY.len())
    else {
        return Vec::new();
    };
    let end = module[start..]
        .iter()
        .position(|&byte| byte == 0)
        .map_or(module.len(), |length| start + length);
    String::from_utf8_lossy(&module[start..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// The modules to load, each after its dependencies, in the order `roots` asks for them,
/// leaving out those in `done` (loaded already) and adding the new ones to it. `depends_of`
/// gives a module's dependencies, or `None` for one built into the kernel (nothing to load).
fn load_order(
    roots: &[&str],
    done: &mut BTreeSet<String>,
    mut depends_of: impl FnMut(&str) -> Result<Option<Vec<String>>, GuestError>,
) -> Result<Vec<String>, GuestError> {
    let mut order = Vec::new();
    for root in roots {
        visit(root, &mut depends_of, done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    depends_of: &mut impl FnMut(&str) -> Result<Option<Vec<String>>, GuestError>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), GuestError> {
    if done.contains(name) {
        return Ok(());
    }
    if path.iter().any(|on_path| on_path == name) {
        path.push(name.to_owned());
        return Err(GuestError::ModuleCycle {
            chain: path.join(" -> "),
        });
    }
    let Some(depends) = depends_of(name)? else {
        done.insert(name.to_owned());
        return Ok(());
    };
    path.push(name.to_owned());
    for dependency in &depends {
        visit(dependency, depends_of, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_owned());
    order.push(name.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modinfo(depends: &str) -> Vec<u8> {
        let mut bytes = b"\x7fELF\0\0junk\0license=GPL\0".to_vec();
        bytes.extend_from_slice(format!("depends={depends}\0").as_bytes());
        bytes.extend_from_slice(b"retpoline=Y\0intree=Y\0name=x\0");
        bytes
    }

    #[test]
    fn dependencies_are_read_from_modinfo() {
        assert_eq!(
            module_depends(&modinfo("scsi_mod,cdrom,scsi-common")),
            ["scsi_mod", "cdrom", "scsi_common"]
        );
        assert!(module_depends(&modinfo("")).is_empty());
        assert!(module_depends(b"\x7fELF no modinfo at all").is_empty());
    }

    #[test]
    fn module_names_treat_dash_and_underscore_alike() {
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("vfat.ko.xz").as_deref(), Some("vfat"));
        assert_eq!(module_name("vfat.ko.zst").as_deref(), Some("vfat"));
        assert_eq!(module_name("modules.order"), None);
    }

    type DependencyTable<'a> = &'a [(&'a str, &'a [&'a str])];

    fn depends_from(
        table: DependencyTable<'_>,
    ) -> impl FnMut(&str) -> Result<Option<Vec<String>>, GuestError> + '_ {
        move |name| match table.iter().find(|(module, _)| *module == name) {
            Some((_, depends)) => Ok(Some(depends.iter().map(|d| d.to_string()).collect())),
            None if name == "builtin" => Ok(None),
            None => Err(GuestError::MissingModule {
                module: name.to_owned(),
                kernel_version: "test".to_owned(),
            }),
        }
    }

    #[test]
    fn each_module_loads_after_its_dependencies_and_once() {
        let table: &[(&str, &[&str])] = &[
            ("virtio_ring", &[]),
            ("virtio", &["virtio_ring"]),
            ("virtio_pci_modern_dev", &[]),
            (
                "virtio_pci",
                &["virtio_ring", "virtio_pci_modern_dev", "virtio"],
            ),
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("sr_mod", &["scsi_mod", "cdrom", "builtin"]),
            ("scsi_mod", &["scsi_common"]),
            ("scsi_common", &[]),
            ("cdrom", &[]),
        ];
        let mut done = BTreeSet::new();
        let order = load_order(
            &["virtio_blk", "virtio_pci"],
            &mut done,
            depends_from(table),
        )
        .expect("no cycle, nothing missing");
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "virtio_pci_modern_dev",
                "virtio_pci",
            ]
        );
        let later = load_order(&["sr_mod", "virtio_blk"], &mut done, depends_from(table))
            .expect("no cycle, nothing missing");
        assert_eq!(later, ["scsi_common", "scsi_mod", "cdrom", "sr_mod"]);
    }

    #[test]
    fn a_missing_module_and_a_cycle_are_errors() {
        let table: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &["a"]), ("c", &["gone"])];
        let cycle =
            load_order(&["a"], &mut BTreeSet::new(), depends_from(table)).expect_err("a cycle");
        assert_eq!(
            cycle.to_string(),
            "kernel modules depend on each other in a cycle: a -> b -> a"
        );
        let missing =
            load_order(&["c"], &mut BTreeSet::new(), depends_from(table)).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "kernel test has no module gone, neither as a file nor built in"
        );
    }
}
