//! The probe engine: resolve, connect, upgrade, handshake and speak each endpoint's protocol,
//! stopping at the first failing stage and saying why.

pub mod cli;
pub mod dns;
pub mod engine;
pub mod ldap;
pub mod net;
pub mod plan;
pub mod protocols;
pub mod report;
pub mod result;
pub mod spec;
pub mod tls;
