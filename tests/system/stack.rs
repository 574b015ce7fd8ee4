//! The emulator and Baton wired together live in `test-support`.

pub use test_support::stack::*;
