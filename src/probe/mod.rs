//! The probe engine: resolve, connect, upgrade, handshake and speak each endpoint's protocol,
//! stopping at the first failing stage and saying why.

pub mod cli;
pub mod result;
