//! Placement plans (`POST /vees/plan`): where a TWOPHASE batch would land now, computed by the
//! placement TWOPHASE itself uses, changing nothing; and the names of a batch's replicas
//! (Table 2.2 of the paper).

use veem_model::{InitModel, SiteName, VmiState};
use veem_placement::Policy;
use veem_server::error::CoreError;

use crate::support::*;

#[tokio::test]
async fn a_feasible_plan_allocates_nothing_and_names_where_twophase_then_reserves() {
    let site = Site::open_with(
        Policy::Spread,
        vec![
            host("h1", 4, 8192),
            host("h2", 4, 8192),
            host("h3", 2, 4096),
        ],
    )
    .await;
    let mut descriptor = sized("db", 2, 1024);
    descriptor.tags = vec!["database".to_owned()];
    descriptor.anti_affinity = vec!["database".to_owned()];
    let plan = site
        .veem
        .plan(&sm_a(), 3, descriptor.clone())
        .await
        .expect("a plan");
    assert!(plan.feasible, "{plan:?}");
    let used = || ["h1", "h2", "h3"].map(|h| site.cpus_used(h));
    assert_eq!(used(), [0, 0, 0], "the plan allocated nothing");
    assert!(site.all().is_empty(), "the plan defined nothing");
    let planned: Vec<_> = plan.placements.iter().map(|p| p.host.clone()).collect();
    let mut hosts: Vec<_> = planned.iter().flatten().map(|h| h.to_string()).collect();
    hosts.sort();
    assert_eq!(hosts, ["h1", "h2", "h3"], "anti-affinity: one per host");
    for (i, p) in plan.placements.iter().enumerate() {
        assert_eq!(p.index as usize, i);
        assert_eq!(p.name, format!("db-{}", i + 1));
        assert_eq!(&p.site, site.veem.sites().this(), "this site's name");
        assert_eq!(p.reason, None);
    }

    // Nothing changed in between: TWOPHASE reserves each VEE where the plan said.
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 3, descriptor)
        .await;
    let got: Vec<_> = reserved.iter().map(|r| r.host.clone()).collect();
    assert_eq!(got, planned);
    assert_eq!(used(), [2, 2, 2]);
}

#[tokio::test]
async fn an_infeasible_plan_says_why_and_twophase_then_fails_the_same_way() {
    let site = Site::open(vec![host("h1", 4, 8192), host("h2", 4, 8192)]).await;
    let before = site
        .define(&sm_a(), InitModel::Twophase, 1, sized("x", 2, 1024))
        .await;
    // 6 CPUs left in pieces of 2 and 4: three VEEs of 3 CPUs do not fit, two would.
    let plan = site
        .veem
        .plan(&sm_a(), 3, sized("big", 3, 1024))
        .await
        .expect("a plan, not an error");
    assert!(!plan.feasible);
    assert_eq!(plan.placements.len(), 3);
    for p in &plan.placements {
        assert_eq!(p.host, None);
        let reason = p.reason.as_deref().expect("a reason");
        assert!(reason.starts_with("local hosts: "), "{reason}");
        // The second does not fit once the first took h2; it is named by its name.
        assert!(
            reason.contains("cannot place big-2 together with the other 2 VEEs"),
            "{reason}"
        );
    }
    assert_eq!((site.cpus_used("h1"), site.cpus_used("h2")), (2, 0));
    let refused = site
        .veem
        .initialize(&sm_a(), InitModel::Twophase, 3, sized("big", 3, 1024))
        .await
        .expect_err("the plan said it does not fit");
    assert!(
        matches!(refused, CoreError::InsufficientResources(_)),
        "{refused:?}"
    );
    // One of them fits (on h2): the plan says so, and TWOPHASE reserves it there.
    let plan = site
        .veem
        .plan(&sm_a(), 1, sized("big", 3, 1024))
        .await
        .expect("a plan");
    assert!(plan.feasible, "{plan:?}");
    assert_eq!(plan.placements[0].host, Some(host_id("h2")));
    assert_eq!(
        plan.placements[0].name, "big",
        "a batch of one keeps its name"
    );
    let reserved = site
        .define(&sm_a(), InitModel::Twophase, 1, sized("big", 3, 1024))
        .await;
    assert_eq!(reserved[0].host, Some(host_id("h2")));
    assert_eq!(site.all().len(), before.len() + 1);
}

#[tokio::test]
async fn a_plan_of_bad_input_is_refused_like_initialize_and_changes_nothing() {
    let site = Site::open(vec![host("h1", 4, 8192)]).await;
    for count in [0, 10_001] {
        let refused = site
            .veem
            .plan(&sm_a(), count, small("a"))
            .await
            .expect_err("count out of bounds");
        assert!(
            matches!(refused, CoreError::MalformedRequest { ref field, .. } if field == "count"),
            "{refused:?}"
        );
    }
    let mut no_cpu = small("a");
    no_cpu.cpu = 0;
    let refused = site
        .veem
        .plan(&sm_a(), 1, no_cpu)
        .await
        .expect_err("0 CPUs");
    assert!(
        matches!(refused, CoreError::MalformedDescriptor(_)),
        "{refused:?}"
    );
    let mut elsewhere = small("a");
    elsewhere.sites = vec![SiteName::new("nowhere").expect("a valid site name")];
    let refused = site
        .veem
        .plan(&sm_a(), 1, elsewhere)
        .await
        .expect_err("no such site");
    assert!(
        matches!(refused, CoreError::MalformedDescriptor(_)),
        "{refused:?}"
    );
    let mut from_file = small("a");
    from_file.disks = vec![serde_json::from_value(serde_json::json!(
        {"source": "file:///etc/passwd", "target": "vda"}
    ))
    .expect("a disk")];
    let refused = site
        .veem
        .plan(&sm_a(), 1, from_file)
        .await
        .expect_err("a file: source");
    assert!(matches!(refused, CoreError::AccessDenied(_)), "{refused:?}");
    assert_eq!(site.cpus_used("h1"), 0);
    assert!(site.all().is_empty());
}

#[tokio::test]
async fn replicas_of_a_batch_are_named_by_position_and_keep_their_names_across_a_restart() {
    let site = Site::open(vec![host("h1", 8, 16384)]).await;
    let batch = site
        .define(&sm_a(), InitModel::Besteffort, 3, small("db"))
        .await;
    let names: Vec<&str> = batch.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["db-1", "db-2", "db-3"]);
    assert_eq!(batch[1].generated.name.as_deref(), Some("db-2"));
    assert!(
        batch.iter().all(|r| r.descriptor.name == "db"),
        "the descriptor keeps its name"
    );
    let one = site
        .define(&sm_a(), InitModel::Twophase, 1, small("web"))
        .await;
    assert_eq!(
        (one[0].name(), one[0].generated.name.as_deref()),
        ("web", None)
    );
    site.act_ok(veem_model::ControlAction::Activate, &ids_of(&batch))
        .await;
    for r in &batch {
        assert_eq!(
            site.wait_state(&r.id, VmiState::Active).await.name(),
            r.name()
        );
    }
    let ids = ids_of(&batch);
    let dir = site.close();
    let site = Site::open_in(dir, Policy::Pack, vec![host("h1", 8, 16384)]).await;
    let names: Vec<String> = ids
        .iter()
        .map(|id| site.get(id).name().to_owned())
        .collect();
    assert_eq!(names, ["db-1", "db-2", "db-3"], "read back from the store");
}
