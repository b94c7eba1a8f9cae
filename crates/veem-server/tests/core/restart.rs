//! The core opened again on its store (as after a restart of `veem serve`): every VEE, its
//! reservation, its place in the queue and its addresses are as they were; ids go on.

use std::collections::{BTreeMap, BTreeSet};

use veem_model::{ControlAction as A, InitModel, VeeId, VeemState, VmiState};
use veem_placement::Policy;

use crate::accounting::Listener;
use crate::support::*;

/// A runtime of its own for each life of the core: dropping it ends every task of that core.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_core_opened_again_on_its_store_finds_every_vee_reservation_queue_and_address() {
    let hosts = || vec![host("h1", 4, 8192)];
    let first_life = runtime();
    let (dir, ids, before) = first_life.block_on(async {
        let site = Site::open(hosts()).await;
        site.network(&sm_a(), "private", "10.10.0.0/24", false)
            .await;
        let running = site
            .define_one(with_nics("running", &[("private", None)]))
            .await;
        site.act_ok(A::Activate, std::slice::from_ref(&running))
            .await;
        let reserved = site
            .define(&sm_a(), InitModel::Twophase, 1, sized("reserved", 2, 1024))
            .await[0]
            .id
            .clone();
        let waiting = site.define_one(sized("waiting", 4, 1024)).await;
        site.veem
            .submit(&sm_a(), std::slice::from_ref(&waiting))
            .await;
        assert_eq!(site.get(&waiting).veem_state, VeemState::Pending);
        assert_eq!(site.cpus_used("h1"), 3);
        let ids = [running, reserved, waiting];
        let before: BTreeMap<VeeId, _> = ids
            .iter()
            .map(|id| {
                let r = site.get(id);
                (
                    id.clone(),
                    (r.state, r.veem_state, r.host, r.reserved, r.generated),
                )
            })
            .collect();
        (site.close(), ids, before)
    });
    drop(first_life);

    let second_life = runtime();
    second_life.block_on(async {
        let site = Site::open_in(dir, Policy::Pack, hosts()).await;
        let [running, reserved, waiting] = &ids;
        for id in &ids {
            let r = site.get(id);
            assert_eq!(
                (r.state, r.veem_state, r.host, r.reserved, r.generated),
                before[id].clone(),
                "{id} as it was"
            );
        }
        assert!(site.get(waiting).pending_reason.is_some());
        assert_eq!(
            site.instances_on("h1").await,
            vec![running.clone()],
            "the host's instance is adopted, not started again"
        );
        assert_eq!(
            site.cpus_used("h1"),
            3,
            "the running VEE and the reservation"
        );
        let network = site.veem.networks().get(&sm_a(), "private").expect("kept");
        assert_eq!(network.held, 1);
        let next = site
            .define_one(with_nics("next", &[("private", None)]))
            .await;
        let next_record = site.get(&next);
        assert_eq!(
            next_record.generated.nics[0].ip.as_deref(),
            Some("10.10.0.3"),
            "an address held before is not given again"
        );
        assert!(
            ids.iter().all(|id| id.seq() < next_record.id.seq()),
            "ids go on"
        );

        // The reservation is used where it was made; the queue is served once room frees.
        site.act_ok(A::Activate, std::slice::from_ref(reserved))
            .await;
        assert_eq!(site.get(reserved).host, Some(host_id("h1")));
        site.act_ok(A::Destroy, &[running.clone(), reserved.clone()])
            .await;
        let placed = site.wait_state(waiting, VmiState::Active).await;
        assert_eq!(placed.host, Some(host_id("h1")));
    });
}

#[test]
fn a_deployment_cut_short_by_a_stop_is_started_again_when_the_core_reopens() {
    // Deployments take 5 s on the first life's host: the core stops in the middle of one.
    let first_life = runtime();
    let (dir, id) = first_life.block_on(async {
        let site = Site::open(vec![host("h1", 4, 8192).deploy_latency(5_000)]).await;
        let id = site.define_one(small("interrupted")).await;
        let submitted = site.veem.submit(&sm_a(), std::slice::from_ref(&id)).await;
        assert!(submitted.failed.is_empty(), "{:?}", submitted.failed);
        let booting = site.get(&id);
        assert_eq!(
            (booting.state, booting.veem_state, booting.host),
            (VmiState::Initial, VeemState::Hold, Some(host_id("h1")))
        );
        assert!(site.instances_on("h1").await.is_empty(), "not there yet");
        (site.close(), id)
    });
    drop(first_life);

    let second_life = runtime();
    second_life.block_on(async {
        let site = Site::open_in(dir, Policy::Pack, vec![host("h1", 4, 8192)]).await;
        let active = site.wait_state(&id, VmiState::Active).await;
        assert_eq!(active.host, Some(host_id("h1")));
        assert_eq!(site.instances_on("h1").await, vec![active.id.clone()]);
        assert_eq!(site.cpus_used("h1"), 1, "counted once");
    });
}

#[test]
fn accounting_ticks_go_on_on_the_registrations_grid_when_the_core_reopens() {
    // The listener outlives both lives of the core: a runtime of its own, with a worker.
    let listening = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let listener = listening.block_on(Listener::start());
    let first_life = runtime();
    let (dir, id) = first_life.block_on(async {
        let site = Site::open(vec![host("h1", 4, 8192)]).await;
        let id = site.define_one(small("counted")).await;
        site.veem
            .listen(&sm_a(), std::slice::from_ref(&id), 200, &listener.url)
            .await
            .expect("registered");
        listener.wait_for(&id, 2).await;
        (site.close(), id)
    });
    drop(first_life);
    let before = listener.records(&id).len();

    let second_life = runtime();
    second_life.block_on(async {
        let _site = Site::open_in(dir, Policy::Pack, vec![host("h1", 4, 8192)]).await;
        // Delivery is at least once: what was sent just before the stop may come again
        // (see "Accounting and monitoring" in ARCHITECTURE.md), never out of order.
        let t0s = wait_until("two ticks after the reopening", || {
            let t0s: Vec<u64> = listener.records(&id).iter().map(|(_, r)| r.t0).collect();
            let distinct: BTreeSet<u64> = t0s.iter().copied().collect();
            (distinct.len() >= before + 2).then_some(t0s)
        })
        .await;
        let first = t0s[0];
        assert!(
            t0s.iter().all(|t0| (t0 - first) % 200 == 0),
            "every tick on the grid of the registration: {t0s:?}"
        );
        let mut seen = BTreeSet::new();
        let mut resent = 0;
        for t0 in &t0s {
            if seen.contains(t0) {
                resent += 1;
            } else {
                assert!(
                    seen.last().is_none_or(|last| t0 > last),
                    "new ticks in order: {t0s:?}"
                );
                seen.insert(*t0);
            }
        }
        assert!(resent <= 2, "at most the last two pushes again: {t0s:?}");
    });
}

#[test]
fn a_host_an_operator_disabled_stays_disabled_when_the_core_opens_again() {
    let hosts = || vec![host("h1", 4, 8192), host("h2", 4, 8192)];
    let first_life = runtime();
    let dir = first_life.block_on(async {
        let site = Site::open(hosts()).await;
        site.veem
            .set_host_disabled(&host_id("h1"), true)
            .await
            .expect("a known host");
        site.close()
    });
    drop(first_life);

    let second_life = runtime();
    let dir = second_life.block_on(async {
        let site = Site::open_in(dir, Policy::Pack, hosts()).await;
        let h1 = site.veem.hosts().get(&host_id("h1")).expect("h1");
        assert!(h1.disabled, "the operator's word outlives the core");
        let vees = ids_of(
            &site
                .define(&sm_a(), InitModel::Besteffort, 2, small("newcomer"))
                .await,
        );
        site.act_ok(A::Activate, &vees).await;
        for id in &vees {
            assert_eq!(site.get(id).host, Some(host_id("h2")), "{id}");
        }
        site.veem
            .set_host_disabled(&host_id("h1"), false)
            .await
            .expect("a known host");
        site.close()
    });
    drop(second_life);

    runtime().block_on(async {
        let site = Site::open_in(dir, Policy::Pack, hosts()).await;
        let h1 = site.veem.hosts().get(&host_id("h1")).expect("h1");
        assert!(!h1.disabled, "enabled again, and so it stays");
    });
}
