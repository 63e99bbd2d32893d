//! The streaming reader (being written).
