//! The pure heart of Stratify.
//!
//! Owns the domain vocabulary and every rule that can be decided without IO:
//! typed ids and their limits ([`ids`]), instants ([`time`]), validation of
//! events and user attributes at the edge ([`event`], [`attributes`]), the
//! optional schemas that tighten that validation ([`schema`]), the stable
//! hashes used for idempotency ([`hash`]) and the seeded synthetic data set
//! ([`datagen`]).
//!
//! This crate never does IO, never spawns, never reads the clock (callers pass
//! `now`), and never panics on user input: every input error is a
//! [`ValidationError`] with a stable code and a JSON pointer to the field at fault.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod access;
pub mod attributes;
pub mod bucketing;
pub mod datagen;
pub mod error;
pub mod event;
pub mod hash;
pub mod ids;
pub mod population;
pub mod rules;
pub mod schema;
pub mod stats;
pub mod time;

pub use error::{ErrorCode, ValidationError};
