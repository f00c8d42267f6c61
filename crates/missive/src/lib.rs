//! Missive: a Matrix homeserver for the secure messaging of public administrations.
//!
//! Data flows one way: `api` (HTTP handlers) → services (`accounts`, `rooms`, `sync`,
//! `user_data`) → `store` (the only SQL). See ARCHITECTURE.md for the map.

pub mod accounts;
pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod e2ee;
pub mod endpoints;
pub mod error;
pub mod federation;
pub mod filter;
pub mod identity;
pub mod media;
pub mod outbound;
pub mod privacy;
pub mod push;
pub mod ratelimit;
pub mod reports;
pub mod rooms;
pub mod server;
pub mod server_keys;
pub mod store;
pub mod sync;
pub mod tls;
pub mod user_data;
