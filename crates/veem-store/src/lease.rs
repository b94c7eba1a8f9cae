//! One leader among the front-ends that share a PostgreSQL database: a lease row with a fencing
//! token, and the list of front-ends.
//!
//! - The lease is one row (`cluster_lease`): who leads, where it is reached, its incarnation
//!   (a number drawn at each process start, so that a restarted front-end of the same name is
//!   not taken for its former self), its **generation**, and when it expires, by the database's
//!   clock (`now()`), so that the front-ends' clocks need not agree.
//! - [`PgStore::campaign`] renews the lease of its holder, or takes an expired one with the
//!   generation advanced by one. Nobody takes a live lease: a new leader waits for the old
//!   one's to expire.
//! - Fencing: an advisory lock is held by a session and gives no token, so a leader cut off
//!   from the database could act on after it lost its place. Here, once a store has
//!   campaigned, every commit first reads the lease row `FOR SHARE` and goes on only if the
//!   generation it holds is the live one; otherwise the batch is refused whole
//!   ([`StoreError::Fenced`]). A taker's `FOR UPDATE` waits for commits under way, so every
//!   commit of an old generation is ordered before the new leader reads the books. The check is
//!   `check_fence` in `postgres.rs`, part of every commit; the lease itself is here.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Duration;

use tokio_postgres::{Client, Transaction};

use crate::postgres::{backend, read_error, Fence};
use crate::{PgStore, StoreError};

/// A front-end campaigning for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name, unique among the front-ends of a site (the config's `name`).
    pub name: String,
    /// Where the others and agents reach it (the config's `advertise_url`).
    pub url: String,
    /// Drawn at each start of the process.
    pub incarnation: u64,
}

/// What a campaign found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This member holds the lease, of `generation`, for `ttl` from the campaign's start.
    Leading { fence: Fence, newly: bool },
    /// Another member holds a live lease (`None`: nobody, and this one could not take it).
    Following { leader: Option<LeaderView> },
}

/// The live lease's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub name: String,
    pub url: String,
    pub generation: u64,
    /// When this generation began, in ms since the Unix epoch (the database's clock).
    pub since_ms: u64,
}

/// A front-end heard from lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub url: String,
    pub leading: bool,
    /// Since when it holds its role, in ms since the Unix epoch (the database's clock).
    pub since_ms: u64,
}

/// The lease and the members, as `GET /cluster` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub leader: Option<LeaderView>,
    pub members: Vec<MemberView>,
}

impl PgStore {
    /// Renews this member's lease, or takes the lease if it expired, for `ttl`; notes the
    /// member as heard from. From the first campaign on, this store's commits are fenced: they
    /// are stored only while the lease this member holds is live.
    pub fn campaign(&self, me: &Member, ttl: Duration) -> Result<Campaign, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let campaign = self.with_client(async |client: &mut Client| {
            let tx = client.transaction().await.map_err(backend)?;
            let campaign = campaign_in(&tx, me, ttl_ms).await?;
            let leading = matches!(campaign, Campaign::Leading { .. });
            tx.execute(
                "INSERT INTO cluster_members (name, url, is_leader, since, seen_at)
                 VALUES ($1, $2, $3, now(), now())
                 ON CONFLICT (name) DO UPDATE SET
                     url = EXCLUDED.url,
                     since = CASE WHEN cluster_members.is_leader = EXCLUDED.is_leader
                                  THEN cluster_members.since ELSE now() END,
                     is_leader = EXCLUDED.is_leader,
                     seen_at = now()",
                &[&me.name, &me.url, &leading],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(campaign)
        })?;
        let mut fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        *fence = Some(match &campaign {
            Campaign::Leading { fence, .. } => *fence,
            // Generation 0 is never live: a follower's stray commit is refused.
            Campaign::Following { .. } => Fence { generation: 0 },
        });
        if matches!(campaign, Campaign::Leading { newly: true, .. }) {
            self.fenced_out.store(false, Ordering::SeqCst);
        }
        Ok(campaign)
    }

    /// Whether a commit was refused because this store's lease was no longer live (since the
    /// last newly taken lease): the front-end must stop acting as the leader.
    pub fn fenced_out(&self) -> bool {
        self.fenced_out.load(Ordering::SeqCst)
    }

    /// Gives the lease up at once, if this member holds it, and leaves the members' list (a
    /// clean stop: another front-end takes over without waiting for the lease to expire).
    pub fn resign(&self, me: &Member) -> Result<(), StoreError> {
        *self.fence.lock().unwrap_or_else(PoisonError::into_inner) = Some(Fence { generation: 0 });
        let incarnation = me.incarnation as i64;
        self.with_client(async |client: &mut Client| {
            client
                .execute(
                    "UPDATE cluster_lease SET expires_at = now()
                     WHERE id = 1 AND leader = $1 AND incarnation = $2",
                    &[&me.name, &incarnation],
                )
                .await
                .map_err(backend)?;
            client
                .execute("DELETE FROM cluster_members WHERE name = $1", &[&me.name])
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    /// The live lease and the members heard from within `gone_after`, ordered by name.
    pub fn lease_view(&self, gone_after: Duration) -> Result<LeaseView, StoreError> {
        let gone_ms = i64::try_from(gone_after.as_millis()).unwrap_or(i64::MAX);
        self.with_client(async |client: &mut Client| {
            let leader = client
                .query_opt(
                    "SELECT leader, url, generation,
                            (extract(epoch FROM since) * 1000)::BIGINT
                     FROM cluster_lease WHERE id = 1 AND expires_at > now()",
                    &[],
                )
                .await
                .map_err(backend)?
                .map(|row| {
                    Ok::<_, StoreError>(LeaderView {
                        name: row.try_get(0).map_err(read_error)?,
                        url: row.try_get(1).map_err(read_error)?,
                        generation: non_negative(row.try_get(2).map_err(read_error)?)?,
                        since_ms: non_negative(row.try_get(3).map_err(read_error)?)?,
                    })
                })
                .transpose()?;
            let rows = client
                .query(
                    "SELECT name, url, is_leader, (extract(epoch FROM since) * 1000)::BIGINT
                     FROM cluster_members
                     WHERE seen_at > now() - make_interval(secs => $1::BIGINT / 1000.0)
                     ORDER BY name COLLATE \"C\"",
                    &[&gone_ms],
                )
                .await
                .map_err(backend)?;
            let members = rows
                .iter()
                .map(|row| {
                    let name: String = row.try_get(0).map_err(read_error)?;
                    Ok(MemberView {
                        // The lease decides: a member's own note may lag it by one campaign.
                        leading: leader.as_ref().is_some_and(|l| l.name == name),
                        name,
                        url: row.try_get(1).map_err(read_error)?,
                        since_ms: non_negative(row.try_get(3).map_err(read_error)?)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(LeaseView { leader, members })
        })
    }
}

async fn campaign_in(
    tx: &Transaction<'_>,
    me: &Member,
    ttl_ms: i64,
) -> Result<Campaign, StoreError> {
    tx.execute(
        "INSERT INTO cluster_lease (id, leader, url, incarnation, generation, since, expires_at)
         VALUES (1, '', '', 0, 0, now(), now()) ON CONFLICT (id) DO NOTHING",
        &[],
    )
    .await
    .map_err(backend)?;
    let row = tx
        .query_one(
            "SELECT leader, url, incarnation, generation, expires_at > now(),
                    (extract(epoch FROM since) * 1000)::BIGINT
             FROM cluster_lease WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(backend)?;
    let leader: String = row.try_get(0).map_err(read_error)?;
    let url: String = row.try_get(1).map_err(read_error)?;
    let incarnation: i64 = row.try_get(2).map_err(read_error)?;
    let generation = non_negative(row.try_get(3).map_err(read_error)?)?;
    let live: bool = row.try_get(4).map_err(read_error)?;
    let since_ms = non_negative(row.try_get(5).map_err(read_error)?)?;
    let mine = leader == me.name && incarnation == me.incarnation as i64;
    let ttl = "make_interval(secs => $1::BIGINT / 1000.0)";
    if live && mine {
        tx.execute(
            &format!("UPDATE cluster_lease SET expires_at = now() + {ttl} WHERE id = 1"),
            &[&ttl_ms],
        )
        .await
        .map_err(backend)?;
        return Ok(Campaign::Leading {
            fence: Fence { generation },
            newly: false,
        });
    }
    if live {
        return Ok(Campaign::Following {
            leader: Some(LeaderView {
                name: leader,
                url,
                generation,
                since_ms,
            }),
        });
    }
    let next = generation + 1;
    tx.execute(
        &format!(
            "UPDATE cluster_lease SET leader = $2, url = $3, incarnation = $4, generation = $5,
                 since = now(), expires_at = now() + {ttl}
             WHERE id = 1"
        ),
        &[
            &ttl_ms,
            &me.name,
            &me.url,
            &(me.incarnation as i64),
            &(next as i64),
        ],
    )
    .await
    .map_err(backend)?;
    Ok(Campaign::Leading {
        fence: Fence { generation: next },
        newly: true,
    })
}

fn non_negative(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} is negative")))
}
