//! Integration tests of veem-agent: the sim driver through the `Driver` trait, the `Agent`'s
//! dispatch, the uplink against a WebSocket server started in the test, the qemu driver on
//! real QEMU, and virtual LANs on the real kernel.

// The helpers of a test binary are test code too; clippy's allow-unwrap-in-tests only sees
// `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod agent;
mod common;
mod fetch;
mod hostnet;
mod qemu;
mod sim;
mod uplink;
