//! Fuzzes `veem_ovf::parse_envelope`: it must never panic, and whatever it accepts must be a
//! valid descriptor. Run with `cargo +nightly fuzz run parse_envelope` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veem_ovf::{parse_envelope, ParseOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line, when short, picks a deployment configuration.
    let configuration = text
        .split_once('\n')
        .map(|(first, _)| first)
        .filter(|first| first.len() <= 16 && !first.starts_with('<'))
        .map(str::to_owned);
    if let Ok(mut descriptor) = parse_envelope(text, &ParseOptions { configuration }) {
        let before = descriptor.clone();
        assert!(
            descriptor.validate().is_ok(),
            "accepted an invalid descriptor"
        );
        assert_eq!(descriptor, before, "validate() changed a parsed descriptor");
    }
});
