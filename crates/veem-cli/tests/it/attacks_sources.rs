//! Sources as an attacker tries them, from outside, over HTTP: every `file:` form a tenant or
//! an admin might use to read the host's files (no byte of them is readable through any
//! API), path traversal in disk targets, and `http(s)://` sources fetched by the hosts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use veem_model::{ControlAction as A, VmiState};

use crate::harness::*;

/// Bytes no API answer may ever hold.
const SECRET: &[u8] = b"VEEM-SECRET-HOST-FILE-7d1f0c";
/// The tests' web servers listen on loopback, where hosts fetch from only when allowed.
const LOOPBACK_FETCHES: &str = "fetch_allow = [\"127.0.0.0/8\"]\n";

/// A host's files as the attacks aim at them: an allowed directory (holding a good image, a
/// symlink out of it and one into the server's data_dir) and a secret outside it.
struct HostFiles {
    _root: tempfile::TempDir,
    allowed: PathBuf,
    secret: PathBuf,
}

fn host_files() -> HostFiles {
    let root = tempfile::tempdir().expect("a temp dir");
    let base = std::fs::canonicalize(root.path()).expect("resolves");
    let allowed = base.join("allowed");
    let outside = base.join("outside");
    std::fs::create_dir_all(allowed.join("sub")).expect("a dir");
    std::fs::create_dir_all(&outside).expect("a dir");
    let secret = outside.join("secret.img");
    std::fs::write(&secret, SECRET).expect("written");
    std::fs::write(allowed.join("ok.img"), b"an allowed image").expect("written");
    std::os::unix::fs::symlink(&secret, allowed.join("escape.img")).expect("a symlink");
    HostFiles {
        _root: root,
        allowed,
        secret,
    }
}

/// A sim site whose config lists the allowed directory and the server's own directory (the
/// parent of its data_dir, which must stay out of reach anyway) in `file_sources`.
async fn server(files: &HostFiles) -> Server {
    Server::start_with(Setup {
        top_level_config: format!(
            "file_sources = [{:?}, \".\"]\n",
            files.allowed.display().to_string()
        ),
        ..Setup::default()
    })
    .await
}

/// POSTs raw JSON as `token`; answers (status, body).
async fn post(s: &Server, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/vmi/v1/{path}", s.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    assert!(status < 500, "POST {path} {body}: a {status}");
    (status, body)
}

fn initialize_body(disk: Value) -> Value {
    json!({"model": "BESTEFFORT", "count": 1,
           "descriptor": {"name": "attack", "cpu": 1, "memory_mb": 64, "disks": [disk]}})
}

/// If an initialize got through, the VEE is run, shut down and its disk downloaded: the
/// download must not hold the secret.
async fn no_secret_through(s: &Server, token: &str, body: &Value) {
    let Some(id) = body["vees"][0]["id"].as_str() else {
        return;
    };
    let client = veem_client::Client::new(&s.url, token).expect("a client");
    ctl(&client, A::Activate, &[id]).await;
    ctl(&client, A::Shutdown, &[id]).await;
    let out = s.dir.path().join(format!("{id}.download"));
    if client.download_disk(id, "vda", &out).await.is_ok() {
        let bytes = std::fs::read(&out).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET),
            "{id}: the disk download holds the host file"
        );
    }
}

#[tokio::test]
async fn every_file_form_is_refused_for_tenants_and_for_admins_outside_file_sources() {
    let files = host_files();
    let s = server(&files).await;
    let a = files.allowed.display().to_string();
    let secret = files.secret.display().to_string();
    let data = s.data_dir().canonicalize().expect("data_dir exists");
    let d = data.display().to_string();
    let long = format!("file:///{}", "a/".repeat(5000));
    let forms: Vec<String> = vec![
        "file:///etc/passwd".into(),
        "file://localhost/etc/passwd".into(),
        "file://otherhost/etc/passwd".into(),
        "FILE:///etc/passwd".into(),
        "File://LocalHost/etc/passwd".into(),
        "file:/etc/passwd".into(),
        "file:etc/passwd".into(),
        format!("file://{secret}"),
        format!("file://{a}/../outside/secret.img"),
        format!("file://{a}/%2e%2e/outside/secret.img"),
        format!("file://{a}/%2E%2E%2Foutside%2Fsecret.img"),
        format!("file://{a}/sub/../../outside/secret.img"),
        format!("file://{a}/escape.img"),
        format!("file://{a}/ok.img%00"),
        format!("file://{a}/ok.img\u{0}"),
        format!("file://{a}/missing.img"),
        format!("file://{a}/sub"),
        format!("file://{d}/veem.db"),
        format!("file://{d}/veem.db-wal"),
        format!("file://{d}/images/ops/tiny"),
        format!("file://{d}/../data/veem.db"),
        "file:///proc/self/environ".into(),
        "file:///dev/sda".into(),
        long,
    ];
    for (who, token) in [("sm-a", TOKEN_A), ("ops", TOKEN_OPS)] {
        for form in &forms {
            for clone in [true, false] {
                let disk = json!({"source": form, "clone": clone});
                let (status, body) =
                    post(&s, token, "vees/initialize", &initialize_body(disk)).await;
                no_secret_through(&s, token, &body).await;
                assert_eq!(
                    (status, body["code"].as_str()),
                    (403, Some("access_denied")),
                    "{who} {form:.80} clone {clone}: {body}"
                );
                let detail = body["detail"].as_str().unwrap_or_default();
                let named: String = form.chars().take(60).filter(|c| !c.is_control()).collect();
                assert!(
                    detail.contains("disks[0].source") && detail.contains(&named),
                    "{who} {form:.80}: {detail} names neither the field nor the path"
                );
            }
            // The same as a kernel or initrd of a direct kernel boot.
            for boot in [
                json!({"kernel": form}),
                json!({"kernel": "image:tiny", "initrd": form}),
            ] {
                let body = json!({"model": "BESTEFFORT", "count": 1, "descriptor":
                    {"cpu": 1, "memory_mb": 64, "boot": boot}});
                let (status, body) = post(&s, token, "vees/initialize", &body).await;
                assert_eq!(status, 403, "{who} boot {form:.80}: {body}");
            }
        }
    }
    // Nothing was defined by any of them.
    for client in [&s.a, &s.ops] {
        let listed = client.list_vees(&Default::default()).await.expect("a list");
        assert!(listed.vees.is_empty(), "{:?}", listed.vees);
    }
    // An OVF envelope's File hrefs are judged the same way.
    for href in [
        "file:///etc/passwd",
        "file:/etc/passwd",
        "FILE://localhost/etc/passwd",
    ] {
        let ovf = ovf_with_href(href);
        let response = reqwest::Client::new()
            .post(format!("{}/vmi/v1/vees/initialize?model=BESTEFFORT", s.url))
            .bearer_auth(TOKEN_A)
            .header("content-type", "application/ovf+xml")
            .body(ovf)
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 403, "OVF href {href}: {body}");
        assert!(body["detail"].as_str().unwrap_or_default().contains(href));
    }
    // An admin inside file_sources is allowed: the rules refuse what they should, not all.
    let allowed = format!("file://{a}/ok.img");
    let (status, body) = post(
        &s,
        TOKEN_OPS,
        "vees/initialize",
        &initialize_body(json!({"source": allowed})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

fn ovf_with_href(href: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="f" ovf:href="{href}"/></References>
  <DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f" ovf:capacity="1073741824"/></DiskSection>
  <VirtualSystem ovf:id="vm"><Info>vm</Info>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:ElementName>disk</rasd:ElementName><rasd:HostResource>ovf:/disk/d1</rasd:HostResource>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#
    )
}

#[tokio::test]
async fn disk_targets_cannot_leave_the_vee_directory() {
    let s = Server::start().await;
    for target in [
        "../../x",
        "../vee-00000001/disks/vda",
        "/etc/passwd",
        "a/b",
        "..",
        ".hidden",
        "vda\u{0}",
        "vda%2f..",
    ] {
        let disk = json!({"size_gb": 1, "target": target});
        let (status, body) = post(&s, TOKEN_A, "vees/initialize", &initialize_body(disk)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("malformed_descriptor")),
            "{target:?}: {body}"
        );
        assert!(body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("disks[0].target"));
    }
    // A download names a target too: one that is no disk of the VEE is simply not found.
    let id = init_one(&s.a, small("plain")).await;
    for target in ["..%2F..%2Fveem.db", "%2e%2e", "vda%00"] {
        let response = reqwest::Client::new()
            .get(format!("{}/vmi/v1/vees/{id}/disks/{target}", s.url))
            .bearer_auth(TOKEN_A)
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{target}: {status}");
    }
}

#[tokio::test]
async fn a_file_swapped_for_a_symlink_after_initialize_is_refused_at_deployment_and_download() {
    let files = host_files();
    let s = server(&files).await;
    let a = files.allowed.display().to_string();
    // Deployment: the file is replaced by a symlink out of the allowed directory.
    let swapped = files.allowed.join("swap.img");
    std::fs::write(&swapped, b"innocent").expect("written");
    let (status, body) = post(
        &s,
        TOKEN_OPS,
        "vees/initialize",
        &initialize_body(json!({"source": format!("file://{a}/swap.img")})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["vees"][0]["id"].as_str().expect("an id").to_owned();
    std::fs::remove_file(&swapped).expect("removed");
    std::os::unix::fs::symlink(&files.secret, &swapped).expect("a symlink");
    let r = ctl(&s.ops, A::Activate, &[&id]).await;
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].error, "deployment_failed", "{r:?}");
    assert!(r.failed[0].detail.contains("swap.img"), "{r:?}");
    assert_eq!(state_of(&s.ops, &id).await, VmiState::Defined);
    assert!(
        !s.data_dir().join("vees").join(&id).join("disks").exists()
            || !contains_secret(&s.data_dir().join("vees").join(&id)),
        "nothing of the secret reached the VEE's directory"
    );

    // Download of a disk used in place: judged again, so a swap after the run is refused.
    let in_place = files.allowed.join("in-place.img");
    std::fs::write(&in_place, b"in place").expect("written");
    let (status, body) = post(
        &s,
        TOKEN_OPS,
        "vees/initialize",
        &initialize_body(json!({"source": format!("file://{a}/in-place.img"), "clone": false})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["vees"][0]["id"].as_str().expect("an id").to_owned();
    ctl_ok(&s.ops, A::Activate, &[&id]).await;
    ctl_ok(&s.ops, A::Shutdown, &[&id]).await;
    std::fs::remove_file(&in_place).expect("removed");
    std::os::unix::fs::symlink(&files.secret, &in_place).expect("a symlink");
    let out = s.dir.path().join("in-place.download");
    let err = s
        .ops
        .download_disk(&id, "vda", &out)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some("access_denied"), "{err}");
    assert!(!contains_secret(&out));
}

/// Whether any file under `path` (or `path` itself) holds the secret.
fn contains_secret(path: &Path) -> bool {
    if path.is_dir() {
        return std::fs::read_dir(path)
            .map(|entries| entries.flatten().any(|e| contains_secret(&e.path())))
            .unwrap_or(false);
    }
    std::fs::read(path).is_ok_and(|bytes| bytes.windows(SECRET.len()).any(|w| w == SECRET))
}

/// An HTTP server of the test's own: `/<name>` answers the bytes registered under that name
/// (`/stream/<name>`: the same without a Content-Length; `/redirect/<host:port/path>`: a 302
/// to `http://<host:port/path>`), anything else 404; it counts GETs.
pub struct FileServer {
    pub base: String,
    pub gets: Arc<AtomicUsize>,
}

impl FileServer {
    pub async fn start(files: Vec<(&'static str, Vec<u8>)>) -> Self {
        Self::start_on("127.0.0.1", files).await
    }

    /// A server on one address of the loopback network (`127.0.0.2`, say).
    pub async fn start_on(address: &str, files: Vec<(&'static str, Vec<u8>)>) -> Self {
        let files: Arc<Vec<(&'static str, Vec<u8>)>> = Arc::new(files);
        let gets = Arc::new(AtomicUsize::new(0));
        let (f, g) = (files.clone(), gets.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (files, gets) = (f.clone(), g.clone());
            async move {
                use axum::response::IntoResponse;
                gets.fetch_add(1, Ordering::SeqCst);
                let path = uri.path().trim_start_matches('/');
                if let Some(target) = path.strip_prefix("redirect/") {
                    let to = format!("http://{target}");
                    return axum::response::Redirect::to(&to).into_response();
                }
                let (streamed, name) = match path.strip_prefix("stream/") {
                    Some(name) => (true, name),
                    None => (false, path),
                };
                let Some((_, bytes)) = files.iter().find(|(n, _)| *n == name) else {
                    return axum::http::StatusCode::NOT_FOUND.into_response();
                };
                if streamed {
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
                    axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
                } else {
                    bytes.clone().into_response()
                }
            }
        });
        let socket = tokio::net::TcpListener::bind((address, 0))
            .await
            .expect("a loopback port");
        let base = format!("http://{}", socket.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(socket, app).await });
        Self { base, gets }
    }
}

#[tokio::test]
async fn http_sources_are_fetched_once_per_host_and_failures_name_the_url() {
    let image = b"QFI\xfb a small image served over http".to_vec();
    let web = FileServer::start(vec![
        ("image.qcow2", image.clone()),
        ("big.img", vec![7u8; 64 * 1024]),
    ])
    .await;
    // One host, so both VEEs share its cache; a 32 KiB fetch limit.
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        top_level_config: format!("fetch_max_bytes = 32768\n{LOOPBACK_FETCHES}"),
        ..Setup::default()
    })
    .await;
    let url = format!("{}/image.qcow2", web.base);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = post(
            &s,
            TOKEN_A,
            "vees/initialize",
            &initialize_body(json!({"source": url})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["vees"][0]["id"].as_str().expect("an id").to_owned());
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r =
        s.a.update_state(&veem_api::UpdateStateRequest {
            order: veem_api::Order::Set,
            ids: ids.clone(),
            action: A::Activate,
            timeout_ms: None,
        })
        .await
        .expect("answered");
    assert!(r.failed.is_empty(), "{r:?}");
    for id in &refs {
        let disk = veem_layout::disk_path(&s.data_dir().join("vees").join(id), "vda");
        assert_eq!(std::fs::read(&disk).expect("the VEE's disk"), image);
    }
    assert_eq!(web.gets.load(Ordering::SeqCst), 1, "one download for both");

    let cases = [
        (format!("{}/missing.qcow2", web.base), "404"),
        (format!("{}/big.img", web.base), "larger than"),
        (format!("{}/stream/big.img", web.base), "larger than"),
        (
            "http://127.0.0.1:9/nothing-listens".to_owned(),
            "127.0.0.1:9",
        ),
    ];
    for (url, why) in cases {
        let detail = activation_failure(&s, &url).await;
        assert!(
            detail.contains(&url) && detail.contains(why),
            "{url}: {detail} should name the URL and say {why}"
        );
    }
    // Nothing partial is left in the host's cache.
    let cache = s.data_dir().join("hosts").join("h1").join("cache");
    let names: Vec<String> = std::fs::read_dir(&cache)
        .expect("the cache")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// Initializes one VEE of `TOKEN_A` with a disk from `url`, activates it, and returns the
/// failure (which must be a `deployment_failed`) after checking the VEE went back to DEFINED.
async fn activation_failure(s: &Server, url: &str) -> String {
    let (status, body) = post(
        s,
        TOKEN_A,
        "vees/initialize",
        &initialize_body(json!({"source": url})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["vees"][0]["id"].as_str().expect("an id").to_owned();
    let r = ctl(&s.a, A::Activate, &[&id]).await;
    assert_eq!(r.failed.len(), 1, "{url}: {r:?}");
    let failed = &r.failed[0];
    assert_eq!(failed.error, "deployment_failed", "{url}: {failed:?}");
    let v = get(&s.a, &id).await;
    assert_eq!((v.state, v.host), (VmiState::Defined, None));
    failed.detail.clone()
}

#[tokio::test]
async fn hosts_never_fetch_from_loopback_private_or_link_local_addresses_unless_allowed() {
    // A secret only the host can reach: a server on its loopback.
    let inside = FileServer::start(vec![("secret", SECRET.to_vec())]).await;
    let port = inside.base.rsplit(':').next().expect("a port").to_owned();
    // A server on 127.0.0.2, the one network this site allows, that redirects inside.
    let allowed = FileServer::start_on("127.0.0.2", vec![("ok.img", b"fine".to_vec())]).await;
    let s = Server::start_with(Setup {
        hosts: vec![("h1", 8, 16384, "")],
        top_level_config: "fetch_allow = [\"127.0.0.2/32\"]\n".into(),
        ..Setup::default()
    })
    .await;
    let refused = [
        (
            format!("{}/secret", inside.base),
            "127.0.0.1 is not a public address",
        ),
        (
            format!("http://localhost:{port}/secret"),
            "localhost resolves to",
        ),
        (
            format!("http://[::1]:{port}/secret"),
            "::1 is not a public address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/secret"),
            "is not a public address",
        ),
        (
            format!("http://2130706433:{port}/secret"),
            "127.0.0.1 is not a public address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is not a public address",
        ),
        (
            "https://10.0.0.1/image.qcow2".to_owned(),
            "10.0.0.1 is not a public address",
        ),
        (
            "http://0.0.0.0:{port}/secret".replace("{port}", &port),
            "0.0.0.0 is not a public address",
        ),
        (
            format!("{}/redirect/127.0.0.1:{port}/secret", allowed.base),
            "a redirect to 127.0.0.1",
        ),
    ];
    for (url, why) in refused {
        let detail = activation_failure(&s, &url).await;
        assert!(detail.contains(why), "{url}: {detail} should say {why}");
    }
    assert_eq!(
        inside.gets.load(Ordering::SeqCst),
        0,
        "nothing reached the inside server"
    );
    // The allowed network is fetched from.
    let (status, body) = post(
        &s,
        TOKEN_A,
        "vees/initialize",
        &initialize_body(json!({"source": format!("{}/ok.img", allowed.base)})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["vees"][0]["id"].as_str().expect("an id").to_owned();
    let r = ctl(&s.a, A::Activate, &[&id]).await;
    assert!(r.failed.is_empty(), "{r:?}");
    // Nothing of the refused fetches is in the host's cache, nothing secret anywhere.
    let cache = s.data_dir().join("hosts").join("h1").join("cache");
    assert_eq!(std::fs::read_dir(&cache).expect("the cache").count(), 1);
    assert!(
        !contains_secret(&s.data_dir()),
        "the secret reached the site's files"
    );
}

/// The command line of a QEMU process.
fn qemu_args(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test]
async fn a_vee_whose_disk_is_an_http_url_boots_on_qemu_with_a_read_only_cdrom_beside_it() {
    let Some(image) = guest_image() else {
        return;
    };
    let web = FileServer::start(vec![(
        "tiny.qcow2",
        std::fs::read(&image).expect("the guest image"),
    )])
    .await;
    let Some(s) = Server::start_with_guest(Setup {
        driver: Hypervisor::Qemu,
        top_level_config: LOOPBACK_FETCHES.into(),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    // A CD medium: any bytes will do to attach it; it is raw, as an ISO image is.
    let medium = vec![0x5a_u8; 1 << 20];
    s.a.push_image_bytes("medium", medium.clone())
        .await
        .expect("the medium uploads");
    let url = format!("{}/tiny.qcow2", web.base);
    let (status, body) = post(
        &s,
        TOKEN_A,
        "vees/initialize",
        &json!({"model": "BESTEFFORT", "count": 1, "descriptor": {
            "name": "from-http", "cpu": 1, "memory_mb": 256,
            "disks": [{"source": url, "size_gb": 2},
                      {"source": "image:medium", "kind": "cdrom", "target": "cd"}]}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["vees"][0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(body["vees"][0]["state"], "DEFINED");
    let view = get(&s.a, &id).await;
    assert_eq!(
        view.descriptor.disks[1].kind,
        veem_model::DiskKind::Cdrom,
        "the descriptor keeps the kind"
    );
    ctl_ok(&s.a, A::Activate, &[&id]).await;
    // It boots from its first disk (the boot order puts the CD second).
    wait_guest_ready(&s, Hypervisor::Qemu, &id).await;
    let vee_dir = s.data_dir().join("vees").join(&id);
    let pids = processes_mentioning(&vee_dir);
    assert_eq!(pids.len(), 1, "one QEMU");
    let args = qemu_args(pids[0]).join(" ");
    assert!(
        args.contains("media=cdrom") && args.contains("scsi-cd,bus=scsi-cd.0"),
        "{args}"
    );
    assert!(
        args.contains("id=drive-cd,format=raw,readonly=on"),
        "{args}"
    );
    assert!(
        !args.contains("/cache/"),
        "the VEE's disk is its own copy: {args}"
    );
    // The VEE's disk is a whole copy of the fetched image, with no backing file in the cache.
    let disk = veem_layout::disk_path(&vee_dir, "vda");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk)
        .output()
        .expect("qemu-img runs");
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img JSON");
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"], 2u64 << 30, "size_gb grows the copy");
    // The CD-ROM is never written and never downloadable as a disk of the VEE.
    ctl_ok(&s.a, A::Shutdown, &[&id]).await;
    let err =
        s.a.download_disk(&id, "cd", &s.dir.path().join("cd.out"))
            .await
            .expect_err("a cdrom is not downloaded");
    assert_eq!(err.status(), Some(400), "{err}");
    let out = s.dir.path().join("medium.back");
    s.a.image_data("medium", &out).await.expect("the medium");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        medium,
        "the medium is unchanged"
    );
}

#[tokio::test]
async fn an_https_source_whose_certificate_the_host_does_not_trust_fails_clearly() {
    // A TLS server with a self-signed certificate nobody trusts.
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a certificate");
    let cert = rustls::pki_types::CertificateDer::from(certified.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .expect("a key");
    // ring is the workspace's provider; rustls marks its constructor deprecated only for
    // lacking post-quantum key exchange, which a test server does not need.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = socket.local_addr().expect("bound").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let acceptor = acceptor.clone();
            // The handshake fails at the client's end; nothing more to serve.
            tokio::spawn(async move { acceptor.accept(stream).await.map(drop) });
        }
    });
    let s = Server::start_with(Setup {
        top_level_config: LOOPBACK_FETCHES.into(),
        ..Setup::default()
    })
    .await;
    let url = format!("https://127.0.0.1:{port}/tiny.qcow2");
    let detail = activation_failure(&s, &url).await;
    assert!(
        detail.contains(&url) && detail.to_lowercase().contains("certificate"),
        "{detail}"
    );
}
