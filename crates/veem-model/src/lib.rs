//! veem's domain model: the words of the RESERVOIR VMI paper as Rust types.
//!
//! Ids, the VEE descriptor (Table 2.2 of the paper), the VMI and VEEM states (Table 2.1),
//! control actions and their exhaustive transition function, and the records that the store
//! persists. This crate is pure: it never does I/O, never touches a clock or tokio. Callers pass
//! times in (`now_ms`) so that every rule here is testable as a table.

mod descriptor;
mod ids;
mod monitoring;
mod network;
mod record;
mod site;
mod state;

pub use descriptor::{
    check_word, file_url_path, Context, DescriptorError, DiskKind, DiskSource, DiskSpec,
    FileUrlError, KernelBoot, NicSpec, VeeDescriptor, MAX_CPUS, MAX_FILE_PATH_BYTES, MAX_MEMORY_MB,
    MAX_SITES,
};
pub use ids::{HostId, IdError, ImageName, Principal, SiteName, VeeId};
pub use monitoring::{
    active_ms_within, check_fqn, AccountingListener, AccountingRecord, EventError, EventType,
    Measurement, MeasurementValue, MonitoringEvent, MonitoringSubscription,
    MAX_ACCOUNTING_INTERVAL_MS, MIN_ACCOUNTING_INTERVAL_MS,
};
pub use network::{
    mac_address, AddressPool, Ipv4Cidr, LanExtension, LanPeer, Network, MAX_NICS, MAX_PREFIX,
    MIN_PREFIX,
};
pub use record::{
    replica_name, Generated, ImageFormat, ImageRecord, MigrationNote, MigrationTarget, NicAddress,
    Phase, VeeEvent, VeeRecord,
};
pub use site::Site;
pub use state::{
    apply, ControlAction, InitModel, Step, Transition, VeemState, VmiState, WrongState,
};
