//! `parse_envelope` never panics: on any string, on OVF-looking fragment soup, and on real
//! envelopes mutated at random. Whatever it returns is consistent: a descriptor it accepts is
//! valid, an error it gives names its element.

use std::sync::OnceLock;

use proptest::prelude::*;
use veem_ovf::{parse_envelope, ParseOptions};

use crate::read;

const SEEDS: &[&str] = &[
    "ttylinux.ovf",
    "properties.ovf",
    "deployment-configs.ovf",
    "multiple_disks.ovf",
    "virtualsystemcollection.ovf",
    "nostalgia-megabytes.ovf",
    "make_delta-spaced-units.ovf",
    "xmltestfiles/VirtualHardware_1_0/Pos/valid_bound.ovf",
    "xmltestfiles/VirtualAppliances/Pos/nvapp001.ovf",
];

fn seeds() -> &'static [String] {
    static SEEDS_TEXT: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS_TEXT.get_or_init(|| SEEDS.iter().map(|f| read(f)).collect())
}

/// Parses and checks what can be checked of any outcome.
fn check(text: &str, configuration: Option<String>) {
    match parse_envelope(text, &ParseOptions { configuration }) {
        Ok(mut descriptor) => {
            let before = descriptor.clone();
            descriptor
                .validate()
                .expect("an accepted envelope gives a valid descriptor");
            assert_eq!(descriptor, before, "validate() changed a parsed descriptor");
        }
        Err(e) => {
            let element = e.element();
            assert!(!element.is_empty(), "{e}");
            assert!(
                e.to_string().contains(&element),
                "{e} does not name {element}"
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { from: usize, len: usize, at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragment = prop_oneof![
        Just("<".to_owned()),
        Just(">".to_owned()),
        Just("/>".to_owned()),
        Just("\"".to_owned()),
        Just("&amp;".to_owned()),
        Just("&bogus;".to_owned()),
        Just("<!--".to_owned()),
        Just(" ovf:required=\"false\"".to_owned()),
        Just(" ovf:configuration=\"small\"".to_owned()),
        Just(" ovf:bound=\"max\"".to_owned()),
        Just("<rasd:VirtualQuantity>99999999999999999999</rasd:VirtualQuantity>".to_owned()),
        Just("<rasd:ResourceType>17</rasd:ResourceType>".to_owned()),
        Just("<rasd:HostResource>ovf:/disk/x</rasd:HostResource>".to_owned()),
        Just("${".to_owned()),
        Just("\u{0}".to_owned()),
        Just("é".to_owned()),
        "[ -~]{0,12}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), fragment).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 0usize..200, any::<usize>())
            .prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
    ]
}

/// A char boundary of `text` at or below `at`, after wrapping `at` into the text.
fn boundary(text: &str, at: usize) -> usize {
    floor(text, at % (text.len() + 1))
}

/// The char boundary at or below `at`, clamped to the text.
fn floor(text: &str, at: usize) -> usize {
    let mut i = at.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, m: &Mutation) {
    match *m {
        Mutation::Delete { at, len } => {
            let start = boundary(text, at);
            let end = floor(text, start.saturating_add(len));
            text.replace_range(start..end, "");
        }
        Mutation::Insert {
            at,
            text: ref piece,
        } => {
            let at = boundary(text, at);
            text.insert_str(at, piece);
        }
        Mutation::Duplicate { from, len, at } => {
            let start = boundary(text, from);
            let end = floor(text, start.saturating_add(len));
            let piece = text[start..end].to_owned();
            let at = boundary(text, at);
            text.insert_str(at, &piece);
        }
    }
}

const FRAGMENTS: &[&str] = &[
    "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\">",
    "</Envelope>",
    "<VirtualSystem ovf:id=\"a\">",
    "<VirtualSystem ovf:id=\"b\">",
    "</VirtualSystem>",
    "<VirtualSystemCollection ovf:id=\"c\">",
    "</VirtualSystemCollection>",
    "<Info>i</Info>",
    "<VirtualHardwareSection>",
    "</VirtualHardwareSection>",
    "<Item>",
    "<Item ovf:bound=\"max\">",
    "<Item ovf:configuration=\"x\">",
    "</Item>",
    "<rasd:InstanceID>1</rasd:InstanceID>",
    "<rasd:InstanceID>2</rasd:InstanceID>",
    "<rasd:ResourceType>3</rasd:ResourceType>",
    "<rasd:ResourceType>4</rasd:ResourceType>",
    "<rasd:ResourceType>10</rasd:ResourceType>",
    "<rasd:ResourceType>17</rasd:ResourceType>",
    "<rasd:VirtualQuantity>2</rasd:VirtualQuantity>",
    "<rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>",
    "<rasd:HostResource>ovf:/disk/d</rasd:HostResource>",
    "<rasd:Connection>n</rasd:Connection>",
    "<References><File ovf:id=\"f\" ovf:href=\"f.vmdk\"/></References>",
    "<DiskSection><Info>d</Info><Disk ovf:diskId=\"d\" ovf:fileRef=\"f\" ovf:capacity=\"1\" ovf:capacityAllocationUnits=\"byte * 2^30\"/></DiskSection>",
    "<Disk ovf:diskId=\"d\" ovf:capacity=\"${p}\"/>",
    "<NetworkSection><Info>n</Info><Network ovf:name=\"n\"/></NetworkSection>",
    "<DeploymentOptionSection><Info>o</Info><Configuration ovf:id=\"x\" ovf:default=\"true\"/></DeploymentOptionSection>",
    "<ProductSection><Info>p</Info>",
    "</ProductSection>",
    "<Property ovf:key=\"p\" ovf:type=\"uint8\" ovf:value=\"3\"/>",
    "<Property ovf:key=\"p\" ovf:type=\"string\"><Value ovf:value=\"v\" ovf:configuration=\"x\"/></Property>",
    "<StartupSection><Info>s</Info><Item ovf:id=\"a\"/></StartupSection>",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_any_string(text in any::<String>()) {
        check(&text, None);
    }

    #[test]
    fn never_panics_on_fragment_soup(
        parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40),
        configuration in prop::option::of(prop::sample::select(&["x", "y"][..])),
    ) {
        check(&parts.concat(), configuration.map(str::to_owned));
    }

    #[test]
    fn never_panics_on_mutated_real_envelopes(
        seed in 0..SEEDS.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
        configuration in prop::option::of(prop::sample::select(&["small", "medium", "large"][..])),
    ) {
        let mut text = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut text, m);
        }
        check(&text, configuration.map(str::to_owned));
    }
}

#[test]
fn the_unmutated_seeds_parse() {
    for (file, text) in SEEDS.iter().zip(seeds()) {
        parse_envelope(text, &ParseOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
