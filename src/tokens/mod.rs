//! Tokens: wire formats, the live access-token map, and the refresh → access exchange.

pub mod access;
pub mod exchange;
pub mod format;
