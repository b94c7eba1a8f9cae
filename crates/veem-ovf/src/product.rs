//! ProductSection properties -> the VEE's context properties (what its ovf-env.xml will carry).
//!
//! Keys follow DSP0243: `[class.]key[.instance]` when the ProductSection has `ovf:class` or
//! `ovf:instance`. A property's value is `ovf:value`, replaced by a `Value` child whose
//! `ovf:configuration` is in force; a property with no value gets the empty string, as the
//! OVF environment must still list it. A property whose `ovf:configuration` is not in force
//! (a VMware extension) is left out. Qualifiers and `ovf:userConfigurable` are not checked: the
//! SM sets the values it wants at submission.

use std::collections::{BTreeMap, HashMap, HashSet};

use roxmltree::Node;

use crate::package::Configurations;
use crate::xml::Ovf;
use crate::OvfError;

/// DSP0243's property types; `int`, which no version of DSP0243 defines, is accepted as
/// `sint32` because real tools (and VMware's own corpus) write it.
const TYPES: &[&str] = &[
    "uint8", "sint8", "uint16", "sint16", "uint32", "sint32", "uint64", "sint64", "boolean",
    "string", "real32", "real64", "int",
];

/// The configurations in which a property key is already given.
#[derive(Default)]
struct Seen {
    everywhere: bool,
    configurations: HashSet<String>,
}

/// Properties of `system` and of its immediate parent collection (DSP0243: both are in a
/// virtual system's environment).
pub(crate) fn read(
    ovf: Ovf<'_>,
    system: Node<'_, '_>,
    system_path: &str,
    collection: Option<(Node<'_, '_>, String)>,
    configurations: &Configurations,
) -> Result<BTreeMap<String, String>, OvfError> {
    let mut properties = BTreeMap::new();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut contents = Vec::new();
    if let Some((node, path)) = collection {
        contents.push((node, path));
    }
    contents.push((system, system_path.to_owned()));
    for (content, content_path) in contents {
        let mut sections: HashSet<(Option<&str>, Option<&str>)> = HashSet::new();
        for section in ovf.children(content, "ProductSection") {
            let class = ovf.attr(section, "class").filter(|c| !c.is_empty());
            let instance = ovf.attr(section, "instance").filter(|i| !i.is_empty());
            let path = format!(
                "{content_path}/ProductSection[class={},instance={}]",
                class.unwrap_or(""),
                instance.unwrap_or("")
            );
            if !sections.insert((class, instance)) {
                return Err(OvfError::invalid(
                    path,
                    "another ProductSection of this content has the same ovf:class and ovf:instance",
                ));
            }
            for property in ovf.children(section, "Property") {
                read_property(
                    ovf,
                    property,
                    (class, instance),
                    &path,
                    configurations,
                    &mut seen,
                    &mut properties,
                )?;
            }
        }
    }
    Ok(properties)
}

fn read_property(
    ovf: Ovf<'_>,
    property: Node<'_, '_>,
    (class, instance): (Option<&str>, Option<&str>),
    section_path: &str,
    configurations: &Configurations,
    seen: &mut HashMap<String, Seen>,
    properties: &mut BTreeMap<String, String>,
) -> Result<(), OvfError> {
    let key = ovf
        .attr(property, "key")
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| OvfError::missing(format!("{section_path}/Property"), "ovf:key"))?;
    let path = format!("{section_path}/Property[key={key}]");
    let ty = ovf
        .attr(property, "type")
        .ok_or_else(|| OvfError::missing(&path, "ovf:type"))?;
    if !TYPES.contains(&ty) {
        return Err(OvfError::invalid(
            &path,
            format!(
                "ovf:type {ty:?} is not a DSP0243 property type (uint8..uint64, sint8..sint64, \
                 boolean, string, real32, real64)"
            ),
        ));
    }
    let full_key = match (class, instance) {
        (Some(c), Some(i)) => format!("{c}.{key}.{i}"),
        (Some(c), None) => format!("{c}.{key}"),
        (None, Some(i)) => format!("{key}.{i}"),
        (None, None) => key.to_owned(),
    };
    let configuration = ovf.attr(property, "configuration");
    let in_force = configurations.applies(configuration, &path)?;
    let given = seen.entry(full_key.clone()).or_default();
    let ids: Vec<&str> = configuration
        .map(|c| {
            c.split(|ch: char| ch.is_whitespace() || ch == ',')
                .filter(|id| !id.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let overlaps = if ids.is_empty() {
        given.everywhere || !given.configurations.is_empty()
    } else {
        given.everywhere || ids.iter().any(|id| given.configurations.contains(*id))
    };
    if overlaps {
        return Err(OvfError::duplicate(path, "ovf:key", full_key));
    }
    if ids.is_empty() {
        given.everywhere = true;
    } else {
        given
            .configurations
            .extend(ids.iter().map(|id| (*id).to_owned()));
    }
    let mut value = ovf.attr(property, "value").unwrap_or("");
    for per_configuration in ovf.children(property, "Value") {
        let v = ovf
            .attr(per_configuration, "value")
            .ok_or_else(|| OvfError::missing(format!("{path}/Value"), "ovf:value"))?;
        if configurations.applies(
            ovf.attr(per_configuration, "configuration"),
            &format!("{path}/Value"),
        )? {
            value = v;
        }
    }
    let value = check_value(ty, value, &path)?;
    if in_force {
        properties.insert(full_key, value);
    }
    Ok(())
}

/// The value as veem stores it: strings as written, other types without the surrounding
/// whitespace XML Schema ignores. A `${...}` expression is left for the deployer.
fn check_value(ty: &str, value: &str, path: &str) -> Result<String, OvfError> {
    if ty == "string" || value.contains("${") {
        return Ok(value.to_owned());
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let range: Option<(i128, i128)> = match ty {
        "uint8" => Some((0, u8::MAX.into())),
        "sint8" => Some((i8::MIN.into(), i8::MAX.into())),
        "uint16" => Some((0, u16::MAX.into())),
        "sint16" => Some((i16::MIN.into(), i16::MAX.into())),
        "uint32" => Some((0, u32::MAX.into())),
        "sint32" | "int" => Some((i32::MIN.into(), i32::MAX.into())),
        "uint64" => Some((0, u64::MAX.into())),
        "sint64" => Some((i64::MIN.into(), i64::MAX.into())),
        _ => None,
    };
    let ok = match (ty, range) {
        (_, Some((low, high))) => trimmed
            .strip_prefix('+')
            .unwrap_or(trimmed)
            .parse::<i128>()
            .is_ok_and(|n| (low..=high).contains(&n)),
        ("boolean", _) => ["true", "false", "1", "0"]
            .iter()
            .any(|b| trimmed.eq_ignore_ascii_case(b)),
        _ => trimmed.parse::<f64>().is_ok(),
    };
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(OvfError::invalid(
            path,
            format!("ovf:value {value:?} is not a valid {ty}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_against_their_type() {
        let ok = [
            ("uint8", "255", "255"),
            ("sint8", "-128", "-128"),
            ("int", "  42  ", "42"),
            ("uint64", "18446744073709551615", "18446744073709551615"),
            ("boolean", "True", "True"),
            ("boolean", "0", "0"),
            ("real32", "4.5", "4.5"),
            ("real64", "9.000000000000", "9.000000000000"),
            ("string", "  kept  ", "  kept  "),
            ("uint16", "", ""),
            ("uint16", "${size}", "${size}"),
        ];
        for (ty, value, stored) in ok {
            assert_eq!(
                check_value(ty, value, "P").expect(value),
                stored,
                "{ty} {value:?}"
            );
        }
        let bad = [
            ("uint8", "256"),
            ("uint8", "-1"),
            ("sint64", "9223372036854775808"),
            ("boolean", "yes"),
            ("real64", "four"),
            ("uint32", "1.5"),
        ];
        for (ty, value) in bad {
            let err = check_value(ty, value, "ProductSection/Property[key=k]").expect_err(value);
            assert_eq!(err.element(), "ProductSection/Property[key=k]");
            assert!(err.to_string().contains(ty), "{err}");
        }
    }
}
