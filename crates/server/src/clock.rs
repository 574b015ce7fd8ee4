//! The shell's clock. The domain never reads time; the shell does, through
//! this trait, so tests can hold time still or move it in step with the
//! emulator. The trait and its two clocks live in `dispatch` (which the server
//! builds on), so the server, its timers and dispatch share one clock.

pub use dispatch::{Clock, ManualClock, SystemClock};
