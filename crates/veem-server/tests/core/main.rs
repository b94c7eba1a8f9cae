//! The VEEM core tested in-process: a `Veem` on a SQLite store in a temporary directory, sim
//! hosts connected through a link of the tests' own (`support`), no HTTP. One module per part
//! of the core; each test's name is the rule it checks.

mod accounting;
mod devices;
mod images;
mod networks;
mod own_storage;
mod placement;
mod plans;
mod reservations;
mod restart;
mod states;
mod support;
