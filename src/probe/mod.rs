//! The probe engine: resolve, connect, upgrade, handshake and speak each endpoint's protocol,
//! stopping at the first failing stage and saying why.

mod aggregate;
pub mod certs;
pub mod context;
pub mod dns;
pub mod engine;
pub mod ftp;
pub mod ike;
pub mod ldap;
pub mod ldap_filter;
pub mod login;
mod mail;
pub mod net;
mod pipeline;
pub mod plan;
pub mod protocols;
pub mod report;
pub mod sasl;
pub mod spec;
pub mod tls;
