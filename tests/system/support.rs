//! The shared test configuration and test stack live in `test-support`.

pub use test_support::*;
