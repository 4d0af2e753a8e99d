//! Parley's server: configuration, the command layer over the event store, and the HTTP
//! surface. `main.rs` only parses arguments and calls [`cli::run`]; everything else lives
//! here so tests build exactly the application that runs.

pub mod app;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod graphql;
pub mod http;
pub mod limits;
pub mod live;
pub mod lookups;
pub mod projected;
pub mod relay;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod ws;
