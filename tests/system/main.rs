//! System tests: the real server on port 0 with a temporary sled log, driven
//! over HTTP exactly as Meta (or the emulator standing in for it) would.
//!
//! These sources build two test targets (`tests/Cargo.toml`): `system` runs
//! on sled, `system-postgres` on PostgreSQL (a fresh database per Baton, on
//! one throwaway server per binary). `test_support::store_under_test` picks
//! the store from the binary's name; a test about sled itself returns early
//! on PostgreSQL through `test_support::sled_only`, which says why.

mod backend;
mod cluster;
mod console;
mod differential;
mod disorder;
mod dispatch;
mod faults;
mod graph_compat;
mod handover;
mod hostile;
mod ingress;
mod model;
mod node;
mod outbox;
mod privacy;
mod reconcile;
mod reliability;
mod sdk;
mod sends;
mod shards;
mod snapshots;
mod stack;
mod support;
mod watchdog;
