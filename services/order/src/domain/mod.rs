//! Orders: lines, states and the transitions between them. No I/O.

mod order;

pub use order::{Line, MAX_LINES, NewOrder, Status};
