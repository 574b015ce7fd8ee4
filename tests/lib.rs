//! Baton system tests live in `system/`; this library is empty.
