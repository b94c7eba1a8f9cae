//! The sites part: the remote VEEMs this one may place VEEs at (the paper's federation,
//! sections 1 and 2.1), each with the client this VEEM uses there, as one of its principals,
//! and whether it answers.
//!
//! Rules kept here:
//! - A site is registered only once it answered with the token given: a wrong URL or token is
//!   refused at registration, and nothing is kept.
//! - A site is checked at least every [`CHECK_INTERVAL`], also when nothing else is sent there;
//!   one that has not answered for [`UNREACHABLE_AFTER`] is unreachable until it answers again.
//! - Its lock is taken alone: no other part's lock is held while it is (see "The core's
//!   parts" in ARCHITECTURE.md); no call to a site is made while it is held.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use veem_api::{code, SiteRequest, SiteState};
use veem_client::{Client, ClientError, ListQuery};
use veem_model::{DescriptorError, EventType, Site, SiteName};
use veem_store::Change;

use super::now_ms;
use crate::committer::Committer;
use crate::error::CoreError;

/// How often every site is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a site may stay silent before it is unreachable.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);
/// How long one check may take: a site that answers slower is not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A registered site as this VEEM sees it now.
#[derive(Debug, Clone)]
pub struct SiteInfo {
    pub site: Site,
    pub state: SiteState,
    /// Since when it is in that state.
    pub since_ms: u64,
}

struct Entry {
    info: SiteInfo,
    client: Client,
    last_answer: Instant,
}

pub struct Sites {
    /// This site's own name (`site` in the config).
    this: SiteName,
    /// Where peer sites reach this VEEM's VMI.
    public_url: String,
    entries: Mutex<BTreeMap<SiteName, Entry>>,
    committer: Committer,
}

/// The client this VEEM uses at `site`: its URL and token, verified with its CA, identified by
/// its client certificate where it has one.
fn client_of(site: &Site) -> Result<Client, CoreError> {
    let identity = match (&site.client_cert_pem, &site.client_key_pem) {
        (Some(cert), Some(key)) => Some(
            veem_tls::Identity::from_pem(cert, key)
                .map_err(|e| CoreError::malformed("client_cert_pem", e.to_string()))?,
        ),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(CoreError::malformed(
                "client_key_pem",
                "a client certificate and its key go together: give both or neither",
            ))
        }
    };
    let tls = veem_tls::client_config_pem(site.ca_pem.as_deref(), identity.as_ref())
        .map_err(|e| CoreError::malformed("ca_pem", e.to_string()))?;
    Client::with_tls(&site.url, &site.token, tls).map_err(|e| match e {
        ClientError::InvalidToken => CoreError::malformed("token", e.to_string()),
        other => CoreError::malformed("url", other.to_string()),
    })
}

/// Whether `client` reaches its VEEM as a principal there: the refusal, in the words of the
/// contract, when not.
async fn try_site(name: &SiteName, client: &Client) -> Result<(), CoreError> {
    let page = ListQuery {
        limit: Some(1),
        ..ListQuery::default()
    };
    match tokio::time::timeout(CHECK_TIMEOUT, client.list_vees(&page)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.status() == Some(401) => Err(CoreError::SiteRefused {
            code: code::UNAUTHENTICATED,
            message: format!("site {name} does not take the token given: {e}"),
        }),
        Ok(Err(e)) => Err(CoreError::SiteRefused {
            code: code::SITE_UNREACHABLE,
            message: format!(
                "site {name} at {} does not answer as a VEEM: {e}",
                client.base_url()
            ),
        }),
        Err(_) => Err(CoreError::SiteRefused {
            code: code::SITE_UNREACHABLE,
            message: format!(
                "site {name} at {} did not answer in {} s",
                client.base_url(),
                CHECK_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// Ends this VEEM's subscription at a site, as far as the site answers: a subscription left
/// behind pushes to an inbox that answers 404 until the site's pusher gives up on it.
async fn unsubscribe(name: &SiteName, client: &Client, id: &str) {
    if let Err(e) = client.unsubscribe(id).await {
        tracing::warn!(site = %name, subscription = %id, error = %e, "cannot end this VEEM's subscription at a site");
    }
}

impl Sites {
    /// The sites the store holds; each is taken as up until its first check says otherwise.
    pub(super) fn load(
        sites: Vec<Site>,
        this: SiteName,
        public_url: String,
        committer: Committer,
    ) -> Self {
        let now = (Instant::now(), now_ms());
        let mut entries = BTreeMap::new();
        for site in sites {
            match client_of(&site) {
                Ok(client) => {
                    entries.insert(
                        site.name.clone(),
                        Entry {
                            info: SiteInfo {
                                site,
                                state: SiteState::Up,
                                since_ms: now.1,
                            },
                            client,
                            last_answer: now.0,
                        },
                    );
                }
                // Checked at registration: only a change of the TLS library could get here.
                Err(e) => {
                    tracing::error!(site = %site.name, error = %e, "cannot use a registered site")
                }
            }
        }
        Self {
            this,
            public_url,
            entries: Mutex::new(entries),
            committer,
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<SiteName, Entry>> {
        self.entries
            .lock()
            .expect("the sites' lock is never held across a panic")
    }

    /// This site's own name.
    pub fn this(&self) -> &SiteName {
        &self.this
    }

    /// Registers a site once it answered with the token given.
    pub(super) async fn register(&self, request: SiteRequest) -> Result<SiteInfo, CoreError> {
        let name = SiteName::new(request.name.as_str())
            .map_err(|e| CoreError::malformed("name", e.to_string()))?;
        if name == self.this {
            return Err(CoreError::malformed(
                "name",
                format!("{name} is this site's own name"),
            ));
        }
        let taken = || CoreError::Conflict(format!("a site named {name} is already registered"));
        if self.entries().contains_key(&name) {
            return Err(taken());
        }
        let mut site = Site {
            name: name.clone(),
            url: request.url,
            token: request.token,
            ca_pem: request.ca_pem,
            client_cert_pem: request.client_cert_pem,
            client_key_pem: request.client_key_pem,
            inbox: format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            ),
            subscription: None,
            created_ms: now_ms(),
        };
        let client = client_of(&site)?;
        try_site(&name, &client).await?;
        // The site pushes every event of this VEEM's VEEs there: STATE events, read as changes,
        // and the others, relayed to this VEEM's own subscribers.
        let inbox = self.inbox_url(&site);
        let subscribed = client
            .subscribe(&inbox, &EventType::ALL)
            .await
            .map_err(|e| CoreError::SiteRefused {
                code: code::SITE_UNREACHABLE,
                message: format!(
                    "site {name} does not take this VEEM's subscription at {inbox}: {e}"
                ),
            })?;
        site.subscription = Some(subscribed.id.clone());
        // A registration of the same name that committed first makes the store refuse this one.
        if let Err(e) = self
            .committer
            .commit(vec![Change::InsertSite(site.clone())])
            .await
        {
            unsubscribe(&name, &client, &subscribed.id).await;
            return Err(e);
        }
        let info = SiteInfo {
            since_ms: site.created_ms,
            site,
            state: SiteState::Up,
        };
        self.entries().insert(
            name,
            Entry {
                info: info.clone(),
                client,
                last_answer: Instant::now(),
            },
        );
        Ok(info)
    }

    /// Every registered site, in the order they were registered (spill-over's order).
    pub fn list(&self) -> Vec<SiteInfo> {
        let mut sites: Vec<SiteInfo> = self.entries().values().map(|e| e.info.clone()).collect();
        sites.sort_by(|a, b| {
            (a.site.created_ms, &a.site.name).cmp(&(b.site.created_ms, &b.site.name))
        });
        sites
    }

    pub fn get(&self, name: &SiteName) -> Option<SiteInfo> {
        self.entries().get(name).map(|e| e.info.clone())
    }

    /// The client this VEEM uses at `name`, while it answers.
    pub(super) fn client(&self, name: &SiteName) -> Result<Client, CoreError> {
        match self.entries().get(name) {
            None => Err(CoreError::NotFound(format!("no site {name} is registered"))),
            Some(entry) if entry.info.state == SiteState::Unreachable => {
                Err(CoreError::SiteUnreachable(format!(
                    "site {name} has not answered since {} ms",
                    entry.info.since_ms
                )))
            }
            Some(entry) => Ok(entry.client.clone()),
        }
    }

    /// Where `site` pushes the events of this VEEM's VEEs there (its inbox here).
    fn inbox_url(&self, site: &Site) -> String {
        format!(
            "{}{}/sites/{}/inbox/{}",
            self.public_url,
            veem_api::BASE_PATH,
            site.name,
            site.inbox
        )
    }

    /// Where site `name` sends the accounting records of this VEEM's listeners there (see
    /// `accounting/relay.rs`); `None` for a site that is not registered.
    pub(super) fn accounting_inbox(&self, name: &SiteName) -> Option<String> {
        let entries = self.entries();
        let entry = entries.get(name)?;
        Some(format!("{}/accounting", self.inbox_url(&entry.info.site)))
    }

    /// Whether `secret` is the inbox secret of site `name` (compared in constant time).
    pub(super) fn is_inbox(&self, name: &SiteName, secret: &str) -> bool {
        self.entries().get(name).is_some_and(|e| {
            crate::auth::constant_time_eq(e.info.site.inbox.as_bytes(), secret.as_bytes())
        })
    }

    /// Refuses a descriptor's `sites` that names neither this site nor a registered one.
    pub(super) fn check_preference(&self, sites: &[SiteName]) -> Result<(), CoreError> {
        let entries = self.entries();
        match sites
            .iter()
            .enumerate()
            .find(|(_, s)| **s != self.this && !entries.contains_key(*s))
        {
            Some((i, unknown)) => Err(CoreError::MalformedDescriptor(DescriptorError::new(
                format!("sites[{i}]"),
                format!(
                    "{unknown} is neither this site ({}) nor a registered site",
                    self.this
                ),
            ))),
            None => Ok(()),
        }
    }

    /// Forgets a site.
    pub(super) async fn remove(&self, name: &SiteName) -> Result<(), CoreError> {
        let (client, subscription) = match self.entries().get(name) {
            Some(entry) => (entry.client.clone(), entry.info.site.subscription.clone()),
            None => return Err(CoreError::NotFound(format!("no site {name} is registered"))),
        };
        self.committer
            .commit(vec![Change::RemoveSite(name.clone())])
            .await?;
        self.entries().remove(name);
        // The site stops pushing to an inbox that is gone (when it answers).
        if let Some(id) = subscription {
            unsubscribe(name, &client, &id).await;
        }
        Ok(())
    }

    /// The registered sites' names, in the order they were registered (spill-over's order).
    pub(super) fn names(&self) -> Vec<SiteName> {
        let entries = self.entries();
        let mut names: Vec<(u64, &SiteName)> = entries
            .values()
            .map(|e| (e.info.site.created_ms, &e.info.site.name))
            .collect();
        names.sort();
        names.into_iter().map(|(_, name)| name.clone()).collect()
    }

    /// Checks every site at once and notes which answer; answers the sites whose state changed.
    pub(super) async fn check_all(&self) -> Vec<(SiteName, SiteState)> {
        let clients: Vec<(SiteName, Client)> = self
            .entries()
            .iter()
            .map(|(name, e)| (name.clone(), e.client.clone()))
            .collect();
        let checks = clients.into_iter().map(|(name, client)| async move {
            let answered = try_site(&name, &client).await;
            (name, answered)
        });
        let results = futures::future::join_all(checks).await;
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut changed = Vec::new();
        let mut entries = self.entries();
        for (name, answered) in results {
            let Some(entry) = entries.get_mut(&name) else {
                continue;
            };
            let state = match &answered {
                Ok(()) => {
                    entry.last_answer = now;
                    SiteState::Up
                }
                Err(_) if now.duration_since(entry.last_answer) < UNREACHABLE_AFTER => {
                    entry.info.state
                }
                Err(_) => SiteState::Unreachable,
            };
            if state != entry.info.state {
                match (&answered, state) {
                    (Err(e), _) => tracing::warn!(site = %name, error = %e, "site unreachable"),
                    (Ok(()), _) => tracing::info!(site = %name, "site answers again"),
                }
                entry.info.state = state;
                entry.info.since_ms = now_ms;
                changed.push((name, state));
            }
        }
        changed
    }
}

impl super::Veem {
    /// Registers a site (admin): see [`Sites::register`].
    pub async fn register_site(&self, request: SiteRequest) -> Result<SiteInfo, CoreError> {
        self.inner.sites.register(request).await
    }

    /// How many of this VEEM's VEEs run at `name`.
    pub fn vees_at(&self, name: &SiteName) -> u64 {
        self.inner
            .records
            .ids_where(|r| r.site.as_ref() == Some(name))
            .len() as u64
    }

    /// Forgets a site once none of this VEEM's VEEs lives there.
    pub async fn remove_site(&self, name: &SiteName) -> Result<(), CoreError> {
        let living = self.vees_at(name);
        if living > 0 {
            return Err(CoreError::InUse(format!(
                "{living} VEE(s) of this VEEM live at site {name}; purge them or move them first"
            )));
        }
        self.inner.sites.remove(name).await
    }

    /// Checks the sites at every [`CHECK_INTERVAL`]; the VEEs of a site that answers again are
    /// read again.
    pub(super) async fn site_loop(self) {
        tokio::spawn(self.clone().lan_sweep_loop());
        // The migrations a restart cut are settled as their sends would have been.
        self.settle_migrations(true);
        // What changed at the sites while this VEEM was down was pushed to no one.
        for info in self.inner.sites.list() {
            self.read_all_at(&info.site.name);
        }
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (site, state) in self.inner.sites.check_all().await {
                if state == SiteState::Up {
                    // What changed there while it did not answer was pushed to no one; a
                    // migration from there may now learn what its source kept.
                    self.read_all_at(&site);
                    self.settle_migrations(false);
                }
            }
            // The accounting listeners of remote VEEs: registered at their sites (again after
            // a start, or once a site answers), following VEEs that moved.
            self.relay_sync_all();
        }
    }
}
