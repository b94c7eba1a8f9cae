//! A VEE's disks as QEMU uses them: qcow2 overlays and blank disks made with `qemu-img`, images
//! used in place, the context disk made with mtools, and standalone exports.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use veem_api::agent::{DeploySpec, DiskPlan, SourcePlan};
use veem_layout::{context_image_path, disk_path, source_note_path};
use veem_model::{DiskKind, ImageFormat};

use super::machine::{Drive, CONTEXT_TARGET};
use crate::driver::{check_disk_target, local_source};
use crate::{command, fsutil, DriverError};

const GIB: u64 = 1 << 30;
/// The context disk: a small FAT file system, like a floppy that fits an OVF environment.
const CONTEXT_IMAGE_BYTES: u64 = 2 << 20;
const CONTEXT_MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// The context disk's volume label, for a guest that looks for it by label.
pub const CONTEXT_LABEL: &str = "CONTEXT";

/// Creates the disks of `spec` that do not exist yet (an existing disk is the VEE's own, from
/// an earlier run, and is kept) and answers the drives to attach, context disk last. Every
/// source is checked before anything is created, so a refused deploy leaves nothing behind.
///
/// A clone of a file source is a qcow2 overlay on it; a clone of a fetched URL is a whole
/// qcow2 copy of the host's cached file, since the cache is one host's and the VEE's disk
/// lives on the site's shared storage. A cdrom's medium is attached read-only as it is.
pub async fn prepare(qemu_img: &Path, spec: &DeploySpec) -> Result<Vec<Drive>, DriverError> {
    for plan in &spec.disks {
        check_plan(plan)?;
        let Some(source) = &plan.source else { continue };
        let own_disk = plan.kind == DiskKind::Disk
            && plan.clone
            && fsutil::exists(&disk_path(&spec.vee_dir, &plan.target)).await?;
        if own_disk {
            continue;
        }
        let file = local_source(source)?;
        if !fsutil::exists(file).await? {
            return Err(DriverError::MissingFile(file.to_owned()));
        }
    }
    let mut drives = Vec::with_capacity(spec.disks.len() + 1);
    for plan in &spec.disks {
        let disk = disk_path(&spec.vee_dir, &plan.target);
        let note = source_note_path(&spec.vee_dir, &plan.target);
        let drive = match (&plan.source, plan.kind, plan.clone) {
            (Some(source), DiskKind::Cdrom, _) => {
                fsutil::remove_if_present(&note).await?;
                cdrom_drive(plan, source).await?
            }
            (Some(source), DiskKind::Disk, true) => {
                fsutil::remove_if_present(&note).await?;
                if !fsutil::exists(&disk).await? {
                    let file = local_source(source)?;
                    let format = source_format(plan, file).await?;
                    match source {
                        SourcePlan::File { .. } => {
                            create_overlay(qemu_img, file, format, plan.size_gb, &disk).await?
                        }
                        // The host's cache: a VEE never depends on it.
                        SourcePlan::Fetch { .. } | SourcePlan::Image { .. } => {
                            create_copy(qemu_img, file, format, plan.size_gb, &disk).await?
                        }
                    }
                }
                qcow2_drive(plan, disk)
            }
            (Some(source), DiskKind::Disk, false) => {
                let SourcePlan::File { path: source } = source else {
                    return Err(DriverError::Invalid {
                        what: "disk source",
                        reason: format!(
                            "{}: a fetched source cannot be used in place",
                            source.describe()
                        ),
                    });
                };
                let format = source_format(plan, source).await?;
                if plan.size_gb.is_some() {
                    tracing::info!(
                        target = %plan.target,
                        source = %source.display(),
                        "a disk used in place keeps its size: size_gb is ignored"
                    );
                }
                let text = source.to_str().ok_or_else(|| DriverError::Invalid {
                    what: "disk source",
                    reason: format!("{} is not UTF-8", source.display()),
                })?;
                fsutil::write_atomic(&note, text.as_bytes()).await?;
                Drive {
                    target: plan.target.clone(),
                    path: source.clone(),
                    format: format.as_str(),
                    read_only: false,
                    cdrom: false,
                }
            }
            (None, _, _) => {
                if !fsutil::exists(&disk).await? {
                    let size_gb = plan.size_gb.unwrap_or_default();
                    create_blank(qemu_img, size_gb, &disk).await?;
                }
                qcow2_drive(plan, disk)
            }
        };
        drives.push(drive);
    }
    if let Some(ovf_env) = &spec.ovf_env {
        let image = context_image_path(&spec.vee_dir);
        write_context_image(&image, ovf_env).await?;
        drives.push(context_drive(image));
    }
    Ok(drives)
}

/// The drives of a VEE whose disks already exist (a restore, an incoming migration), checking
/// that they do. A missing context disk is made again from the spec.
pub async fn existing(spec: &DeploySpec) -> Result<Vec<Drive>, DriverError> {
    let mut drives = Vec::with_capacity(spec.disks.len() + 1);
    for plan in &spec.disks {
        check_plan(plan)?;
        let drive = match (&plan.source, plan.kind, plan.clone) {
            (Some(source), DiskKind::Cdrom, _) => cdrom_drive(plan, source).await?,
            (Some(source), DiskKind::Disk, false) => {
                let source = local_source(source)?;
                Drive {
                    target: plan.target.clone(),
                    path: source.to_owned(),
                    format: source_format(plan, source).await?.as_str(),
                    read_only: false,
                    cdrom: false,
                }
            }
            _ => qcow2_drive(plan, disk_path(&spec.vee_dir, &plan.target)),
        };
        if !fsutil::exists(&drive.path).await? {
            return Err(DriverError::MissingFile(drive.path));
        }
        drives.push(drive);
    }
    if let Some(ovf_env) = &spec.ovf_env {
        let image = context_image_path(&spec.vee_dir);
        if !fsutil::exists(&image).await? {
            write_context_image(&image, ovf_env).await?;
        }
        drives.push(context_drive(image));
    }
    Ok(drives)
}

/// A cdrom: its medium, read-only, in its own format (an ISO image is raw).
async fn cdrom_drive(plan: &DiskPlan, source: &SourcePlan) -> Result<Drive, DriverError> {
    let medium = local_source(source)?;
    Ok(Drive {
        target: plan.target.clone(),
        path: medium.to_owned(),
        format: source_format(plan, medium).await?.as_str(),
        read_only: true,
        cdrom: true,
    })
}

/// Writes a standalone qcow2 copy of a VEE's disk (its backing chain flattened) to `out`.
/// A disk in use by a running QEMU is refused by qemu-img's image locking.
pub async fn export(
    qemu_img: &Path,
    vee_dir: &Path,
    target: &str,
    out: &Path,
) -> Result<(), DriverError> {
    check_disk_target(target)?;
    let note = source_note_path(vee_dir, target);
    let disk = if fsutil::exists(&note).await? {
        let text = fsutil::read(&note).await?;
        PathBuf::from(String::from_utf8_lossy(&text).into_owned())
    } else {
        disk_path(vee_dir, target)
    };
    if !fsutil::exists(&disk).await? {
        return Err(DriverError::MissingFile(disk));
    }
    fsutil::create_parent(out).await?;
    let temp = temp_beside(out);
    let converted = run(
        "export disk",
        qemu_img,
        [
            OsStr::new("convert"),
            OsStr::new("-O"),
            OsStr::new("qcow2"),
            disk.as_os_str(),
            temp.as_os_str(),
        ],
    )
    .await;
    finish_temp(converted, &temp, out).await
}

fn check_plan(plan: &DiskPlan) -> Result<(), DriverError> {
    check_disk_target(&plan.target)?;
    if plan.target == CONTEXT_TARGET {
        return Err(DriverError::Invalid {
            what: "disk target",
            reason: format!("{CONTEXT_TARGET:?} is the context disk's"),
        });
    }
    if plan.source.is_none() && plan.size_gb.is_none() {
        return Err(DriverError::Invalid {
            what: "blank disk",
            reason: format!("{} has no size", plan.target),
        });
    }
    if plan.source.is_none() && plan.kind == DiskKind::Cdrom {
        return Err(DriverError::Invalid {
            what: "cdrom",
            reason: format!("{} has no medium", plan.target),
        });
    }
    Ok(())
}

fn qcow2_drive(plan: &DiskPlan, path: PathBuf) -> Drive {
    Drive {
        target: plan.target.clone(),
        path,
        format: "qcow2",
        read_only: false,
        cdrom: false,
    }
}

fn context_drive(path: PathBuf) -> Drive {
    Drive {
        target: CONTEXT_TARGET.to_owned(),
        path,
        format: "raw",
        read_only: true,
        cdrom: false,
    }
}

/// The plan's format, or the one the file's first bytes show.
async fn source_format(plan: &DiskPlan, source: &Path) -> Result<ImageFormat, DriverError> {
    if let Some(format) = plan.source_format {
        return Ok(format);
    }
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(source)
        .await
        .map_err(|e| DriverError::file(source, e))?;
    let mut magic = [0_u8; 4];
    let read = file
        .read(&mut magic)
        .await
        .map_err(|e| DriverError::file(source, e))?;
    Ok(ImageFormat::sniff(&magic[..read]))
}

async fn create_overlay(
    qemu_img: &Path,
    source: &Path,
    format: ImageFormat,
    size_gb: Option<u64>,
    disk: &Path,
) -> Result<(), DriverError> {
    // The overlay records its backing file's path; a relative one would be read relative to
    // the overlay's directory.
    let source = std::path::absolute(source).map_err(|e| DriverError::file(source, e))?;
    let mut args = vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-b".into(),
        source.clone().into_os_string(),
        "-F".into(),
        format.as_str().into(),
    ];
    let temp = temp_beside(disk);
    args.push(temp.clone().into_os_string());
    if let Some(size_gb) = size_gb {
        // A size only grows the disk: an overlay smaller than its image would cut it off.
        let wanted = size_gb.saturating_mul(GIB);
        if wanted > virtual_size(qemu_img, &source, format).await? {
            args.push(format!("{size_gb}G").into());
        }
    }
    fsutil::create_parent(disk).await?;
    let created = run("create disk", qemu_img, &args).await;
    finish_temp(created, &temp, disk).await
}

/// A whole qcow2 copy of `source` (no backing file), grown to `size_gb` when that is larger.
async fn create_copy(
    qemu_img: &Path,
    source: &Path,
    format: ImageFormat,
    size_gb: Option<u64>,
    disk: &Path,
) -> Result<(), DriverError> {
    fsutil::create_parent(disk).await?;
    let temp = temp_beside(disk);
    let copied = async {
        run(
            "copy disk",
            qemu_img,
            [
                OsStr::new("convert"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new(format.as_str()),
                OsStr::new("-O"),
                OsStr::new("qcow2"),
                source.as_os_str(),
                temp.as_os_str(),
            ],
        )
        .await?;
        if let Some(size_gb) = size_gb {
            // A size only grows the disk, as for an overlay.
            if size_gb.saturating_mul(GIB)
                > virtual_size(qemu_img, &temp, ImageFormat::Qcow2).await?
            {
                let size = format!("{size_gb}G");
                run(
                    "grow disk",
                    qemu_img,
                    [
                        OsStr::new("resize"),
                        OsStr::new("-q"),
                        OsStr::new("-f"),
                        OsStr::new("qcow2"),
                        temp.as_os_str(),
                        OsStr::new(&size),
                    ],
                )
                .await?;
            }
        }
        Ok(String::new())
    }
    .await;
    finish_temp(copied, &temp, disk).await
}

async fn create_blank(qemu_img: &Path, size_gb: u64, disk: &Path) -> Result<(), DriverError> {
    fsutil::create_parent(disk).await?;
    let temp = temp_beside(disk);
    let size = format!("{size_gb}G");
    let created = run(
        "create disk",
        qemu_img,
        [
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            temp.as_os_str(),
            OsStr::new(&size),
        ],
    )
    .await;
    finish_temp(created, &temp, disk).await
}

async fn virtual_size(
    qemu_img: &Path,
    image: &Path,
    format: ImageFormat,
) -> Result<u64, DriverError> {
    // -U: the image may be open in a running VEE (as a backing file, or in place).
    let info = run(
        "inspect image",
        qemu_img,
        [
            OsStr::new("info"),
            OsStr::new("-U"),
            OsStr::new("--output=json"),
            OsStr::new("-f"),
            OsStr::new(format.as_str()),
            image.as_os_str(),
        ],
    )
    .await?;
    let info: serde_json::Value = serde_json::from_str(&info).map_err(|e| DriverError::Failed {
        op: "inspect image",
        reason: format!("{}: {e}", image.display()),
    })?;
    info.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| DriverError::Failed {
            op: "inspect image",
            reason: format!("{}: qemu-img shows no virtual-size", image.display()),
        })
}

/// Makes the context disk: a 2 MiB FAT image labelled `CONTEXT` holding `/ovf-env.xml`.
async fn write_context_image(image: &Path, ovf_env: &str) -> Result<(), DriverError> {
    if ovf_env.len() > CONTEXT_MAX_DOCUMENT_BYTES {
        return Err(DriverError::Invalid {
            what: "ovf environment",
            reason: format!(
                "{} bytes is more than the context disk takes ({CONTEXT_MAX_DOCUMENT_BYTES})",
                ovf_env.len()
            ),
        });
    }
    fsutil::create_parent(image).await?;
    let temp = temp_beside(image);
    let document = temp_beside(&image.with_file_name("ovf-env.xml"));
    let made = async {
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| DriverError::file(&temp, e))?;
        file.set_len(CONTEXT_IMAGE_BYTES)
            .await
            .map_err(|e| DriverError::file(&temp, e))?;
        drop(file);
        tokio::fs::write(&document, ovf_env)
            .await
            .map_err(|e| DriverError::file(&document, e))?;
        let image_arg = temp.as_os_str();
        run(
            "format context disk",
            Path::new("mformat"),
            [
                OsStr::new("-i"),
                image_arg,
                OsStr::new("-v"),
                OsStr::new(CONTEXT_LABEL),
                OsStr::new("::"),
            ],
        )
        .await?;
        run(
            "write context disk",
            Path::new("mcopy"),
            [
                OsStr::new("-i"),
                image_arg,
                document.as_os_str(),
                OsStr::new("::/ovf-env.xml"),
            ],
        )
        .await
        .map(drop)
    }
    .await;
    fsutil::remove_if_present(&document).await?;
    finish_temp(made.map(|()| String::new()), &temp, image).await
}

/// Renames a finished temporary file into place, or removes it after a failure.
async fn finish_temp(
    outcome: Result<String, DriverError>,
    temp: &Path,
    path: &Path,
) -> Result<(), DriverError> {
    match outcome {
        Ok(_) => tokio::fs::rename(temp, path)
            .await
            .map_err(|e| DriverError::file(path, e)),
        Err(e) => {
            // Best effort: the partial file is useless either way.
            let _ = tokio::fs::remove_file(temp).await;
            Err(e)
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

/// Runs a tool to completion; answers its stdout, or fails with its stderr.
async fn run<I, S>(op: &'static str, program: &Path, args: I) -> Result<String, DriverError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = tokio::process::Command::new(program);
    command.args(args).env("MTOOLS_SKIP_CHECK", "1");
    command::output(op, command).await
}
