//! Federation: accounting listeners and monitoring subscriptions at the primary that cover
//! VEEs running at other sites, relayed with the primary's ids.
