//! Images reach remote hosts over HTTP, with no shared storage: a `veem serve` with no host of
//! its own and a `veem agent` process with its own state directory; the agent fetches an
//! image by digest from the VEEM (`GET /vmi/v1/agents/blobs/{sha256}`) into its cache, once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veem_model::ControlAction as A;

use crate::harness::*;

/// The SHA-256 of a file, as `sha256sum` (coreutils) says it.
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

async fn wait_host_up(s: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = s.ops.list_hosts().await.expect("hosts");
        if hosts
            .hosts
            .iter()
            .any(|h| h.id.as_str() == name && h.state == veem_api::HostState::Up)
        {
            return;
        }
        assert!(Instant::now() < deadline, "host {name} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server with no host of its own.
async fn hostless_server() -> Server {
    Server::start_with(Setup {
        hosts: vec![],
        ..Setup::default()
    })
    .await
}

/// `GET /vmi/v1/agents/blobs/{digest}` with `token`: status and body.
async fn get_blob(s: &Server, digest: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new().get(format!("{}/vmi/v1/agents/blobs/{digest}", s.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the VEEM answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("a body").to_vec())
}

/// (inode, modification time in ns) of a file: a file fetched again is a new file renamed
/// into place, with another inode.
fn identity(path: &Path) -> (u64, i128) {
    let meta = std::fs::metadata(path).expect("the cached file");
    (
        meta.ino(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    )
}

#[tokio::test]
async fn a_remote_host_fetches_an_image_by_digest_once_and_boots_from_its_cache() {
    let s = hostless_server().await;
    let agent = RemoteAgent::start_with(&s, "r1", 8, 16384, Some(s.dir.path().join("own-r1")));
    wait_host_up(&s, "r1").await;
    let bytes = b"a sim image fetched over HTTP; ".repeat(40_000);
    let file = write_file(s.dir.path(), "tiny.img", &bytes);
    let digest = sha256_of(&file);
    let view = s.ops.push_image("tiny", &file, None).await.expect("upload");
    assert_eq!(view.sha256.as_deref(), Some(digest.as_str()));
    assert_eq!(
        s.ops
            .get_image("tiny")
            .await
            .expect("get")
            .sha256
            .as_deref(),
        Some(digest.as_str()),
        "the image's view names its digest"
    );

    // The route: agents' credentials only, digests only.
    let (status, served) = get_blob(&s, &digest, Some(TOKEN_OPS)).await;
    assert_eq!(status, 200);
    assert!(served == bytes, "the blob route serves the image's bytes");
    assert_eq!(
        get_blob(&s, &digest, Some(TOKEN_A)).await.0,
        403,
        "not an admin"
    );
    assert_eq!(get_blob(&s, &digest, None).await.0, 401);
    assert_eq!(get_blob(&s, "../../veem.db", Some(TOKEN_OPS)).await.0, 404);
    assert_eq!(
        get_blob(&s, &"0".repeat(64), Some(TOKEN_OPS)).await.0,
        404,
        "no image has it"
    );

    let id1 = init_one(&s.a, guest_of_tiny("first")).await;
    ctl_ok(&s.a, A::Activate, &[&id1]).await;
    let cached =
        veem_layout::cached_blob_path(&veem_layout::fetch_cache_dir(&agent.state_dir), &digest);
    assert!(
        std::fs::read(&cached).expect("the agent's cache holds the digest") == bytes,
        "the cache holds the image's bytes"
    );
    let before = identity(&cached);

    // The front-end's own copy goes: a second fetch could only fail now.
    std::fs::remove_file(veem_layout::blob_path(&s.data_dir(), &digest)).expect("removed");
    assert_eq!(get_blob(&s, &digest, Some(TOKEN_OPS)).await.0, 404);
    let id2 = init_one(&s.a, guest_of_tiny("second")).await;
    ctl_ok(&s.a, A::Activate, &[&id2]).await;
    assert_eq!(
        identity(&cached),
        before,
        "the cached digest was not fetched again"
    );
    assert_eq!(state_of(&s.a, &id2).await, veem_model::VmiState::Active);
}

/// A VEE whose first disk is a copy of the image `tiny`.
pub(crate) fn guest_of_tiny(name: &str) -> veem_model::VeeDescriptor {
    let mut d = small(name);
    d.disks.push(tiny_disk());
    d
}

/// A `veem agent --driver qemu` process on `s`, its state in `state_dir`.
fn qemu_agent(s: &Server, name: &str, state_dir: &Path) -> Child {
    let log = std::fs::File::create(s.dir.path().join(format!("agent-{name}.log")))
        .expect("the agent's log");
    Command::new(veem_bin())
        .args(["agent", "--server", &s.url, "--agent-token", TOKEN_OPS])
        .args(["--name", name, "--driver", "qemu"])
        .args(["--cpus", "4", "--memory-mb", "4096"])
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the agent starts")
}

/// Ends the agent it holds when dropped (its guests are destroyed by the test first).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_remote_qemu_host_boots_the_test_guest_from_an_image_fetched_over_http() {
    // Fails under CI when QEMU is missing (see `qemu_available`).
    let Some(image) = guest_image() else { return };
    let s = hostless_server().await;
    let state_dir: PathBuf = s.dir.path().join("agent-q1");
    let _agent = Reaped(qemu_agent(&s, "q1", &state_dir));
    wait_host_up(&s, "q1").await;
    s.ops
        .push_image("tiny", &image, None)
        .await
        .expect("the guest image uploads");
    let digest = sha256_of(&image);
    let id = init_one(&s.a, guest_of_tiny("fetched")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let cached = veem_layout::cached_blob_path(&veem_layout::fetch_cache_dir(&state_dir), &digest);
    assert_eq!(
        sha256_of(&cached),
        digest,
        "booted from the fetched, checked copy"
    );
    ctl_ok(&s.a, A::Destroy, &[&id]).await;
}

#[tokio::test]
async fn a_remote_host_with_only_its_client_certificate_fetches_images_over_https() {
    let s = Server::start_with(Setup {
        hosts: vec![],
        tls: Some(vec!["c1"]),
        ..Setup::default()
    })
    .await;
    let tls = s.dir.path().join("tls");
    // No token: the certificate alone lets it in, and fetch.
    let _agent = Reaped(crate::tls::spawn_agent(
        &s,
        "c1",
        &tls.join("agent-c1.pem"),
        &tls.join("agent-c1.key"),
    ));
    wait_host_up(&s, "c1").await;
    let bytes = b"an image over https, verified by the site's CA; ".repeat(1_000);
    let file = write_file(s.dir.path(), "tiny.img", &bytes);
    let digest = sha256_of(&file);
    s.ops.push_image("tiny", &file, None).await.expect("upload");
    let id = init_one(&s.a, guest_of_tiny("secure")).await;
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    let cached = veem_layout::cached_blob_path(
        &veem_layout::fetch_cache_dir(&s.dir.path().join("state-c1")),
        &digest,
    );
    assert!(
        std::fs::read(&cached).expect("the agent's cache holds the digest") == bytes,
        "fetched whole over https"
    );
}
