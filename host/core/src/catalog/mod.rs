//! The catalog: manifests (the durable truth in the vault), the local index
//! (a rebuildable SQLite cache) and the restore planner.

#[cfg(feature = "vault")]
pub mod index;
pub mod manifest;
pub mod planner;
pub mod retention;
