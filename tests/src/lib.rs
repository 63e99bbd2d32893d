//! Test harnesses.
