//! Order service tests: each starts real catalog and order applications (in-process, port 0),
//! each with its own fresh PostgreSQL database, talking over a private exchange on the real
//! RabbitMQ. `TEST_LOG=1` shows their logs.

mod admission;
mod helpers;
mod identity;
mod orders;
mod process;
mod saga;
