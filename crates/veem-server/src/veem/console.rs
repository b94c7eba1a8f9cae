//! A VEE's serial console as its hosts keep it (`console.log` in its directory): the tail an
//! operator reads to see why a guest does not come up, or what it printed last.

use veem_api::agent::{AgentRequest, AgentResponse};
use veem_model::VeeId;

use super::federation::site_error;
use super::{agent_result, Veem};
use crate::auth::Caller;
use crate::error::CoreError;

impl Veem {
    /// The last `bytes` of the serial console of a VEE the caller sees. It is read by the host
    /// that runs the VEE, or by the one that holds its disks on its own storage; else by any
    /// host up, since they share the VEEs' storage. A VEE at another site: by that site.
    pub async fn console_tail(
        &self,
        caller: &Caller,
        id: &VeeId,
        bytes: u64,
    ) -> Result<Vec<u8>, CoreError> {
        let record = self.inner.records.lookup(caller, id)?;
        if let (Some(site), Some(remote)) = (&record.site, &record.remote) {
            let client = self.inner.sites.client(site)?;
            return client
                .console_tail(remote.as_str(), bytes)
                .await
                .map_err(|e| site_error(site, e));
        }
        let host = match record.host.as_ref().or(record.holder.as_ref()) {
            Some(host) => host.clone(),
            None => self
                .inner
                .hosts
                .all()
                .into_iter()
                .find(|(_, e)| e.link.is_some() && e.error.is_none())
                .map(|(h, _)| h)
                .ok_or_else(|| CoreError::host_failed("no host is up to read the console"))?,
        };
        let request = AgentRequest::ConsoleTail {
            vee: id.clone(),
            vee_dir: self.vee_dir(id),
            bytes,
        };
        match agent_result(&host, self.inner.hosts.call(&host, request).await)? {
            AgentResponse::Chunk { data, .. } => AgentResponse::chunk_bytes(&data).map_err(|e| {
                CoreError::host_failed(format!("host {host} sent a console garbled: {e}"))
            }),
            _ => Err(CoreError::host_failed(format!(
                "host {host} answered a console read with no bytes"
            ))),
        }
    }
}
