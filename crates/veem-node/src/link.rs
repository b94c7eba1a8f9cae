//! A host in the VEEM's own process, reached by calling its agent.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use veem_agent::Agent;
use veem_api::agent::{AgentRequest, AgentResponse};
use veem_server::hosts::HostLink;

pub struct InProcessLink(pub Arc<Agent>);

#[async_trait]
impl HostLink for InProcessLink {
    async fn call(&self, request: AgentRequest) -> AgentResponse {
        self.0.handle(request).await
    }
    fn kind(&self) -> &'static str {
        "in-process"
    }
    /// An agent in this process lives and dies with the VEEM: it is always heard.
    fn last_heard(&self) -> Instant {
        Instant::now()
    }
}
