//! Strata's postgres engine plugin.
