//! What every test that needs QEMU, root or a host tool does when it is missing: in CI (the
//! `CI` variable is set) it fails, since a green run that booted no VM proves nothing; on a
//! developer's machine it says so loudly and skips.

use std::io::Write as _;

/// Whether CI runs us: there a missing requirement is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Answers `true` when `available`; else fails the test in CI and, elsewhere, prints that it
/// skips because of `missing` and answers `false` (the caller returns).
///
/// # Panics
/// In CI, when `available` is false.
pub fn require(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "{missing}: CI must have it (scripts/install-deps installs it); this test cannot be skipped there"
    );
    // Straight to stderr: libtest would hide an eprintln! of a passing test.
    let _ = std::io::stderr()
        .write_all(format!("\n\n======== SKIPPED: {missing} ========\n\n").as_bytes());
    false
}
