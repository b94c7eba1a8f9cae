//! Running the host's tools (`qemu-img`, mtools, `ip`): one place that turns a failed command
//! into a [`DriverError`] that names it and quotes what it said.

use std::process::Stdio;

use crate::DriverError;

/// Runs `command` to its end and answers its standard output; a failure to start it, or a
/// non-zero exit, is `op` failing with the program and its standard error.
pub(crate) async fn output(
    op: &'static str,
    mut command: tokio::process::Command,
) -> Result<String, DriverError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| DriverError::Failed {
            op,
            reason: format!("cannot run {program}: {e}"),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(DriverError::Failed {
            op,
            reason: format!(
                "{program} {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}
