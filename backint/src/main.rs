//! hdbbackint.
fn main() {}
