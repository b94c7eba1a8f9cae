//! Byte units as real tools write them in `rasd:AllocationUnits` and
//! `ovf:capacityAllocationUnits`: DSP0004 programmatic units (`byte * 2^20`, with or without
//! spaces, in any case) and the older words (`MegaBytes`, `MB`, `KiloBytes`, ...).

/// How many bytes one unit is, or `None` when the text is not a unit of bytes veem knows.
pub(crate) fn bytes_per_unit(text: &str) -> Option<u128> {
    let unit: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let word = match unit.as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobyte" | "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabyte" | "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabyte" | "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabyte" | "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if word.is_some() {
        return word;
    }
    let rest = unit
        .strip_prefix("bytes*")
        .or_else(|| unit.strip_prefix("byte*"))?;
    // DSP0004 allows a product of powers: `byte*2^10*2^10` is a MiB too.
    rest.split('*').try_fold(1u128, |acc, factor| {
        let (base, exponent) = factor.split_once('^')?;
        let base: u128 = base.parse().ok().filter(|b| *b == 2 || *b == 10)?;
        let exponent: u32 = exponent.parse().ok().filter(|e| *e <= 60)?;
        acc.checked_mul(base.checked_pow(exponent)?)
    })
}

/// `quantity` units of `bytes_per_unit` bytes, in whole units of `unit_bytes`, rounded up;
/// `None` when the result does not fit in a u64.
pub(crate) fn round_up(quantity: u128, bytes_per_unit: u128, unit_bytes: u128) -> Option<u64> {
    let bytes = quantity.checked_mul(bytes_per_unit)?;
    u64::try_from(bytes.div_ceil(unit_bytes)).ok()
}

pub(crate) const MIB: u128 = 1 << 20;
pub(crate) const GIB: u128 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_seen_in_the_wild() {
        let cases: [(&str, u128); 17] = [
            ("byte * 2^20", MIB),
            ("byte * 2 ^ 20", MIB),
            ("byte*2^30", GIB),
            ("BYTE * 2^30", GIB),
            ("byte", 1),
            ("bytes", 1),
            ("MegaBytes", MIB),
            ("megabytes", MIB),
            ("MB", MIB),
            ("GigaBytes", GIB),
            ("GB", GIB),
            ("KiloBytes", 1024),
            ("byte * 10^3", 1000),
            ("byte*2^10*2^10", MIB),
            (" byte\t*\n2^20 ", MIB),
            ("TeraBytes", 1 << 40),
            ("byte*2^0", 1),
        ];
        for (text, bytes) in cases {
            assert_eq!(bytes_per_unit(text), Some(bytes), "{text:?}");
        }
    }

    #[test]
    fn not_units_of_bytes() {
        for text in [
            "",
            "hertz * 10^6",
            "byte * 3^2",
            "byte * 2^",
            "byte * 2^999",
            "bits",
            "byte *",
            "2^20",
            "byte * 2^20 * x",
        ] {
            assert_eq!(bytes_per_unit(text), None, "{text:?}");
        }
    }

    #[test]
    fn rounding_is_up_and_overflow_is_none() {
        assert_eq!(round_up(329_197_568, 1, GIB), Some(1));
        assert_eq!(round_up(8, GIB, GIB), Some(8));
        assert_eq!(round_up(1, 1, MIB), Some(1));
        assert_eq!(round_up(0, 1, MIB), Some(0));
        assert_eq!(round_up(u128::MAX, 2, 1), None);
        assert_eq!(round_up(u128::from(u64::MAX) + 1, 1, 1), None);
    }
}
