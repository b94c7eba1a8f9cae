//! End-to-end tests: a `veem` server process on loopback with sim hosts, driven only through
//! `veem-client` (and the `veem` CLI), as a Service Manager would.

/// `on_every_driver!(case, ...)`: each `async fn case(driver: Hypervisor)` runs as two tests,
/// `case::sim` and `case::qemu` (real guests). Defined before the modules that use it.
macro_rules! on_every_driver {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sim() {
                    super::$case(crate::harness::Hypervisor::Sim).await
                }
                #[tokio::test]
                async fn qemu() {
                    super::$case(crate::harness::Hypervisor::Qemu).await
                }
            }
        )*
    };
}

mod accounting;
mod agents_follow;
mod attacks;
mod attacks_sources;
mod cdp;
mod cdrom_boot;
mod cli;
mod cluster;
mod cluster_failover;
mod control;
mod dashboard;
mod errors;
mod federation;
mod federation_accounting;
mod federation_lan;
mod federation_migration;
mod front_ends;
mod harness;
mod host_migration;
mod hostloss;
mod images_fetch;
mod metrics;
mod monitoring;
mod networks;
mod occi;
mod operators;
mod plans;

mod purge;
mod qemu_guests;
mod qemu_moves;
mod qemu_networks;
mod qemu_storage;
mod restart;
mod tls;
mod use_cases;
