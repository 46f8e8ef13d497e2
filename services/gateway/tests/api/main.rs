//! Gateway tests against real HTTP upstreams on their own loopback addresses (127.0.0.2,
//! 127.0.0.3, … are all loopback), each answering who it is and what it received; in
//! `kill.rs` the upstreams are separate processes, and in `discovery.rs` a real DNS server
//! on loopback names them.

mod connections;
mod discovery;
mod edge;
mod helpers;
mod kill;
mod protection;
mod proxy;
mod resilience;
mod traffic;
