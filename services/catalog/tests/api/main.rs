//! Catalog integration tests: each spawns the real application on port 0 against its own
//! fresh PostgreSQL database (see `dockyard-testkit`). `TEST_LOG=1` shows the app's logs.

mod health;
mod helpers;
mod identity;
mod process;
mod products;
mod stock;
