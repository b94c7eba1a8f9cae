//! Which `file:` sources a VEE may name. A `file:` disk, kernel or initrd reads the host's own
//! files, so only an admin may name one, and only a regular file under a directory the config
//! lists in `file_sources` (default: none), never the VEEM's own `data_dir` (its store, the
//! images of every tenant, every VEE's disks) nor anything below it, whatever the config lists.
//!
//! The path is judged as the kernel will open it: the URL is decoded (RFC 8089, see
//! `veem_model::file_url_path`), then resolved with `..` and every symlink followed
//! (`canonicalize`), and the resolved path is what is compared (component-wise) and what the
//! host is handed. A path that does not exist is refused too. A non-admin is refused before
//! the file system is touched, so the answer tells nothing of which files exist.
//!
//! The VEEM checks at InitializeVEEs (and at plan, which takes the same body) and again each
//! time it hands the source to a host, since the file may have been replaced by a symlink
//! since.

use std::path::{Path, PathBuf};

use veem_model::{file_url_path, DiskSource, VeeDescriptor};

use crate::error::CoreError;

/// The config's `file_sources`, resolved, and the directory nothing may be read from.
#[derive(Debug, Clone)]
pub struct FileSources {
    /// Canonical directories under which admins may name files.
    allowed: Vec<PathBuf>,
    /// The VEEM's own data directory, canonical: always refused.
    data_dir: PathBuf,
}

impl FileSources {
    /// Resolves the configured directories. A directory that does not exist cannot hold a
    /// source and is left out (with a warning); one inside `data_dir` is an error, since it
    /// could never be used.
    pub fn new(configured: &[PathBuf], data_dir: &Path) -> Result<Self, String> {
        let data_dir = std::fs::canonicalize(data_dir)
            .map_err(|e| format!("cannot resolve data_dir {}: {e}", data_dir.display()))?;
        let mut allowed = Vec::with_capacity(configured.len());
        for dir in configured {
            match std::fs::canonicalize(dir) {
                Ok(dir) if dir.starts_with(&data_dir) => {
                    return Err(format!(
                        "file_sources entry {} is inside data_dir {}: the VEEM's own files are never a source",
                        dir.display(),
                        data_dir.display()
                    ))
                }
                Ok(dir) => allowed.push(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "a file_sources directory cannot be resolved; it is left out");
                }
            }
        }
        Ok(Self { allowed, data_dir })
    }

    /// Checks every `file:` source of a descriptor (disks, kernel, initrd) for a principal
    /// who is (or is not) an admin.
    pub fn check_descriptor(
        &self,
        admin: bool,
        descriptor: &VeeDescriptor,
    ) -> Result<(), CoreError> {
        for (i, disk) in descriptor.disks.iter().enumerate() {
            if let Some(source) = &disk.source {
                self.resolve(admin, source, &format!("disks[{i}].source"))?;
            }
        }
        if let Some(boot) = &descriptor.boot {
            self.resolve(admin, &boot.kernel, "boot.kernel")?;
            if let Some(initrd) = &boot.initrd {
                self.resolve(admin, initrd, "boot.initrd")?;
            }
        }
        Ok(())
    }

    /// The canonical path of a `file:` source the rules allow (`None` for any other source),
    /// or `403 access_denied` naming the field and the path.
    pub fn resolve(
        &self,
        admin: bool,
        source: &DiskSource,
        field: &str,
    ) -> Result<Option<PathBuf>, CoreError> {
        let DiskSource::Url(url) = source else {
            return Ok(None);
        };
        if !source.is_file_url() {
            return Ok(None);
        }
        // Named in the detail without control characters, so the answer stays one line.
        let shown: String = url
            .chars()
            .take(512)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let denied =
            |why: String| CoreError::AccessDenied(format!("{field}: {shown:?} is refused: {why}"));
        if !admin {
            return Err(denied(
                "a file: source reads the host's own files, so only an admin may name one".into(),
            ));
        }
        let path = file_url_path(url).map_err(|e| denied(format!("the URL {e}")))?;
        let resolved = std::fs::canonicalize(&path)
            .map_err(|e| denied(format!("{path} cannot be resolved ({e})")))?;
        if resolved.starts_with(&self.data_dir) {
            return Err(denied(format!(
                "{} is inside the VEEM's data_dir, which is never a source",
                resolved.display()
            )));
        }
        if !self.allowed.iter().any(|dir| resolved.starts_with(dir)) {
            let listed = if self.allowed.is_empty() {
                "the config lists none".to_owned()
            } else {
                self.allowed
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(denied(format!(
                "{} is under no directory of file_sources ({listed})",
                resolved.display()
            )));
        }
        let is_file = std::fs::metadata(&resolved).map(|m| m.is_file());
        if !matches!(is_file, Ok(true)) {
            return Err(denied(format!(
                "{} is not a regular file",
                resolved.display()
            )));
        }
        Ok(Some(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> DiskSource {
        DiskSource::try_from(text.to_owned()).expect("a URL")
    }

    struct Site {
        _root: tempfile::TempDir,
        allowed: PathBuf,
        outside: PathBuf,
        data_dir: PathBuf,
        sources: FileSources,
    }

    /// root/{allowed/{ok.img, escape -> ../outside/secret, sub/}, outside/secret, data/}
    fn site(extra: &[&str]) -> Site {
        let root = tempfile::tempdir().expect("a temp dir");
        let base = std::fs::canonicalize(root.path()).expect("resolves");
        let allowed = base.join("allowed");
        let outside = base.join("outside");
        let data_dir = base.join("data");
        for dir in [&allowed, &outside, &data_dir, &allowed.join("sub")] {
            std::fs::create_dir_all(dir).expect("a dir");
        }
        std::fs::write(allowed.join("ok.img"), b"image").expect("written");
        std::fs::write(outside.join("secret"), b"secret").expect("written");
        std::fs::write(data_dir.join("veem.db"), b"db").expect("written");
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("escape"))
            .expect("a symlink");
        std::os::unix::fs::symlink(&data_dir, allowed.join("data-link")).expect("a symlink");
        let mut configured = vec![allowed.clone()];
        configured.extend(extra.iter().map(|e| base.join(e)));
        let sources = FileSources::new(&configured, &data_dir).expect("valid");
        Site {
            _root: root,
            allowed,
            outside,
            data_dir,
            sources,
        }
    }

    fn refused(site: &Site, admin: bool, text: &str) -> String {
        match site.sources.resolve(admin, &url(text), "disks[0].source") {
            Err(CoreError::AccessDenied(detail)) => detail,
            other => panic!("{text}: expected access_denied, got {other:?}"),
        }
    }

    #[test]
    fn an_admin_reads_regular_files_under_file_sources_only() {
        let site = site(&[]);
        let ok = site.allowed.join("ok.img");
        let a = site.allowed.display();
        for text in [
            format!("file://{}", ok.display()),
            format!("file:{}", ok.display()),
            format!("FILE://localhost{}", ok.display()),
            format!("file://{a}/sub/../ok.img"),
            format!("file://{a}/%6f%6b.img"),
        ] {
            let resolved = site
                .sources
                .resolve(true, &url(&text), "f")
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(resolved.as_deref(), Some(ok.as_path()), "{text}");
        }
        assert_eq!(
            site.sources
                .resolve(false, &url("image:tiny"), "f")
                .expect("images are not judged here"),
            None
        );
        assert_eq!(
            site.sources
                .resolve(false, &url("http://example.com/x"), "f")
                .expect("http is not judged here"),
            None
        );
    }

    #[test]
    fn every_other_file_source_is_refused_naming_it() {
        let site = site(&[]);
        let a = site.allowed.display().to_string();
        let o = site.outside.display().to_string();
        let d = site.data_dir.display().to_string();
        // A non-admin: every form, even an allowed file, refused before the disk is touched.
        for text in [
            "file:///etc/passwd".to_owned(),
            format!("file://{a}/ok.img"),
            "file:/etc/passwd".to_owned(),
            "file://otherhost/x".to_owned(),
            "file:".to_owned(),
        ] {
            let detail = refused(&site, false, &text);
            assert!(detail.contains("only an admin"), "{detail}");
            assert!(detail.contains("disks[0].source"), "{detail}");
        }
        let long = format!("file:///{}", "a/".repeat(3000));
        let cases = [
            ("file:///etc/passwd".to_owned(), "under no directory"),
            (
                "file://localhost/etc/passwd".to_owned(),
                "under no directory",
            ),
            ("FILE:///etc/passwd".to_owned(), "under no directory"),
            ("file:/etc/passwd".to_owned(), "under no directory"),
            ("file://otherhost/x".to_owned(), "host \"otherhost\""),
            (
                format!("file://{a}/../outside/secret"),
                "under no directory",
            ),
            (
                format!("file://{a}/%2e%2e/outside/secret"),
                "under no directory",
            ),
            (
                format!("file://{a}%2f..%2foutside/secret"),
                "under no directory",
            ),
            (format!("file://{a}/escape"), "under no directory"),
            (format!("file://{a}/data-link/veem.db"), "data_dir"),
            (format!("file://{d}/veem.db"), "data_dir"),
            (format!("file://{o}/secret"), "under no directory"),
            (format!("file://{a}/missing.img"), "cannot be resolved"),
            (format!("file://{a}/sub"), "not a regular file"),
            (format!("file://{a}/ok.img%00"), "NUL"),
            ("file:///dev/zero".to_owned(), "under no directory"),
            (long, "longer than"),
        ];
        for (text, why) in cases {
            let detail = refused(&site, true, &text);
            assert!(detail.contains(why), "{text}: {detail} should say {why}");
            assert!(detail.contains("disks[0].source"), "{detail}");
        }
    }

    #[test]
    fn data_dir_is_refused_even_under_a_listed_parent() {
        // The operator lists the parent of data_dir: data_dir stays out of reach.
        let site = site(&["."]);
        let d = site.data_dir.display();
        let detail = refused(&site, true, &format!("file://{d}/veem.db"));
        assert!(detail.contains("data_dir"), "{detail}");
        // ... while a file beside it is allowed through the listed parent.
        let o = site.outside.display();
        assert!(site
            .sources
            .resolve(true, &url(&format!("file://{o}/secret")), "f")
            .is_ok());
        // A file_sources entry inside data_dir is a configuration mistake.
        let err = FileSources::new(&[site.data_dir.join(".")], &site.data_dir)
            .expect_err("inside data_dir");
        assert!(err.contains("inside data_dir"), "{err}");
    }
}
