//! The local catalog index (being written).
