//! The one integration-test binary: store conformance (SQLite always, PostgreSQL when
//! `EPIGRID_TEST_PG` is set), HTTP tests against the real server on port 0, and process tests
//! that run the built `epigrid` binary.

mod browser;
mod http;
mod people;
mod process;
mod store;
mod support;
