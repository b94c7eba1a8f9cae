//! The Debian packages the guest is made of: which versions apt offers, fetching them with
//! `apt-get download` into a cache keyed by version, and unpacking them with `dpkg-deb -x`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::tools::{APT_CACHE, APT_GET, DPKG_DEB};
use crate::{io_error, GuestError, Package};

/// The metapackage that always depends on Debian's current cloud kernel.
pub(crate) const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
pub(crate) const BUSYBOX_PACKAGE: &str = "busybox-static";

/// What `apt-cache show` says of a package's candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) package: Package,
    pub(crate) depends: String,
}

/// Asks apt, without any download, for packages' candidate versions. When apt has no
/// package lists yet (a fresh machine), `apt-get update -qq` runs once and the question is
/// asked again.
#[derive(Debug, Default)]
pub(crate) struct Apt {
    updated: bool,
}

impl Apt {
    pub(crate) fn candidate(&mut self, name: &str) -> Result<Candidate, GuestError> {
        let args = ["show", "--no-all-versions", name];
        let output = APT_CACHE.output(&args.map(Into::into), None)?;
        if let Some(candidate) = output
            .status
            .success()
            .then(|| parse_candidate(&String::from_utf8_lossy(&output.stdout)))
            .flatten()
        {
            return Ok(candidate);
        }
        if self.updated {
            return Err(GuestError::UnknownPackage {
                package: name.to_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        tracing::info!(
            package = name,
            "apt has no candidate for it: running apt-get update"
        );
        self.updated = true;
        APT_GET
            .run(["update", "-qq"], None)
            .map_err(|error| GuestError::Download {
                package: name.to_owned(),
                stderr: format!("apt has no package lists and updating them failed: {error}"),
            })?;
        self.candidate(name)
    }

    /// The cloud kernel package the metapackage currently depends on, at the version it
    /// names (or, if it names none, apt's candidate).
    pub(crate) fn kernel(&mut self) -> Result<Package, GuestError> {
        let meta = self.candidate(KERNEL_METAPACKAGE)?;
        let Some((name, version)) = kernel_dependency(&meta.depends) else {
            return Err(GuestError::PackageContent {
                package: KERNEL_METAPACKAGE.to_owned(),
                what: "dependency on a linux-image-*-cloud-amd64 package".to_owned(),
            });
        };
        match version {
            Some(version) => Ok(Package { name, version }),
            None => Ok(self.candidate(&name)?.package),
        }
    }
}

/// The package's first stanza: its name, version and dependencies.
fn parse_candidate(show: &str) -> Option<Candidate> {
    let stanza = show.split("\n\n").next()?;
    let field = |key: &str| {
        stanza.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name == key).then(|| value.trim().to_owned())
        })
    };
    Some(Candidate {
        package: Package {
            name: field("Package")?,
            version: field("Version")?,
        },
        depends: field("Depends").unwrap_or_default(),
    })
}

/// In a Depends field, the first `linux-image-<abi>-cloud-amd64` package and the exact
/// version it is pinned to, if any.
fn kernel_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find_map(|alternative| {
            let (name, constraint) = match alternative.split_once('(') {
                Some((name, constraint)) => (name.trim(), Some(constraint)),
                None => (alternative, None),
            };
            let name = name.split(':').next().unwrap_or(name);
            let is_kernel = name.starts_with("linux-image-")
                && name.ends_with("-cloud-amd64")
                && name != KERNEL_METAPACKAGE;
            if !is_kernel {
                return None;
            }
            let version = constraint
                .and_then(|constraint| constraint.trim().strip_prefix('='))
                .map(|version| version.trim_end_matches(')').trim().to_owned());
            Some((name.to_owned(), version))
        })
}

/// The file name a package's .deb has in the cache; apt's own spelling (':' of an epoch
/// written as `%3a`), so a name is a version.
fn cached_file_name(package: &Package) -> String {
    format!(
        "{}_{}_amd64.deb",
        package.name,
        package.version.replace(':', "%3a")
    )
}

/// The package's .deb, from the cache or else downloaded (into `scratch`) and then moved
/// into the cache whole, so an interrupted download never leaves a broken entry. Other
/// versions of the same package are then removed from the cache.
pub(crate) fn fetch(
    package: &Package,
    cache: &Path,
    scratch: &Path,
) -> Result<PathBuf, GuestError> {
    let cached = cache.join(cached_file_name(package));
    if cached.is_file() {
        tracing::info!(package = %package.name, version = %package.version, "using the cached package");
        return Ok(cached);
    }
    tracing::info!(package = %package.name, version = %package.version, "downloading");
    let download_dir = scratch.join(format!("download-{}", package.name));
    // A kept work dir may hold an older download: exactly one .deb must be there after.
    if download_dir.exists() {
        fs::remove_dir_all(&download_dir).map_err(io_error("remove", &download_dir))?;
    }
    fs::create_dir_all(&download_dir).map_err(io_error("create", &download_dir))?;
    let spec = format!("{}={}", package.name, package.version);
    APT_GET
        .run(["download", "-qq", spec.as_str()], Some(&download_dir))
        .map_err(|error| match error {
            GuestError::CommandFailed { stderr, .. } => GuestError::Download {
                package: spec.clone(),
                stderr,
            },
            other => other,
        })?;
    let downloaded = single_deb(&download_dir).ok_or_else(|| GuestError::Download {
        package: spec.clone(),
        stderr: "apt-get download left no .deb file".to_owned(),
    })?;

    fs::create_dir_all(cache).map_err(io_error("create", cache))?;
    // Another build may fetch the same package at the same time: each writes its own file.
    let mut partial = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(cache)
        .map_err(io_error("write in", cache))?;
    let mut source = fs::File::open(&downloaded).map_err(io_error("read", &downloaded))?;
    std::io::copy(&mut source, partial.as_file_mut()).map_err(io_error("write in", cache))?;
    // Readable by all like any downloaded package, not private like a temporary file.
    fs::set_permissions(partial.path(), fs::Permissions::from_mode(0o644))
        .map_err(io_error("set the mode of", partial.path()))?;
    partial.persist(&cached).map_err(|error| GuestError::Io {
        action: "write",
        path: cached.clone(),
        source: error.error,
    })?;
    remove_other_versions(package, cache);
    Ok(cached)
}

fn single_deb(dir: &Path) -> Option<PathBuf> {
    let mut debs = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "deb"));
    let deb = debs.next()?;
    debs.next().is_none().then_some(deb)
}

/// A cache keeps one version per package: the one built last.
fn remove_other_versions(package: &Package, cache: &Path) {
    let keep = cached_file_name(package);
    let prefix = format!("{}_", package.name);
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") && name != keep {
            // A stale entry left behind only costs disk space: nothing to report.
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Unpacks a .deb's files (not its maintainer scripts) under `into`.
pub(crate) fn unpack(deb: &Path, into: &Path) -> Result<(), GuestError> {
    fs::create_dir_all(into).map_err(io_error("create", into))?;
    DPKG_DEB.run(
        [
            std::ffi::OsStr::new("-x"),
            deb.as_os_str(),
            into.as_os_str(),
        ],
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const META_SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description-en: Linux for x86-64 cloud (meta-package)

";

    #[test]
    fn a_candidate_is_read_from_apt_cache_show() {
        let candidate = parse_candidate(META_SHOW).expect("a stanza");
        assert_eq!(candidate.package.name, "linux-image-cloud-amd64");
        assert_eq!(candidate.package.version, "6.1.192-2");
        assert_eq!(
            candidate.depends,
            "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
        );
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn an_epoch_is_kept_in_the_version() {
        let show = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\n";
        let candidate = parse_candidate(show).expect("a stanza");
        assert_eq!(candidate.package.version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(
            cached_file_name(&candidate.package),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
    }

    #[test]
    fn the_kernel_dependency_is_resolved_to_its_pinned_version() {
        assert_eq!(
            kernel_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".to_owned(),
                Some("6.1.192-2".to_owned())
            ))
        );
        assert_eq!(
            kernel_dependency(
                "initramfs-tools | linux-initramfs-tool, linux-image-6.12.9-cloud-amd64:amd64"
            ),
            Some(("linux-image-6.12.9-cloud-amd64".to_owned(), None))
        );
        assert_eq!(kernel_dependency("linux-image-cloud-amd64"), None);
        assert_eq!(kernel_dependency("linux-image-6.1.0-56-amd64"), None);
    }

    #[test]
    fn a_cache_keeps_only_the_latest_version_of_a_package() {
        let cache = tempfile::tempdir().expect("a temp dir");
        for name in [
            "busybox-static_1.0_amd64.deb",
            "busybox-static_2.0_amd64.deb",
            "busybox-static-extra_1.0_amd64.deb",
        ] {
            fs::write(cache.path().join(name), b"deb").expect("write");
        }
        let package = Package {
            name: "busybox-static".to_owned(),
            version: "2.0".to_owned(),
        };
        remove_other_versions(&package, cache.path());
        let mut left: Vec<_> = fs::read_dir(cache.path())
            .expect("read")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "busybox-static-extra_1.0_amd64.deb",
                "busybox-static_2.0_amd64.deb"
            ]
        );
    }
}
