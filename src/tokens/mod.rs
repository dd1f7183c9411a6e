//! Tokens: wire formats, the live access-token map, and the refresh → access exchange.

pub(crate) mod access;
pub(crate) mod exchange;
pub(crate) mod format;
