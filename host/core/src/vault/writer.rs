//! The streaming writer (being written).
