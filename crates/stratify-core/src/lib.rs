//! The pure heart of Stratify: every rule that can be decided without IO.
//!
//! Owns the domain vocabulary and its checks:
//! - typed ids and their limits ([`ids`]), names and descriptions ([`names`]),
//!   instants ([`time`]);
//! - validation of events and user attributes at the edge ([`event`],
//!   [`attributes`]) and the optional schemas that tighten it ([`schema`]);
//! - the rule language: one AST, its parsers, the in-memory evaluator,
//!   explain, next-change times and the SQL compiler ([`rules`]);
//! - experiment definitions and lifecycle ([`experiment`]), GrowthBook-exact
//!   bucketing ([`bucketing`]), and the statistics of results ([`stats`]);
//! - roles and capabilities ([`access`]), the columnar population index
//!   ([`population`]), the stable hashes for idempotency ([`hash`]), the
//!   seeded synthetic data set ([`datagen`]), and the table of error codes
//!   ([`ErrorCode`]).
//!
//! It must not do IO, spawn, read the clock (callers pass `now`), or panic on
//! user input: every input error is a [`ValidationError`] with a stable code
//! and a JSON pointer to the field at fault.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod access;
pub mod attributes;
pub mod bucketing;
pub mod codec;
pub mod datagen;
pub mod error;
pub mod event;
pub mod experiment;
pub mod hash;
pub mod id_index;
pub mod ids;
pub mod names;
pub mod population;
pub mod rules;
pub mod schema;
pub mod stats;
pub mod time;

pub use error::{ErrorCode, ValidationError};
