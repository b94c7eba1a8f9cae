//! The test guest as an installer ISO: an ISO 9660 image that a BIOS boots from a CD-ROM
//! (El Torito, no emulation) through isolinux into the same kernel, initramfs and command line
//! as the disk. It stands for an OS installer's medium: a VEE whose only bootable medium is a
//! CD. Made with `xorriso -as mkisofs`, whose input files it never changes (the boot info
//! table is patched into the image only): no loop mount, no root.

use std::fs;
use std::path::Path;

use crate::tools::{INSTALL_DEPS, SOURCE_DATE_EPOCH, XORRISO};
use crate::{disk, io_error, GuestError, INITRD_FILE, KERNEL_FILE};

/// isolinux's boot image, from Debian's `isolinux` package.
pub(crate) const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
/// The core module every syslinux 6 loader needs beside it, from `syslinux-common`.
pub(crate) const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The directory of the image that holds the loader, its config, the kernel and the
/// initramfs: isolinux looks for `isolinux.cfg` there, and the config's relative names
/// ([`disk::syslinux_config`]) are resolved there.
const BOOT_DIR: &str = "isolinux";
const VOLUME_ID: &str = "VEEM-INSTALLER";

/// Writes the installer ISO at `out` (replaced whole if it exists, never left half-written)
/// from the guest's kernel and initramfs (the files [`crate::BuildOptions::boot_files_dir`]
/// receives). The same files make the same image.
pub fn write_installer_iso(kernel: &Path, initrd: &Path, out: &Path) -> Result<(), GuestError> {
    for (file, package) in [(ISOLINUX_BIN, "isolinux"), (LDLINUX_C32, "syslinux-common")] {
        if !Path::new(file).is_file() {
            return Err(GuestError::MissingTool {
                tool: format!("{package} ({file})"),
                hint: INSTALL_DEPS.to_owned(),
            });
        }
    }
    for input in [kernel, initrd] {
        fs::metadata(input).map_err(io_error("read", input))?;
    }
    let config_dir = tempfile::Builder::new()
        .prefix("veem-guest-iso-")
        .tempdir()
        .map_err(io_error("create", &std::env::temp_dir()))?;
    let config = config_dir.path().join("isolinux.cfg");
    fs::write(&config, disk::syslinux_config()).map_err(io_error("write", &config))?;
    disk::write_into_place(out, |partial| {
        XORRISO.run(mkisofs_arguments(partial, kernel, initrd, &config), None)?;
        Ok(())
    })
}

/// `xorriso -as mkisofs` arguments: every file grafted from where it is, Rock Ridge names,
/// fixed times (`SOURCE_DATE_EPOCH`, which [`XORRISO`] also gets, fixes the volume's), isolinux as the El Torito no-emulation boot image with its boot info table.
fn mkisofs_arguments(out: &Path, kernel: &Path, initrd: &Path, config: &Path) -> Vec<String> {
    let graft = |name: &str, source: &Path| format!("{BOOT_DIR}/{name}={}", source.display());
    let mut arguments: Vec<String> = [
        "-as",
        "mkisofs",
        "-quiet",
        "-rock",
        // Every file's times are the build's fixed time, not its source file's.
        "--set_all_file_dates",
        &format!("={SOURCE_DATE_EPOCH}"),
        "-volid",
        VOLUME_ID,
        "-eltorito-boot",
        &format!("{BOOT_DIR}/isolinux.bin"),
        "-eltorito-catalog",
        &format!("{BOOT_DIR}/boot.cat"),
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "-graft-points",
        "-output",
    ]
    .map(str::to_owned)
    .to_vec();
    arguments.push(out.display().to_string());
    arguments.extend([
        graft("isolinux.bin", Path::new(ISOLINUX_BIN)),
        graft("ldlinux.c32", Path::new(LDLINUX_C32)),
        graft("isolinux.cfg", config),
        graft(KERNEL_FILE, kernel),
        graft(INITRD_FILE, initrd),
    ]);
    arguments
}

/// Whether the tools [`write_installer_iso`] needs are here (for tests that must say so).
pub fn installer_iso_tools_installed() -> bool {
    XORRISO.is_installed() && Path::new(ISOLINUX_BIN).is_file() && Path::new(LDLINUX_C32).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolinux_boots_the_kernel_and_initramfs_beside_it_with_the_disk_config() {
        let arguments = mkisofs_arguments(
            Path::new("/out/installer.iso"),
            Path::new("/boot/vmlinuz"),
            Path::new("/boot/initrd.img"),
            Path::new("/tmp/isolinux.cfg"),
        );
        let text = arguments.join(" ");
        assert!(
            text.starts_with("-as mkisofs "),
            "mkisofs emulation: {text}"
        );
        for expected in [
            "-eltorito-boot isolinux/isolinux.bin -eltorito-catalog isolinux/boot.cat \
             -no-emul-boot -boot-load-size 4 -boot-info-table",
            "-output /out/installer.iso",
            "isolinux/isolinux.bin=/usr/lib/ISOLINUX/isolinux.bin",
            "isolinux/ldlinux.c32=/usr/lib/syslinux/modules/bios/ldlinux.c32",
            "isolinux/isolinux.cfg=/tmp/isolinux.cfg",
            "isolinux/vmlinuz=/boot/vmlinuz",
            "isolinux/initrd.img=/boot/initrd.img",
        ] {
            assert!(text.contains(expected), "{expected} is missing: {text}");
        }
    }

    fn tools_installed() -> bool {
        crate::testing::require(
            installer_iso_tools_installed(),
            "xorriso or isolinux is not installed; run scripts/install-deps",
        )
    }

    /// What `xorriso` answers about the image `iso`, standard output and error together.
    fn inspect(iso: &Path, commands: &[&str]) -> String {
        let mut arguments = vec!["-indev".to_owned(), iso.display().to_string()];
        arguments.extend(commands.iter().map(|c| (*c).to_owned()));
        let output = XORRISO
            .output(&arguments.iter().map(Into::into).collect::<Vec<_>>(), None)
            .expect("xorriso runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }

    #[test]
    fn the_image_boots_isolinux_without_emulation_and_the_same_files_make_the_same_image() {
        if !tools_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd.img");
        fs::write(&kernel, vec![0x4b; 100_000]).expect("write");
        fs::write(&initrd, vec![0x49; 50_000]).expect("write");
        let isolinux_before = fs::read(ISOLINUX_BIN).expect("isolinux.bin");
        let (first, second) = (dir.path().join("first.iso"), dir.path().join("second.iso"));
        write_installer_iso(&kernel, &initrd, &first).expect("the ISO is written");
        write_installer_iso(&kernel, &initrd, &second).expect("the ISO is written again");
        assert!(
            fs::read(&first).expect("first") == fs::read(&second).expect("second"),
            "two images of the same files differ"
        );
        assert_eq!(
            fs::read(ISOLINUX_BIN).expect("isolinux.bin"),
            isolinux_before,
            "the boot info table is patched into the image only"
        );

        let report = inspect(&first, &["-report_el_torito", "plain"]);
        assert!(
            report.contains("Volume id    : 'VEEM-INSTALLER'"),
            "{report}"
        );
        let boot_image = report
            .lines()
            .find(|line| line.starts_with("El Torito boot img :"))
            .unwrap_or_else(|| panic!("no El Torito boot image: {report}"));
        let fields: Vec<&str> = boot_image.split_whitespace().collect();
        // N, platform, bootable, emulation, load segment, header, load size (sectors), LBA.
        assert_eq!(
            fields[5..12],
            ["1", "BIOS", "y", "none", "0x0000", "0x00", "4"]
        );
        assert!(report.contains("El Torito img path :   1  /isolinux/isolinux.bin"));
        assert!(report.contains("boot-info-table"), "{report}");

        let listing = inspect(&first, &["-find", "/", "-type", "f"]);
        let mut files: Vec<&str> = listing
            .lines()
            .filter(|line| line.starts_with('\''))
            .collect();
        files.sort_unstable();
        assert_eq!(
            files,
            [
                "'/isolinux/initrd.img'",
                "'/isolinux/isolinux.bin'",
                "'/isolinux/isolinux.cfg'",
                "'/isolinux/ldlinux.c32'",
                "'/isolinux/vmlinuz'",
            ]
        );
        let extracted = dir.path().join("extracted");
        fs::create_dir(&extracted).expect("a directory");
        let extract = |name: &str| {
            let to = extracted.join(name);
            inspect(
                &first,
                &[
                    "-osirrox",
                    "on",
                    "-extract",
                    &format!("/isolinux/{name}"),
                    &to.display().to_string(),
                ],
            );
            fs::read(to).expect("extracted")
        };
        assert_eq!(
            extract("isolinux.cfg"),
            disk::syslinux_config().into_bytes()
        );
        assert_eq!(extract(KERNEL_FILE), fs::read(&kernel).expect("kernel"));
        assert_eq!(extract(INITRD_FILE), fs::read(&initrd).expect("initrd"));
    }

    #[test]
    fn a_missing_kernel_is_named() {
        if !tools_installed() {
            return;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let initrd = dir.path().join("initrd.img");
        fs::write(&initrd, b"initramfs").expect("write");
        let missing = dir.path().join("vmlinuz");
        let error = write_installer_iso(&missing, &initrd, &dir.path().join("out.iso"))
            .expect_err("no kernel");
        assert_eq!(
            error.to_string(),
            format!("cannot read {}", missing.display())
        );
        assert!(!dir.path().join("out.iso").exists(), "nothing is written");
    }
}
