//! # xtask
//!
//! Dockyard's developer tools, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! - `up`: the whole platform as local OS processes ([`stack`]).
//! - `load`: realistic users through the gateway ([`load`]).
//! - `conformance`: schemathesis against every API of a live platform ([`conformance`]).
//! - `console-test`: the console in headless Chromium ([`console_test`]).
//! - `chaos`: faults under load, then the saga's invariants ([`chaos`]).
//! - `saga-bench`: the saga at saturation, at 80 % and at 2× ([`saga_bench`], `bench/saga.sh`).
//! - `token`: a bearer token signed with the local key ([`dev_keys`]).
//! - `images`: local base images from Debian packages, for a host without a registry
//!   ([`docker`], `deploy/offline/images.sh`).
//! - `compose-test`: the images built and `docker compose up` tried as a user would
//!   ([`compose_test`]).
//!
//! # Layout
//! - [`stack`]: starts and stops the platform: databases, one-off `migrate`/`seed`, then
//!   catalog, order and gateway instances, each on its own loopback address; the end-to-end
//!   test drives the same machinery.
//! - [`database`]: creating the per-service databases.
//! - [`dev_keys`]: the local platform's token signing key and its JWKS (`.dockyard/dev-keys`).
//! - [`logs`]: merging the instances' output with a coloured prefix each.
//! - [`load`]: the load generator and its report.
//! - [`sandbox`]: databases and an exchange of a run's own, removed afterwards.
//! - [`conformance`]: the schemathesis runs.
//! - [`console_test`]: the browser test of the console.
//! - [`chaos`]: the fault suite.
//! - [`clients`]: the fault runs' load clients: customers writing a [`ledger`], readers.
//! - [`ledger`]: what the clients were told, and the checker that judges a run by it.
//! - [`docker`]: the Docker engine, and `docker` / `docker compose` for one project.
//! - [`compose_test`]: the container suite.
//! - [`container_chaos`]: faults on the network between the containers.
//! - [`saga_bench`]: the saga's benchmark.

pub mod catalog_bench;
pub mod chaos;
pub mod clients;
pub mod compose_test;
pub mod conformance;
pub mod console_test;
pub mod container_chaos;
pub mod database;
pub mod dev_keys;
pub mod docker;
pub mod footprint;
pub mod ledger;
pub mod load;
pub mod logs;
pub mod products;
pub mod saga_bench;
pub mod sandbox;
pub mod stack;
