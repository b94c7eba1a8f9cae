//! Federation: VEEs moved between sites, cold and live, both ways.
