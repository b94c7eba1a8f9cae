//! The web dashboard (`/ui/`) in a real headless Chromium, driven over the DevTools protocol as
//! a person would use it: log in (a wrong token first), create a VEE from the form, activate
//! it, see it ACTIVE with its console and its plot, destroy it. What the page shows is checked
//! in its DOM, and what the VEEM did through the VMI. Screenshots of each step go to
//! `<target>/test-artefacts/dashboard/`; with `VEEM_UPDATE_SCREENSHOTS=1` the one of the
//! running VEE also becomes `docs/dashboard.png`.

use std::path::PathBuf;
use std::time::Duration;

use veem_model::VmiState;

use crate::cdp::Browser;
use crate::harness::{
    get, init_one, small, wait_state, write_file, Hypervisor, Server, Setup, TOKEN_A, TOKEN_OPS,
};

/// A TCG guest boots in well under a minute here; a loaded CI machine gets slack.
const BOOT: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(20);

fn artefacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    target
        .parent()
        .expect("the target tmp dir is inside the target dir")
        .join("test-artefacts")
        .join("dashboard")
}

struct Steps {
    browser: Browser,
    n: u32,
}

impl Steps {
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let path = artefacts().join(format!("{:02}-{name}.png", self.n));
        self.browser.screenshot(&path).await;
    }

    async fn text(&mut self, id: &str) -> String {
        let value = self
            .browser
            .eval(&format!(
                "(document.getElementById('{id}') || {{}}).textContent || ''"
            ))
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Sets a form field as typing would, with the events a page listens to.
    async fn type_into(&mut self, id: &str, value: &str) {
        let value = serde_json::to_string(value).expect("a JSON string");
        self.browser
            .eval(&format!(
                "(() => {{ const e = document.getElementById('{id}'); e.value = {value}; \
                 e.dispatchEvent(new Event('input', {{bubbles: true}})); \
                 e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()"
            ))
            .await;
    }

    async fn submit(&mut self, form: &str) {
        self.browser
            .eval(&format!(
                "document.getElementById('{form}').requestSubmit(), true"
            ))
            .await;
    }

    async fn click(&mut self, selector: &str) {
        let selector = serde_json::to_string(selector).expect("a JSON string");
        self.browser
            .eval(&format!("document.querySelector({selector}).click(), true"))
            .await;
    }

    async fn wait(&mut self, expression: &str, within: Duration, what: &str) -> serde_json::Value {
        self.browser.wait_for(expression, within, what).await
    }

    /// Waits until the open VEE's page shows it in `state`.
    async fn wait_detail_state(&mut self, state: &str, within: Duration) {
        self.wait(
            &format!(
                "!document.getElementById('vee-view').hidden && \
                 (document.getElementById('vee-state') || {{}}).textContent === '{state}'"
            ),
            within,
            &format!("the VEE {state}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_person_creates_activates_watches_and_destroys_a_vee_in_the_dashboard() {
    // One qemu host; HARDWARE figures every 300 ms (the harness's default), so the plot fills
    // while the test watches.
    let Some(s) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        hosts: vec![("h1", 2, 2048, "")],
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let Some(mut browser) = Browser::launch(1280, 900).await else {
        return;
    };
    let _ = std::fs::remove_dir_all(artefacts());
    browser.failure_shot = Some(artefacts().join("failure.png"));
    let mut ui = Steps { browser, n: 0 };

    // The page, from the binary itself.
    ui.browser.navigate(&format!("{}/ui", s.url)).await;
    assert_eq!(
        ui.browser.eval("location.pathname").await,
        "/ui/",
        "/ui is sent on to /ui/"
    );
    ui.wait(
        "!document.getElementById('login-view').hidden",
        SHORT,
        "the login form",
    )
    .await;
    ui.shot("login").await;

    // A wrong token is told apart, and lets nothing in.
    ui.type_into("token", "not-a-token").await;
    ui.submit("login-form").await;
    let said = ui
        .wait(
            "document.getElementById('login-error').textContent",
            SHORT,
            "why the login failed",
        )
        .await;
    assert!(
        said.as_str().unwrap_or_default().contains("not accepted"),
        "{said}"
    );
    assert_eq!(
        ui.browser
            .eval("document.getElementById('nav').hidden")
            .await,
        true
    );
    assert_eq!(
        ui.browser
            .eval("sessionStorage.getItem('veem.token')")
            .await,
        serde_json::Value::Null
    );
    ui.shot("wrong-token").await;

    // The admin's token: the VEE list, the live stream, and the Hosts view an admin has.
    ui.type_into("token", TOKEN_OPS).await;
    ui.submit("login-form").await;
    ui.wait(
        "!document.getElementById('vees-view').hidden && \
         [...document.getElementById('create-image').options].some(o => o.value === 'tiny')",
        SHORT,
        "the VEE list, with the image tiny to create from",
    )
    .await;
    assert_eq!(
        ui.browser
            .eval("sessionStorage.getItem('veem.token')")
            .await,
        TOKEN_OPS
    );
    assert_eq!(
        ui.browser
            .eval("document.getElementById('nav-hosts').hidden")
            .await,
        false
    );
    ui.wait(
        "document.getElementById('stream-state').textContent === 'stream: live'",
        SHORT,
        "the live event stream connected",
    )
    .await;

    // The page's Content-Security-Policy holds in the browser: a script that is not one of the
    // page's files does not run, and the browser says so (which the test hears).
    ui.browser
        .eval(
            "(() => { const s = document.createElement('script'); \
             s.textContent = 'window.injected = true'; document.body.append(s); return true; })()",
        )
        .await;
    let refused = ui
        .wait(
            "new Promise(done => setTimeout(() => done(window.injected === undefined), 200))",
            SHORT,
            "the inline script refused",
        )
        .await;
    assert_eq!(refused, true);
    ui.browser.eval("1").await;
    assert!(
        ui.browser
            .page_errors
            .iter()
            .any(|e| e.contains("Content Security Policy")),
        "the browser reports the refused script: {:?}",
        ui.browser.page_errors
    );
    ui.browser.page_errors.clear();

    // A VEE whose name is markup (made through the VMI, left DEFINED): the page shows it as
    // text, and no element of it comes into being.
    let markup = "<img src=x id=injected onerror=\"document.title='owned'\"><b>bold</b>";
    let other = init_one(&s.ops, small(markup)).await;

    // Create one VEE from the form.
    let name = "web";
    ui.type_into("create-name", name).await;
    ui.type_into("create-cpu", "1").await;
    ui.type_into("create-memory", "256").await;
    ui.type_into("create-image", "tiny").await;
    ui.type_into("create-count", "1").await;
    ui.type_into("create-model", "TWOPHASE").await;
    ui.shot("create-form").await;
    ui.submit("create-form").await;
    let id = ui
        .wait(
            "(document.querySelector('#create-result a.created') || {}).textContent",
            SHORT,
            "the new VEE's id",
        )
        .await;
    let id = id.as_str().expect("an id").to_owned();
    let created = get(&s.ops, &id).await;
    assert_eq!(created.state, VmiState::Defined);
    assert_eq!(created.name, name);
    assert_eq!(created.descriptor.cpu, 1);
    assert_eq!(created.descriptor.memory_mb, 256);
    ui.wait(
        &format!(
            "!!document.querySelector('#vee-rows tr[data-id=\"{id}\"][data-state=\"DEFINED\"]')"
        ),
        SHORT,
        "the new VEE in the list, DEFINED",
    )
    .await;
    ui.wait(
        &format!("!!document.querySelector('#vee-rows tr[data-id=\"{other}\"]')"),
        SHORT,
        "the VEE made through the VMI in the list",
    )
    .await;
    assert_eq!(
        ui.browser
            .eval(&format!(
                "document.querySelector('#vee-rows tr[data-id=\"{other}\"] a').textContent"
            ))
            .await,
        markup,
        "a name that is markup shows as the text it is"
    );
    assert_eq!(
        ui.browser
            .eval("[document.querySelectorAll('#injected, #vee-rows b, #vee-rows img').length, document.title]")
            .await,
        serde_json::json!([0, "veem dashboard"]),
        "a VEE's name is never markup"
    );

    // Its page, then ACTIVATE.
    ui.click(&format!("#vee-rows tr[data-id=\"{id}\"] a")).await;
    ui.wait_detail_state("DEFINED", SHORT).await;
    assert_eq!(ui.text("vee-title").await, name);
    ui.shot("defined").await;
    ui.click("#vee-actions button[data-action=ACTIVATE]").await;
    ui.wait_detail_state("ACTIVE", BOOT).await;
    let active = wait_state(&s.ops, &id, VmiState::Active).await;
    assert_eq!(active.host.as_ref().map(|h| h.as_str()), Some("h1"));
    assert_eq!(ui.text("vee-host").await, "h1");
    assert!(ui.text("vee-events").await.contains("ACTIVE"));

    // The console's tail shows the guest booting (GET /vees/{id}/console), and the plot its
    // HARDWARE figures: live from the event stream, and from the history
    // (GET /vees/{id}/monitoring) once the page is opened again.
    ui.wait(
        &format!(
            "document.getElementById('console').textContent.includes('{}')",
            veem_guest::READY_MARKER
        ),
        BOOT,
        "the guest's boot output in the console",
    )
    .await;
    ui.wait(
        "Number(document.getElementById('plot').dataset.hardwareLive) >= 2 && \
         Number((document.querySelector('#plot polyline.series.cpu-hw') || {dataset: {}}).dataset.points) >= 2",
        SHORT,
        "the plot drawn from live HARDWARE events",
    )
    .await;
    ui.browser.eval("location.hash = 'vees', true").await;
    ui.wait(
        &format!(
            "!!document.querySelector('#vee-rows tr[data-id=\"{id}\"][data-state=\"ACTIVE\"]')"
        ),
        SHORT,
        "the VEE ACTIVE in the list",
    )
    .await;
    ui.shot("list-active").await;
    ui.browser
        .eval(&format!("location.hash = 'vee/{id}', true"))
        .await;
    ui.wait_detail_state("ACTIVE", SHORT).await;
    ui.wait(
        "Number(document.getElementById('plot').dataset.hardwareHistory) >= 2 && \
         document.querySelectorAll('#plot circle.dot.mem-hw').length >= 2",
        SHORT,
        "the plot drawn from the HARDWARE history",
    )
    .await;
    ui.wait(
        &format!(
            "document.getElementById('console').textContent.includes('{}')",
            veem_guest::READY_MARKER
        ),
        SHORT,
        "the console again",
    )
    .await;
    // Let a few more live points come, for a plot worth a look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ui.shot("active").await;
    if std::env::var("VEEM_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        // The README's picture: a plot of some 20 s (the test itself does not wait for it).
        tokio::time::sleep(Duration::from_secs(15)).await;
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        ui.browser.screenshot(&docs).await;
    }

    // The hosts' view: h1 carries the VEE's CPU and memory.
    ui.browser.eval("location.hash = 'hosts', true").await;
    let used = ui
        .wait(
            "(() => { const m = document.querySelectorAll('#host-rows tr[data-id=\"h1\"] meter'); \
             return m.length === 2 && m[0].value === 1 && m[1].value === 256 ? [m[0].max, m[1].max] : null; })()",
            SHORT,
            "h1 using 1 CPU and 256 MB",
        )
        .await;
    assert_eq!(used, serde_json::json!([2, 2048]), "against its capacity");
    ui.shot("hosts").await;

    // An image uploaded from the page, with its progress; a network made and removed; a
    // refusal of the VMI shown with its detail.
    ui.browser.eval("location.hash = 'images', true").await;
    ui.wait(
        "!!document.querySelector('#image-rows tr[data-name=\"tiny\"]')",
        SHORT,
        "the image list",
    )
    .await;
    let upload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = write_file(s.dir.path(), "upload.img", &upload);
    ui.type_into("image-name", "uploaded").await;
    ui.browser.choose_file("#image-file", &file).await;
    ui.submit("image-form").await;
    ui.wait(
        "document.getElementById('image-progress').value === 100 && \
         !!document.querySelector('#image-rows tr[data-name=\"uploaded\"]')",
        SHORT,
        "the upload done and listed",
    )
    .await;
    ui.shot("images").await;
    let stored = s
        .ops
        .get_image("uploaded")
        .await
        .expect("the uploaded image");
    assert_eq!(stored.size_bytes, upload.len() as u64);
    ui.browser.eval("location.hash = 'networks', true").await;
    ui.type_into("network-name", "lan").await;
    ui.type_into("network-cidr", "10.77.0.0/33").await;
    ui.submit("network-form").await;
    let refusal = ui
        .wait(
            "!document.getElementById('message').hidden && document.getElementById('message-text').textContent",
            SHORT,
            "the VMI's refusal of a bad CIDR",
        )
        .await;
    assert!(
        refusal.as_str().unwrap_or_default().contains("(malformed"),
        "the detail and its code: {refusal}"
    );
    ui.shot("network-refused").await;
    ui.click("#message-close").await;
    ui.type_into("network-cidr", "10.77.0.0/24").await;
    ui.submit("network-form").await;
    ui.wait(
        "!!document.querySelector('#network-rows tr[data-name=\"lan\"]')",
        SHORT,
        "the new network listed",
    )
    .await;
    assert!(s.ops.get_network("lan").await.is_ok());
    ui.click("#network-rows tr[data-name=\"lan\"] button").await;
    ui.wait(
        "!document.querySelector('#network-rows tr[data-name=\"lan\"]')",
        SHORT,
        "the network gone",
    )
    .await;
    assert!(s.ops.get_network("lan").await.is_err());

    // The live log showed the VEE's state changes.
    ui.browser.eval("location.hash = 'events', true").await;
    ui.wait(
        &format!(
            "[...document.querySelectorAll('#event-log li.STATE')].some(li => li.textContent.includes('{id}') && li.textContent.includes('ACTIVE'))"
        ),
        SHORT,
        "the VEE's STATE event in the live log",
    )
    .await;
    ui.shot("events").await;

    // DESTROY from its page.
    ui.browser
        .eval(&format!("location.hash = 'vee/{id}', true"))
        .await;
    ui.wait_detail_state("ACTIVE", SHORT).await;
    ui.click("#vee-actions button[data-action=DESTROY]").await;
    ui.wait_detail_state("DESTROYED", SHORT).await;
    let destroyed = wait_state(&s.ops, &id, VmiState::Destroyed).await;
    assert_eq!(destroyed.host, None);
    ui.wait(
        "[...document.querySelectorAll('#vee-events td')].some(td => td.textContent === 'DESTROYED')",
        SHORT,
        "the DESTROYED event in the VEE's events",
    )
    .await;
    ui.shot("destroyed").await;
    // No error was shown along the way.
    assert_eq!(
        ui.browser
            .eval("document.getElementById('message').hidden")
            .await,
        true,
        "the page showed an error: {}",
        ui.text("message-text").await
    );

    // Log out; an SM's token sees its own VEEs only (none) and no hosts.
    ui.click("#logout").await;
    ui.wait(
        "!document.getElementById('login-view').hidden && document.getElementById('vees-view').hidden",
        SHORT,
        "the login form again",
    )
    .await;
    assert_eq!(
        ui.browser
            .eval("sessionStorage.getItem('veem.token')")
            .await,
        serde_json::Value::Null
    );
    ui.type_into("token", TOKEN_A).await;
    ui.submit("login-form").await;
    ui.wait(
        "!document.getElementById('vees-view').hidden && \
         document.getElementById('whoami').textContent === 'principal' && \
         !!document.querySelector('#vee-rows tr.empty')",
        SHORT,
        "an SM's empty VEE list",
    )
    .await;
    assert_eq!(
        ui.browser
            .eval("document.getElementById('nav-hosts').hidden")
            .await,
        true,
        "no hosts for an SM"
    );
    ui.shot("sm-view").await;
    // Nothing broke in the page: no exception, no refusal of its own Content-Security-Policy.
    assert!(
        ui.browser.page_errors.is_empty(),
        "{:#?}",
        ui.browser.page_errors
    );
}

/// Among several front-ends, each serves the dashboard's files itself (they are the same
/// everywhere): a follower does not forward them, so it serves them even to a call marked as
/// already forwarded, which it would otherwise refuse (`503 not_leader`) to stop a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_of_a_cluster_serves_the_dashboard_itself() {
    let Some(site) = crate::front_ends::Site::start(2).await else {
        return;
    };
    let leader = site.wait_for_leader(&[], Duration::from_secs(30)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    for front_end in &site.front_ends {
        let follower = front_end.name != leader;
        let call = |path: &str| {
            let mut request = http.get(format!("{}{path}", front_end.url));
            if follower {
                request = request.header("x-veem-forwarded-by", "the-test");
            }
            request.send()
        };
        let page = call("/ui/").await.expect("the page answers");
        assert_eq!(page.status(), 200, "{}: /ui/", front_end.name);
        assert_eq!(
            page.headers()["content-security-policy"]
                .to_str()
                .expect("ASCII")
                .split(';')
                .next(),
            Some("default-src 'self'")
        );
        assert!(page
            .text()
            .await
            .expect("a body")
            .contains("<script src=\"app.js\""));
        let script = call("/ui/app.js").await.expect("the script answers");
        assert_eq!(script.status(), 200, "{}: /ui/app.js", front_end.name);
        let redirect = call("/ui").await.expect("/ui answers");
        assert_eq!(redirect.status(), 308);
        assert_eq!(redirect.headers()["location"], "/ui/");
        assert_eq!(call("/ui/missing.js").await.expect("answers").status(), 404);
        if follower {
            // The same mark on a VMI call: refused, since the follower would forward it.
            let vmi = call("/vmi/v1/vees").await.expect("the VMI answers");
            assert_eq!(vmi.status(), 503, "{}: a marked VMI call", front_end.name);
        }
    }
}
