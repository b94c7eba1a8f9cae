//! Hotplug: a running VEE's vCPUs and memory resized live.
//!
//! - Memory is resized with virtio-balloon: QEMU boots with `memory_max_mb` of RAM and the
//!   balloon takes the guest down to `memory_mb` right away; a resize moves the balloon's
//!   target. The guest needs its `virtio_balloon` driver to follow (until it loads, the target
//!   waits); [`InstanceStatus::memory_mb`] is the target, `query-balloon` what the guest did.
//! - vCPUs are resized by hotplug: `-smp cpu,maxcpus=cpu_max` at boot, `device_add` of the
//!   next free slot to raise, `device_del` to lower (the guest must release the vCPU within
//!   `cpu_unplug_timeout_ms`). vCPUs present at boot cannot be removed.
//!
//! Each verb here runs with the VEE's lock held by its caller (the `Driver` impl).
//!
//! [`InstanceStatus::memory_mb`]: veem_api::agent::InstanceStatus::memory_mb

use std::collections::BTreeMap;
use std::time::Duration;

use veem_api::agent::InstanceState;
use veem_model::VeeId;

use super::instances::{qmp_failed, Instance, QemuDriver, MIB};
use super::machine::{MachineShape, PluggedCpu};
use super::qmp::{self, QmpClient};
use crate::DriverError;

/// QMP ids of the vCPUs a resize plugs start with this.
const PLUGGED_CPU_PREFIX: &str = "vcpu";

impl QemuDriver {
    /// Moves the balloon to `memory_mb` and plugs or unplugs vCPUs until there are `cpu`.
    pub(super) async fn resize_live(
        &self,
        vee: &VeeId,
        cpu: u32,
        memory_mb: u64,
    ) -> Result<(), DriverError> {
        let instance = self.existing(vee)?;
        let running = [InstanceState::Running, InstanceState::Paused];
        self.expect_state(&instance, "resize", &running).await?;
        let mut shape = instance.shape();
        if cpu == 0 || cpu > shape.max_cpus || memory_mb == 0 || memory_mb > shape.memory_max_mb {
            return Err(DriverError::Invalid {
                what: "resize",
                reason: format!(
                    "{cpu} vCPUs and {memory_mb} MB are outside 1..={} vCPUs and 1..={} MB",
                    shape.max_cpus, shape.memory_max_mb
                ),
            });
        }
        let qmp = self.connect(&instance).await?;
        if memory_mb != shape.memory_mb {
            qmp.execute(&qmp::Balloon {
                value: memory_mb * MIB,
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            shape.memory_mb = memory_mb;
            self.save_shape(&instance, shape.clone()).await?;
        }
        if cpu != shape.cpus() {
            shape = self.resize_cpus(&instance, &qmp, shape, cpu).await?;
            self.save_shape(&instance, shape).await?;
        }
        Ok(())
    }

    /// The vCPUs plugged into the instance, as QEMU reports them, in slot order.
    pub(super) async fn plugged_cpus(
        &self,
        qmp: &QmpClient,
    ) -> Result<Vec<PluggedCpu>, DriverError> {
        let slots = qmp
            .execute(&qmp::QueryHotpluggableCpus)
            .await
            .map_err(|e| qmp_failed("query vcpus", e))?;
        let mut plugged: Vec<PluggedCpu> = slots
            .into_iter()
            .filter_map(|slot| {
                let id = slot
                    .qom_path?
                    .strip_prefix("/machine/peripheral/")?
                    .to_owned();
                Some(PluggedCpu {
                    id,
                    driver: slot.driver,
                    props: slot.props,
                })
            })
            .collect();
        plugged.sort_by_key(|cpu| slot_order(&cpu.props));
        Ok(plugged)
    }

    /// Plugs or unplugs vCPUs until the instance has `cpu` of them; answers the new shape.
    async fn resize_cpus(
        &self,
        instance: &Instance,
        qmp: &QmpClient,
        mut shape: MachineShape,
        cpu: u32,
    ) -> Result<MachineShape, DriverError> {
        shape.plugged_cpus = self.plugged_cpus(qmp).await?;
        if cpu < shape.boot_cpus {
            return Err(DriverError::Unsupported("remove a vcpu present at boot"));
        }
        while shape.cpus() < cpu {
            let slots = qmp
                .execute(&qmp::QueryHotpluggableCpus)
                .await
                .map_err(|e| qmp_failed("resize", e))?;
            let free = slots
                .into_iter()
                .filter(|slot| slot.qom_path.is_none())
                .min_by_key(|slot| slot_order(&slot.props))
                .ok_or_else(|| DriverError::Failed {
                    op: "resize",
                    reason: "qemu has no free vcpu slot".to_owned(),
                })?;
            let id = (shape.cpus()..)
                .map(|n| format!("{PLUGGED_CPU_PREFIX}{n}"))
                .find(|id| shape.plugged_cpus.iter().all(|cpu| &cpu.id != id))
                .expect("an unbounded range always has an unused number");
            let props = free
                .props
                .iter()
                .map(|(key, value)| (key.clone(), serde_json::Value::from(*value)))
                .collect();
            qmp.execute(&qmp::DeviceAdd {
                driver: free.driver.clone(),
                id: id.clone(),
                props,
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            shape.plugged_cpus.push(PluggedCpu {
                id,
                driver: free.driver,
                props: free.props,
            });
        }
        while shape.cpus() > cpu {
            let Some(last) = shape.plugged_cpus.last().cloned() else {
                break;
            };
            let mut events = qmp.events();
            qmp.execute(&qmp::DeviceDel {
                id: last.id.clone(),
            })
            .await
            .map_err(|e| qmp_failed("resize", e))?;
            let timeout = Duration::from_millis(self.config.cpu_unplug_timeout_ms);
            let released = tokio::time::timeout(timeout, async {
                while let Ok(event) = events.recv().await {
                    if event.event == "DEVICE_DELETED"
                        && event.data.get("device").and_then(|d| d.as_str()) == Some(&last.id)
                    {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if !released {
                // The request stays pending in QEMU; record what is plugged now.
                shape.plugged_cpus = self.plugged_cpus(qmp).await?;
                self.save_shape(instance, shape).await?;
                return Err(DriverError::Failed {
                    op: "resize",
                    reason: format!(
                        "the guest did not release vcpu {} within {} ms",
                        last.id, self.config.cpu_unplug_timeout_ms
                    ),
                });
            }
            shape.plugged_cpus.pop();
        }
        Ok(shape)
    }
}

/// Sort key of a vCPU slot: its place in the topology.
fn slot_order(props: &BTreeMap<String, i64>) -> [i64; 5] {
    let prop = |key: &str| props.get(key).copied().unwrap_or(0);
    [
        prop("socket-id"),
        prop("die-id"),
        prop("cluster-id"),
        prop("core-id"),
        prop("thread-id"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_slots_sort_by_topology() {
        let slot = |socket, core| {
            BTreeMap::from([
                ("socket-id".to_owned(), socket),
                ("core-id".to_owned(), core),
                ("thread-id".to_owned(), 0),
            ])
        };
        let mut slots = [slot(1, 0), slot(0, 2), slot(0, 1)];
        slots.sort_by_key(slot_order);
        assert_eq!(slots, [slot(0, 1), slot(0, 2), slot(1, 0)]);
    }
}
