//! Federation: a private network of the primary that extends to the sites where its VEEs run.
