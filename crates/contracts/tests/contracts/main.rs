//! Integration tests of the `contracts` crate, in one test binary (one link,
//! fast builds): hostile input against `validate_job`, agreement between the
//! Rust checks and the shipped JSON Schemas, payload normalisation, raw
//! payload parsing, every example and frozen MVP fixture on disk, and the
//! environment-variable registry with its generated documentation.

mod cron;
mod env;
mod files;
mod normalize;
mod parse;
mod props;
mod schema_agreement;
mod support;
mod validate;
