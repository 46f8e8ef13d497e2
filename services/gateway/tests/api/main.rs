//! Gateway tests against real HTTP upstreams on their own loopback addresses (127.0.0.2,
//! 127.0.0.3, … are all loopback), each answering who it is and what it received.

mod helpers;
mod proxy;
