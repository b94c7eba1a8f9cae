//! Hostile envelopes are refused quickly: entity bombs, external entities, deep nesting, huge
//! repetitive hardware.

use std::time::{Duration, Instant};

use veem_ovf::{parse_envelope, OvfError, ParseOptions};

const QUICK: Duration = Duration::from_secs(2);

fn timed(xml: &str) -> (Result<veem_model::VeeDescriptor, OvfError>, Duration) {
    let start = Instant::now();
    let result = parse_envelope(xml, &ParseOptions::default());
    (result, start.elapsed())
}

const ENVELOPE_OPEN: &str = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">"#;

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut dtd = String::from("<!DOCTYPE Envelope [\n<!ENTITY lol \"lol\">\n");
    for level in 1..=9 {
        let previous = if level == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", level - 1)
        };
        let body = format!("&{previous};").repeat(10);
        dtd.push_str(&format!("<!ENTITY lol{level} \"{body}\">\n"));
    }
    dtd.push_str("]>\n");
    for doctype in [dtd.clone(), dtd.replace("<!DOCTYPE", "<!doctype")] {
        let xml = format!(
            "<?xml version=\"1.0\"?>\n{doctype}{ENVELOPE_OPEN}<VirtualSystem ovf:id=\"v\"><Info>&lol9;</Info></VirtualSystem></Envelope>"
        );
        let (result, took) = timed(&xml);
        let err = result.expect_err("an entity bomb is refused");
        assert!(matches!(err, OvfError::DtdNotAllowed), "{err}");
        assert!(err.to_string().contains("DTDs are not allowed"), "{err}");
        assert!(took < QUICK, "took {took:?}");
    }
}

#[test]
fn external_entities_are_refused_and_never_read() {
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n\
         {ENVELOPE_OPEN}<VirtualSystem ovf:id=\"v\"><Info>&xxe;</Info></VirtualSystem></Envelope>"
    );
    let (result, took) = timed(&xml);
    let err = result.expect_err("an external entity is refused");
    assert!(matches!(err, OvfError::DtdNotAllowed), "{err}");
    assert!(!err.to_string().contains("root:"), "{err}");
    assert!(took < QUICK, "took {took:?}");

    // A parameter entity hidden after a comment is still a DTD.
    let xml = format!(
        "<!-- c --><!DOCTYPE x SYSTEM \"http://example.com/evil.dtd\">{ENVELOPE_OPEN}</Envelope>"
    );
    assert!(matches!(timed(&xml).0, Err(OvfError::DtdNotAllowed)));
}

#[test]
fn an_undeclared_entity_is_an_xml_error() {
    let xml = format!(
        "{ENVELOPE_OPEN}<VirtualSystem ovf:id=\"v\"><Info>&xxe;</Info></VirtualSystem></Envelope>"
    );
    let (result, took) = timed(&xml);
    let err = result.expect_err("unknown entity");
    assert!(matches!(err, OvfError::Xml { .. }), "{err}");
    assert!(took < QUICK, "took {took:?}");
}

fn nested_collections(depth: usize) -> String {
    let mut xml = String::from(ENVELOPE_OPEN);
    for i in 0..depth {
        xml.push_str(&format!(
            "<VirtualSystemCollection ovf:id=\"c{i}\"><Info>i</Info>"
        ));
    }
    xml.push_str("<VirtualSystem ovf:id=\"v\"><Info>i</Info><VirtualHardwareSection><Info>h</Info></VirtualHardwareSection></VirtualSystem>");
    xml.push_str(&"</VirtualSystemCollection>".repeat(depth));
    xml.push_str("</Envelope>");
    xml
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for xml in [
        nested_collections(50_000),
        format!("{}{}", "<a>".repeat(1_000_000), "</a>".repeat(1_000_000)),
    ] {
        let (result, took) = timed(&xml);
        let err = result.expect_err("too deep");
        assert!(
            err.to_string().contains("elements nest deeper than"),
            "{err}"
        );
        assert!(took < QUICK, "took {took:?}");
    }
}

#[test]
fn collections_nest_at_most_sixteen_deep() {
    let d = timed(&nested_collections(16)).0.expect("16 is allowed");
    assert_eq!(d.name, "v");
    let err = timed(&nested_collections(17)).0.expect_err("17 is not");
    assert!(
        err.to_string().contains("collections nest deeper than 16"),
        "{err}"
    );
}

#[test]
fn many_elements_stay_cheap() {
    // Tens of thousands of Items sharing one InstanceID, each for its own configuration, and as
    // many properties: every check must stay linear.
    let n = 20_000;
    let mut options = String::from("<DeploymentOptionSection><Info>o</Info>");
    let mut items = String::new();
    let mut properties = String::new();
    for i in 0..n {
        options.push_str(&format!("<Configuration ovf:id=\"c{i}\"/>"));
        items.push_str(&format!(
            "<Item ovf:configuration=\"c{i}\"><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>"
        ));
        properties.push_str(&format!(
            "<Property ovf:key=\"k\" ovf:type=\"string\" ovf:configuration=\"c{i}\" ovf:value=\"{i}\"/>"
        ));
    }
    options.push_str("</DeploymentOptionSection>");
    let xml = format!(
        "{ENVELOPE_OPEN}{options}<VirtualSystem ovf:id=\"v\"><Info>i</Info>\
         <ProductSection><Info>p</Info>{properties}</ProductSection>\
         <VirtualHardwareSection><Info>h</Info>{items}</VirtualHardwareSection></VirtualSystem></Envelope>"
    );
    let (result, took) = timed(&xml);
    let d = result.expect("valid, if large");
    assert_eq!(d.cpu, 2);
    assert_eq!(
        d.context.properties["k"], "0",
        "the first configuration is in force"
    );
    assert!(took < QUICK * 5, "took {took:?}");
}

#[test]
fn too_many_nics_are_refused() {
    let mut items = String::new();
    for i in 0..1000 {
        items.push_str(&format!(
            "<Item><rasd:InstanceID>{i}</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType><rasd:Connection>n</rasd:Connection></Item>"
        ));
    }
    let xml = format!(
        "{ENVELOPE_OPEN}<NetworkSection><Info>n</Info><Network ovf:name=\"n\"/></NetworkSection>\
         <VirtualSystem ovf:id=\"v\"><Info>i</Info><VirtualHardwareSection><Info>h</Info>{items}\
         </VirtualHardwareSection></VirtualSystem></Envelope>"
    );
    let err = timed(&xml).0.expect_err("1000 NICs");
    assert!(err.to_string().contains("more than 64 NICs"), "{err}");
}
