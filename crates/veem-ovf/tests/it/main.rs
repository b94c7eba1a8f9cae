//! veem-ovf against real OVF descriptors (`shared/testdata/ovf`, next to the repository) and
//! against hostile input.

mod corpus;
mod fixtures;
mod robustness;
mod security;

use std::path::PathBuf;

use veem_model::VeeDescriptor;
use veem_ovf::{parse_envelope, OvfError, ParseOptions};

/// `shared/testdata/ovf`: the repository is checked out next to `shared/`.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/ovf")
}

/// A test data file, by its path under `shared/testdata/ovf/govmomi`.
pub fn read(relative: &str) -> String {
    let path = testdata().join("govmomi").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn parse_file(relative: &str, configuration: Option<&str>) -> Result<VeeDescriptor, OvfError> {
    parse_envelope(
        &read(relative),
        &ParseOptions {
            configuration: configuration.map(str::to_owned),
        },
    )
}
