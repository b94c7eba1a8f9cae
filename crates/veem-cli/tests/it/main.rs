//! End-to-end tests: a `veem` server process on loopback with sim hosts, driven only through
//! `veem-client` (and the `veem` CLI), as a Service Manager would.

mod accounting;
mod attacks;
mod attacks_sources;
mod cdrom_boot;
mod cli;
mod control;
mod errors;
mod harness;
mod hostloss;
mod monitoring;
mod networks;
mod operators;
mod purge;
mod qemu_guests;
mod qemu_networks;
mod restart;
mod tls;
mod use_cases;
