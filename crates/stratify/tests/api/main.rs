//! The end-to-end test binary: the real server on port 0 with a temp data dir.

mod helpers;

mod access;
mod audit;
mod dashboard;
mod duckmart;
mod errors;
mod events;
mod experiments;
mod growthbook_sdk;
mod identify;
mod keys;
mod limits;
mod live;
mod ofrep;
mod platform;
mod process;
mod results;
mod schemas;
mod segments;
mod serving;
mod users;
