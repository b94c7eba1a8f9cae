//! The host agent of a VEEM site: what runs on each VEEH. It answers the host-agent protocol
//! (`veem_api::agent`) by calling a hypervisor [`Driver`] — the simulated [`sim`] driver or the
//! [`qemu`] driver, which runs real VMs — either in-process for the server or as a remote
//! `veem agent` process that dials the server over a WebSocket ([`uplink`]).
//!
//! The agent never decides anything: it holds no desired state, places nothing and retries
//! nothing on its own. It does what one request says, reports what the hypervisor observes, and
//! leaves reconciliation to the VEEM. It never deletes a VEE's disks: they live on the site's
//! shared storage and belong to the server.

mod agent;
mod command;
mod driver;
pub mod fetch;
mod fsutil;
pub mod hostnet;
pub mod qemu;
pub mod sim;
pub mod uplink;
mod vee_locks;

pub use agent::Agent;
pub use driver::{check_disk_target, Driver, DriverError, Incoming, MigrationStats};
pub use fetch::{FetchConfig, FetchError, Fetcher};
pub use qemu::{QemuConfig, QemuDriver};
