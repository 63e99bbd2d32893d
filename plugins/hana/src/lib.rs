//! Strata's hana engine plugin.
