//! System tests: the real server on port 0 with a temporary sled log, driven
//! over HTTP exactly as Meta (or the emulator standing in for it) would.

mod backend;
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
mod stack;
mod support;
mod watchdog;
