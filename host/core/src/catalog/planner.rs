//! The restore planner (being written: see the task spec).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::Position;

/// What a restore should reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreTarget {
    /// The newest restorable point.
    Latest,
    /// A point in time.
    Time(DateTime<Utc>),
    /// A log position, on a fork (or the newest fork that contains it).
    Position {
        /// The fork, if the caller names one.
        fork: Option<String>,
        /// The position.
        position: Position,
    },
}

/// Per-engine chain rules.
pub trait ChainRules: Send + Sync {}
