//! Strata's sqlserver engine plugin.
