//! VMware's OVF conformance corpus (`govmomi/xmltestfiles`): every `Pos` file is accepted (or,
//! in the pre-DMTF OVF 0.9 namespace, refused by name), every `Neg` file is refused for its
//! reason, except the named exceptions below, each accepted on purpose.

use std::collections::BTreeSet;
use std::path::Path;

use veem_ovf::{parse_envelope, validate_envelope, OvfError, ParseOptions};

use crate::{read, testdata};

const OVF09_NS: &str = "http://www.vmware.com/schema/ovf/1/envelope";

/// `Neg` files whose defect lies outside what the envelope means to a VEEM, or that the corpus
/// itself also lists as positive. veem accepts each of them; the test checks that it does.
const NEG_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "DigitalCertificates/Neg/valid_certificate.ovf",
        "certificate: the package's signature is what fails (the file is byte-identical to the Pos one)",
    ),
    (
        "Options/Neg/nvm001.ovf",
        "VMware-only option: negative only under an ovftool option (byte-identical to the Pos one)",
    ),
    (
        "HttpLocators_1_0/Neg/bare_minimal_http.ovf",
        "remote locator: negative only when fetched from a server (byte-identical to the Pos one)",
    ),
    (
        "HttpLocators_1_0/Neg/valid_no_disk_in_server.ovf",
        "remote locator: the server lacks unavailable.vmdk; the envelope itself is fine",
    ),
    (
        "Envelope_1_0/Neg/bare_minimal.ovf",
        "byte-identical to Envelope_1_0/Pos/bare_minimal.ovf, which the corpus accepts",
    ),
    (
        "Envelope_1_0/Neg/content_withnoinfo.ovf",
        "a VirtualSystem without Info, which the corpus accepts in Envelope_1_0/Pos/bare_minimal.ovf; \
         Info is text for people",
    ),
    (
        "Envelope_1_0/Neg/invalid_zero_capacity.ovf",
        "a VirtualSystem without Info (see content_withnoinfo.ovf); there is no disk to have a capacity",
    ),
    (
        "Envelope_1_0/Neg/no_version_num.ovf",
        "a VirtualSystem without Info (see content_withnoinfo.ovf); OVF 1.x has no version number to miss",
    ),
    (
        "Envelope_1_0/Neg/invalid_vmdk.ovf",
        "disk file content: dummy.vmdk is not a valid VMDK; veem reads images when it deploys them",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_size_neg.ovf",
        "disk file content: dummy.vmdk (byte-identical to invalid_vmdk.ovf)",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_size_null.ovf",
        "disk file content: dummy.vmdk; a File without ovf:size is valid (Pos/valid_vmdk_no_size.ovf)",
    ),
    (
        "Envelope_1_0/Neg/invalid_no_version.ovf",
        "disk file content: dummy.vmdk; OVF 1.x has no version attribute to miss",
    ),
    (
        "DiskSection_1_0/Neg/invalid_createType_disk.ovf",
        "disk file content: the VMDK's createType; the envelope equals Pos/valid_disk.ovf but the href",
    ),
    (
        "DiskSection_1_0/Neg/invalid_delta_reference_disk.ovf",
        "disk file content: the VMDK's parent link; the envelope equals Pos/valid_disk.ovf but the href",
    ),
    (
        "DiskSection_1_0/Neg/no_format.ovf",
        "a Disk without ovf:format: veem sniffs an image's format from its bytes, and govmomi's \
         deployment-configs.ovf, which veem must read, omits it too",
    ),
    (
        "DiskSection_1_0/Neg/dup_filerefs.ovf",
        "VMware-only rule (one Disk per File): DSP0243 allows sharing, and govmomi's \
         multiple_disks.ovf shares Files between per-configuration Disks",
    ),
    (
        "DiskSection_1_0/Neg/not_in_order_disks.ovf",
        "VMware-only rule: Disks listed in References order, for one-pass OVA streaming; the \
         envelope means the same in any order",
    ),
];

/// Exceptions the corpus ships twice, once as Pos: the test checks the bytes are the same.
const TWINS: &[(&str, &str)] = &[
    (
        "DigitalCertificates/Neg/valid_certificate.ovf",
        "DigitalCertificates/Pos/valid_certificate.ovf",
    ),
    ("Options/Neg/nvm001.ovf", "Options/Pos/nvm001.ovf"),
    (
        "HttpLocators_1_0/Neg/bare_minimal_http.ovf",
        "HttpLocators_1_0/Pos/bare_minimal_http.ovf",
    ),
    (
        "Envelope_1_0/Neg/bare_minimal.ovf",
        "Envelope_1_0/Pos/bare_minimal.ovf",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_size_neg.ovf",
        "Envelope_1_0/Neg/invalid_vmdk.ovf",
    ),
];

/// Valid OVF with nothing to deploy: a VirtualSystemCollection holding no VirtualSystem.
/// `validate_envelope` accepts them, `parse_envelope` says there is nothing to deploy.
const NOTHING_TO_DEPLOY: &[&str] = &[
    "VirtualAppliances/Pos/nvapp003.ovf",
    "VirtualAppliances/Pos/nvapp004.ovf",
    "VirtualAppliances/Pos/nvapp005.ovf",
    "VirtualAppliances/Pos/nvapp006.ovf",
    "VirtualAppliances/Pos/nvapp007.ovf",
    "VirtualAppliances/Pos/nvapp008.ovf",
];

/// Every other `Neg` file of the DMTF namespaces, and a piece of the error veem must give.
const NEG_REASONS: &[(&str, &str)] = &[
    (
        "AnnotationSection_1_0/Neg/ann_sec_elsewhr.ovf",
        "AnnotationSection: not allowed in Envelope",
    ),
    (
        "DiskSection_1_0/Neg/dup_diskid.ovf",
        "ovf:diskId \"vmdisk1\" is used more than once",
    ),
    (
        "DiskSection_1_0/Neg/inside_content.ovf",
        "VirtualSystem[id=PTC01_VM]/DiskSection: not allowed in VirtualSystem",
    ),
    (
        "DiskSection_1_0/Neg/no_capacity.ovf",
        "DiskSection/Disk[diskId=vmdisk1]: missing ovf:capacity",
    ),
    (
        "DiskSection_1_0/Neg/no_diskid.ovf",
        "DiskSection/Disk[1]: missing ovf:diskId",
    ),
    (
        "DiskSection_1_0/Neg/popsize_gt_capacity.ovf",
        "ovf:populatedSize 8589934593 is larger than the capacity",
    ),
    (
        "Envelope_1_0/Neg/content_vmwithnoid.ovf",
        "VirtualSystem: missing ovf:id",
    ),
    (
        "Envelope_1_0/Neg/content_withnovm.ovf",
        "Envelope/UnKnown: veem does not understand this element",
    ),
    (
        "Envelope_1_0/Neg/fileelements_samefile.ovf",
        "ovf:href \"doesnotexist.vmdk\" is also the href of File \"file1\"",
    ),
    (
        "Envelope_1_0/Neg/invalid_empty_env.ovf",
        "Envelope: missing VirtualSystem or VirtualSystemCollection",
    ),
    (
        "Envelope_1_0/Neg/invalid_env.ovf",
        "not well-formed XML: an unknown namespace prefix 'ovf'",
    ),
    (
        "Envelope_1_0/Neg/invalid_namespace.ovf",
        "namespace \"http://nosuchspec.com/ovf/envelope/1\" is neither OVF 1.x",
    ),
    (
        "Envelope_1_0/Neg/invalid_neg_chunk.ovf",
        "References/File[id=file1]: ovf:size \"abcd\" is not a number",
    ),
    (
        "Envelope_1_0/Neg/invalid_no_file_in_ref.ovf",
        "ovf:fileRef \"file1\" names no File of References",
    ),
    (
        "Envelope_1_0/Neg/invalid_no_ref.ovf",
        "ovf:fileRef \"file1\" names no File of References",
    ),
    (
        "Envelope_1_0/Neg/invalid_no_vm.ovf",
        "Envelope: missing VirtualSystem or VirtualSystemCollection",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_dup_id.ovf",
        "References/File[id=file1]: ovf:id \"file1\" is used more than once",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_id.ovf",
        "References/File[1]: missing ovf:id",
    ),
    (
        "Envelope_1_0/Neg/invalid_ref_no_href.ovf",
        "References/File[id=file1]: missing ovf:href",
    ),
    (
        "Envelope_1_0/Neg/invalid_version.ovf",
        "mixes the OVF 1.x and OVF 2.x namespaces",
    ),
    (
        "Envelope_1_0/Neg/no_content.ovf",
        "Envelope: missing VirtualSystem or VirtualSystemCollection",
    ),
    (
        "Envelope_1_0/Neg/section_compatibility_neg.ovf",
        "unknown namespace prefix 'ovf-namspace'",
    ),
    (
        "Envelope_1_0/Neg/section_compatibility_rec.ovf",
        "unknown namespace prefix 'ovf-namspace'",
    ),
    (
        "Envelope_1_0/Neg/section_withnoinfo.ovf",
        "VirtualSystem[id=PTCO1]/OperatingSystemSection: missing Info",
    ),
    (
        "NetworkSection_1_0/Neg/net_sec_elsewhr.ovf",
        "VirtualSystem[id=PTC01_VM]/NetworkSection: not allowed in VirtualSystem",
    ),
    (
        "NetworkSection_1_0/Neg/no_net.ovf",
        "rasd:Connection \"VM Network 1\" names no Network: the envelope has no NetworkSection",
    ),
    (
        "ProductSection_1_0/Neg/dup_prodsec.ovf",
        "same ovf:class and ovf:instance",
    ),
    (
        "ProductSection_1_0/Neg/prop_dup_keys.ovf",
        "ovf:key \"imunique\" is used more than once",
    ),
    (
        "ProductSection_1_0/Neg/prop_invalid_type.ovf",
        "ovf:type \"nosuchtype\" is not a DSP0243 property type",
    ),
    (
        "ProductSection_1_0/Neg/prop_no_key.ovf",
        "Property: missing ovf:key",
    ),
    (
        "ProductSection_1_0/Neg/prop_no_type.ovf",
        "Property[key=imunique]: missing ovf:type",
    ),
    (
        "RASection_1_0/Neg/ras_sec_elsewhr.ovf",
        "ResourceAllocationSection: not allowed in VirtualSystem",
    ),
    (
        "VirtualAppliances/Neg/nvapp001.ovf",
        "StartupSection/Item: ovf:id \"db\" names no VirtualSystem",
    ),
    (
        "VirtualHardware_1_0/Neg/child_uitem_req_true.ovf",
        "Item[InstanceID=8]/rasd:Unknown: veem does not understand this element",
    ),
    (
        "VirtualHardware_1_0/Neg/child_uitem_req_unspec.ovf",
        "Item[InstanceID=8]/rasd:Unknown: veem does not understand this element",
    ),
    (
        "VirtualHardware_1_0/Neg/dup_instanceid.ovf",
        "Item[InstanceID=6]: rasd:ResourceType 3 differs from 17",
    ),
    (
        "VirtualHardware_1_0/Neg/empty_item.ovf",
        "VirtualHardwareSection/Item[1]: missing rasd:InstanceID",
    ),
    (
        "VirtualHardware_1_0/Neg/empty_system.ovf",
        "unknown namespace prefix 'ovf-namespace'",
    ),
    (
        "VirtualHardware_1_0/Neg/invalid_multiple_vh.ovf",
        "VirtualHardwareSection/Item[1]: missing rasd:InstanceID",
    ),
    (
        "VirtualHardware_1_0/Neg/maxwith_nonormal.ovf",
        "Item[InstanceID=3]: missing rasd:VirtualQuantity",
    ),
    (
        "VirtualHardware_1_0/Neg/no_instanceid.ovf",
        "VirtualHardwareSection/Item[1]: missing rasd:InstanceID",
    ),
    (
        "VirtualHardware_1_0/Neg/no_resourcetype.ovf",
        "Item[InstanceID=6]: missing rasd:ResourceType",
    ),
    (
        "VirtualHardware_1_0/Neg/no_vh.ovf",
        "VirtualSystem[id=PTC01_VM]: missing VirtualHardwareSection",
    ),
    (
        "VirtualHardware_1_0/Neg/noninteger_range.ovf",
        "rasd:VirtualQuantity \"Thousand and Twenty Four\" is not a number",
    ),
    (
        "VirtualHardware_1_0/Neg/twomax_rangemarker.ovf",
        "Item[InstanceID=2,bound=max]: rasd:InstanceID \"2\" is used more than once",
    ),
    (
        "VirtualHardware_1_0/Neg/twomin_rangemarker.ovf",
        "Item[InstanceID=2,bound=min]: rasd:InstanceID \"2\" is used more than once",
    ),
    (
        "VirtualHardware_1_0/Neg/vh_under_env.ovf",
        "VirtualHardwareSection: not allowed in Envelope",
    ),
];

fn corpus_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("readable directory").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "ovf") {
                let relative = path.strip_prefix(base).expect("under the corpus");
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let base = testdata().join("govmomi/xmltestfiles");
    let mut files = Vec::new();
    walk(&base, &base, &mut files);
    files.sort();
    files
}

fn corpus(relative: &str) -> String {
    read(&format!("xmltestfiles/{relative}"))
}

fn parse(text: &str) -> Result<veem_model::VeeDescriptor, OvfError> {
    parse_envelope(text, &ParseOptions::default())
}

#[test]
fn the_corpus_is_there_and_every_listed_file_exists() {
    let files: BTreeSet<String> = corpus_files().into_iter().collect();
    assert!(files.len() > 300, "only {} files found", files.len());
    let listed = NEG_EXCEPTIONS
        .iter()
        .map(|(f, _)| *f)
        .chain(NEG_REASONS.iter().map(|(f, _)| *f))
        .chain(NOTHING_TO_DEPLOY.iter().copied())
        .chain(TWINS.iter().flat_map(|(a, b)| [*a, *b]));
    for file in listed {
        assert!(files.contains(file), "{file} is not in the corpus");
    }
    for (neg, pos) in TWINS {
        assert_eq!(corpus(neg), corpus(pos), "{neg} and {pos} differ");
    }
    for (file, _) in NEG_EXCEPTIONS
        .iter()
        .filter(|(_, why)| why.contains("dummy.vmdk"))
    {
        assert!(corpus(file).contains("vmdk/dummy.vmdk"), "{file}");
    }
}

#[test]
fn every_positive_file_is_accepted_or_refused_as_ovf_0_9() {
    let mut accepted = 0;
    for file in corpus_files().iter().filter(|f| !f.contains("/Neg/")) {
        let text = corpus(file);
        let result = parse(&text);
        if text.contains(OVF09_NS) {
            let err = result.expect_err(file);
            assert!(matches!(err, OvfError::Ovf09 { .. }), "{file}: {err}");
            assert!(err.to_string().contains("OVF 0.9"), "{file}: {err}");
            continue;
        }
        validate_envelope(&text, &ParseOptions::default())
            .unwrap_or_else(|e| panic!("{file} is valid OVF: {e}"));
        if NOTHING_TO_DEPLOY.contains(&file.as_str()) {
            let err = result.expect_err(file);
            assert!(
                err.to_string().contains("nothing to deploy"),
                "{file}: {err}"
            );
            continue;
        }
        if let Err(e) = result {
            panic!("{file} must be accepted: {e}");
        }
        accepted += 1;
    }
    assert!(accepted > 100, "only {accepted} positive files accepted");
}

#[test]
fn every_negative_file_is_refused_for_its_reason() {
    let mut refused = 0;
    let negatives: Vec<String> = corpus_files()
        .into_iter()
        .filter(|f| f.contains("/Neg/"))
        .collect();
    for file in &negatives {
        let text = corpus(file);
        let result = parse(&text);
        if let Some((_, why)) = NEG_EXCEPTIONS.iter().find(|(f, _)| f == file) {
            assert!(!why.is_empty());
            if let Err(e) = result {
                panic!("{file} is an exception ({why}) and must be accepted: {e}");
            }
            continue;
        }
        let err = match result {
            Ok(d) => panic!("{file} must be refused, got {d:?}"),
            Err(e) => e,
        };
        refused += 1;
        let message = err.to_string();
        assert!(
            message.contains(&err.element()),
            "{file}: {message:?} does not name {:?}",
            err.element()
        );
        if text.contains(OVF09_NS) {
            assert!(matches!(err, OvfError::Ovf09 { .. }), "{file}: {message}");
            continue;
        }
        let (_, reason) = NEG_REASONS
            .iter()
            .find(|(f, _)| f == file)
            .unwrap_or_else(|| panic!("{file} has no expected reason: {message}"));
        assert!(
            message.contains(reason),
            "{file}: {message:?} !~ {reason:?}"
        );
    }
    assert_eq!(
        refused + NEG_EXCEPTIONS.len(),
        negatives.len(),
        "every negative file is either refused or a named exception"
    );
}
