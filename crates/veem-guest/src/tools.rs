//! Running the machine's tools (apt, dpkg-deb, mtools, syslinux, qemu-img, xz, xorriso): one place
//! that turns "not installed" into a hint and a failure into its standard error.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::GuestError;

/// The time written into the image's file system (FAT keeps local times from 1980 on): a
/// fixed one, so the same packages always make the same image. 2000-01-01T00:00:00Z.
pub(crate) const SOURCE_DATE_EPOCH: &str = "946684800";

/// A program the build runs, and what to do when it is missing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) hint: &'static str,
}

pub(crate) const INSTALL_DEPS: &str = "run scripts/install-deps (as root)";
const DEBIAN_ONLY: &str =
    "veem builds its test guest from Debian packages: build it on Debian or a derivative";

pub(crate) const APT_CACHE: Tool = Tool {
    program: "apt-cache",
    hint: DEBIAN_ONLY,
};
pub(crate) const APT_GET: Tool = Tool {
    program: "apt-get",
    hint: DEBIAN_ONLY,
};
pub(crate) const DPKG_DEB: Tool = Tool {
    program: "dpkg-deb",
    hint: DEBIAN_ONLY,
};
pub(crate) const MFORMAT: Tool = Tool {
    program: "mformat",
    hint: INSTALL_DEPS,
};
pub(crate) const MCOPY: Tool = Tool {
    program: "mcopy",
    hint: INSTALL_DEPS,
};
pub(crate) const MMD: Tool = Tool {
    program: "mmd",
    hint: INSTALL_DEPS,
};
pub(crate) const SYSLINUX: Tool = Tool {
    program: "syslinux",
    hint: INSTALL_DEPS,
};
pub(crate) const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    hint: INSTALL_DEPS,
};
pub(crate) const XORRISO: Tool = Tool {
    program: "xorriso",
    hint: INSTALL_DEPS,
};
pub(crate) const XZ: Tool = Tool {
    program: "xz",
    hint: "install the Debian package xz-utils (the kernel's modules are xz-compressed)",
};
pub(crate) const ZSTD: Tool = Tool {
    program: "zstd",
    hint: "install the Debian package zstd (the kernel's modules are zstd-compressed)",
};

impl Tool {
    /// Runs the tool to its end and gives its standard output; a non-zero exit is an error
    /// carrying its standard error.
    pub(crate) fn run<I, S>(self, args: I, cwd: Option<&Path>) -> Result<Vec<u8>, GuestError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        let output = self.output(&args, cwd)?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(GuestError::CommandFailed {
            command: self.command_line(&args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Whether the program is on the `PATH`, as an executable file.
    pub(crate) fn is_installed(self) -> bool {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                fs::metadata(dir.join(self.program))
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            })
        })
    }

    /// Runs the tool and gives its whole output, whatever its exit status.
    pub(crate) fn output(
        self,
        args: &[std::ffi::OsString],
        cwd: Option<&Path>,
    ) -> Result<Output, GuestError> {
        let mut command = Command::new(self.program);
        command
            .args(args)
            .stdin(Stdio::null())
            // Same bytes every time, and messages in the words the errors quote.
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
            .env("LC_ALL", "C")
            // mtools refuses images whose size is not a whole number of its assumed tracks.
            .env("MTOOLS_SKIP_CHECK", "1");
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        match command.output() {
            Ok(output) => Ok(output),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(GuestError::MissingTool {
                tool: self.program.to_owned(),
                hint: self.hint.to_owned(),
            }),
            Err(source) => Err(GuestError::Run {
                command: self.command_line(args),
                source,
            }),
        }
    }

    pub(crate) fn command_line(self, args: &[std::ffi::OsString]) -> String {
        let mut line = self.program.to_owned();
        for arg in args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_its_hint() {
        let tool = Tool {
            program: "veem-no-such-program",
            hint: "install it",
        };
        let error = tool.run(["--version"], None).expect_err("not installed");
        assert_eq!(
            error.to_string(),
            "`veem-no-such-program` is not installed: install it"
        );
    }

    #[test]
    fn a_failure_carries_the_command_and_its_stderr() {
        let tool = Tool {
            program: "sh",
            hint: "",
        };
        let error = tool
            .run(["-c", "echo broken >&2; exit 3"], None)
            .expect_err("exits with 3");
        let message = error.to_string();
        assert!(
            message.contains("sh -c echo broken >&2; exit 3"),
            "{message}"
        );
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.ends_with(": broken"), "{message}");
    }

    #[test]
    fn a_program_on_the_path_is_installed_and_another_is_not() {
        let tool = |program| Tool { program, hint: "" };
        assert!(tool("sh").is_installed());
        assert!(!tool("veem-no-such-program").is_installed());
    }

    #[test]
    fn a_success_gives_stdout() {
        let tool = Tool {
            program: "sh",
            hint: "",
        };
        let stdout = tool
            .run(["-c", "printf \"$SOURCE_DATE_EPOCH\""], None)
            .expect("sh runs");
        assert_eq!(stdout, SOURCE_DATE_EPOCH.as_bytes());
    }
}
