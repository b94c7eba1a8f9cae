//! The image store's bytes: content-addressed (once per digest, gone with the last image that
//! names them), images stored before digests hashed once at start, and, on PostgreSQL, bytes
//! that outlive the front-end that took them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use veem_model::{
    ControlAction, DiskKind, DiskSource, DiskSpec, ImageFormat, ImageName, ImageRecord, VmiState,
};
use veem_placement::Policy;
use veem_server::auth::Caller;
use veem_server::Veem;
use veem_store::{BlobStore, Change, PgStore, SqliteStore, Store};

use crate::support::{host, ops, small, Site};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Uploads `bytes` as `caller`'s image `name`, in a few chunks as a body streams in.
async fn upload(veem: &Veem, caller: &Caller, name: &str, bytes: &[u8]) -> ImageRecord {
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = bytes
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    veem_server::images::put_image(veem, caller, name, futures::stream::iter(chunks))
        .await
        .expect("the image uploads")
}

/// The files of `data_dir/blobs/sha256`, by name (uploads in flight start with a dot).
fn blob_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(veem_layout::blobs_dir(data_dir))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn image_disk(name: &str) -> DiskSpec {
    DiskSpec {
        source: Some(DiskSource::Image(
            ImageName::new(name).expect("a valid image name"),
        )),
        size_gb: None,
        target: Some("vda".into()),
        clone: true,
        kind: DiskKind::Disk,
    }
}

#[tokio::test]
async fn two_images_of_the_same_bytes_share_them_until_neither_names_them() {
    let site = Site::open(vec![]).await;
    let data_dir = site.dir.path().canonicalize().expect("resolves");
    let bytes = b"the same bytes under two names".repeat(100);
    let digest = sha256_hex(&bytes);
    let first = upload(&site.veem, &ops(), "first", &bytes).await;
    let second = upload(&site.veem, &ops(), "second", &bytes).await;
    assert_eq!(first.sha256, digest);
    assert_eq!(second.sha256, digest);
    assert_eq!(first.size_bytes, bytes.len() as u64);
    assert_eq!(blob_files(&data_dir), vec![digest.clone()], "stored once");
    let blob = veem_layout::blob_path(&data_dir, &digest);
    assert_eq!(std::fs::read(&blob).expect("the blob"), bytes);
    // The digest is stored with the record.
    let stored = site.store.load().expect("load").images;
    assert!(stored.iter().all(|i| i.sha256 == digest), "{stored:?}");

    // Replacing `second` with other bytes keeps the shared ones (`first` names them).
    let other = b"other bytes".to_vec();
    let replaced = upload(&site.veem, &ops(), "second", &other).await;
    let mut expected = vec![digest.clone(), sha256_hex(&other)];
    expected.sort();
    assert_eq!(blob_files(&data_dir), expected);

    let name = |n: &str| ImageName::new(n).expect("a valid name");
    site.veem
        .delete_image(&ops(), &name("second"))
        .await
        .expect("delete second");
    assert_eq!(
        blob_files(&data_dir),
        vec![digest.clone()],
        "the bytes only `second` named went with it ({})",
        replaced.sha256
    );
    site.veem
        .delete_image(&ops(), &name("first"))
        .await
        .expect("delete first");
    assert!(blob_files(&data_dir).is_empty(), "no image names them");
}

#[tokio::test]
async fn an_image_stored_before_digests_is_hashed_once_at_start_and_deploys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().canonicalize().expect("resolves");
    let bytes = b"an image of an older veem".to_vec();
    let old = ImageRecord {
        owner: ops().principal,
        name: ImageName::new("old").expect("a valid name"),
        format: ImageFormat::Raw,
        size_bytes: bytes.len() as u64,
        created_ms: 1,
        sha256: String::new(),
    };
    {
        let store = SqliteStore::open(&data_dir.join("veem.db")).expect("open");
        store
            .commit(&[Change::PutImage(old.clone())])
            .expect("an old record");
    }
    // Where an older veem kept its bytes.
    let old_path = data_dir.join("images").join("ops").join("old");
    std::fs::create_dir_all(old_path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&old_path, &bytes).expect("old bytes");

    let site = Site::open_in(dir, Policy::Pack, vec![host("h1", 4, 4096)]).await;
    let digest = sha256_hex(&bytes);
    let image = site
        .veem
        .images()
        .get(&ops(), &old.name)
        .expect("the image is there");
    assert_eq!(image.sha256, digest);
    assert_eq!(blob_files(&data_dir), vec![digest.clone()]);
    assert!(!old_path.exists(), "moved into blobs/, not copied");
    let stored = site.store.load().expect("load").images;
    assert_eq!(stored[0].sha256, digest, "stored again with its digest");

    // And it deploys: a sim disk is a byte copy of its source.
    let mut d = small("from-old");
    d.disks = vec![image_disk("old")];
    let id = site.define_one(d).await;
    site.act_ok(ControlAction::Activate, std::slice::from_ref(&id))
        .await;
    let disk = veem_layout::disk_path(&site.veem.vee_dir(&id), "vda");
    assert_eq!(std::fs::read(disk).expect("the VEE's disk"), bytes);
}

// ----- PostgreSQL: several front-ends ----------------------------------------------------------

use veem_store::test_postgres::{fresh_database, server as pg_server};

/// `GET /vmi/v1/agents/blobs/{digest}` at `veem`'s router, served on loopback, with an
/// admin's token (what agents hold): the bytes.
async fn serve_blob(veem: &Veem, digest: &str) -> Vec<u8> {
    let config = veem_server::Config::parse(
        "listen = \"127.0.0.1:1\"\ndata_dir = \"unused\"\n\
         [[principal]]\nname = \"ops\"\ntoken = \"ops-token\"\nadmin = true\n",
    )
    .expect("a config");
    let state = veem_server::http::AppState::new(veem.clone(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("an address");
    let serving = tokio::spawn(veem_server::http::listen::serve(
        listener,
        veem_server::http::router(state),
        None,
        std::future::pending::<()>(),
    ));
    let response = reqwest::Client::new()
        .get(format!("http://{address}/vmi/v1/agents/blobs/{digest}"))
        .bearer_auth("ops-token")
        .send()
        .await
        .expect("the front-end answers");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.expect("the bytes").to_vec();
    serving.abort();
    bytes
}

/// A front-end on the database at `url`, its data_dir `dir`, its image bytes shared there.
async fn front_end(
    url: &str,
    dir: tempfile::TempDir,
    hosts: Vec<crate::support::HostSpec>,
) -> Site {
    let pg = Arc::new(PgStore::open(url).expect("open the database"));
    let store: Arc<dyn Store> = pg.clone();
    let blobs: Arc<dyn BlobStore> = pg;
    Site::open_on(
        dir,
        store,
        Some(blobs),
        Policy::Pack,
        hosts,
        Duration::from_secs(60),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_taken_by_one_front_end_deploys_from_another_after_the_first_lost_its_disk() {
    let Some(server) = pg_server() else { return };
    let url = fresh_database(server);
    // Several chunks of the database's, the last one short.
    let bytes: Vec<u8> = (0..(2 * veem_store::BLOB_CHUNK_BYTES + 999))
        .map(|i| (i % 253) as u8)
        .collect();
    let digest = sha256_hex(&bytes);

    let dir_a = tempfile::tempdir().expect("a temporary directory");
    let path_a: PathBuf = dir_a.path().to_owned();
    let a = front_end(&url, dir_a, vec![]).await;
    let image = upload(&a.veem, &ops(), "tiny", &bytes).await;
    assert_eq!(image.sha256, digest);
    // Front-end A's machine is gone, with its data_dir (the temporary directory goes with it).
    drop(a);
    assert!(!path_a.exists(), "A's data_dir is deleted");

    let dir_b = tempfile::tempdir().expect("a temporary directory");
    let data_b = dir_b.path().canonicalize().expect("resolves");
    assert!(blob_files(&data_b).is_empty(), "B starts empty");
    let b = front_end(&url, dir_b, vec![host("h1", 4, 4096)]).await;

    // A remote agent's fetch at B: B makes the digest's file from the database and serves it.
    let served = serve_blob(&b.veem, &digest).await;
    assert!(served == bytes, "B serves the bytes A took");
    assert_eq!(blob_files(&data_b), vec![digest.clone()]);
    std::fs::remove_file(veem_layout::blob_path(&data_b, &digest)).expect("B forgets them again");

    let mut d = small("from-a");
    d.disks = vec![image_disk("tiny")];
    let id = b.define_one(d).await;
    b.act_ok(ControlAction::Activate, std::slice::from_ref(&id))
        .await;
    b.wait_state(&id, VmiState::Active).await;
    // B made the digest's file from the database, whole and checked, and the VEE's disk is it.
    assert_eq!(blob_files(&data_b), vec![digest.clone()]);
    assert_eq!(
        std::fs::read(veem_layout::blob_path(&data_b, &digest)).expect("B's blob"),
        bytes
    );
    let disk = veem_layout::disk_path(&b.veem.vee_dir(&id), "vda");
    assert_eq!(std::fs::read(disk).expect("the VEE's disk"), bytes);

    // Deleting the image at B removes the bytes from the database too.
    b.act_ok(ControlAction::Destroy, std::slice::from_ref(&id))
        .await;
    b.veem.purge(&ops(), &id).await.expect("purged");
    b.veem
        .delete_image(&ops(), &ImageName::new("tiny").expect("a valid name"))
        .await
        .expect("deleted");
    let check = PgStore::open(&url).expect("open the database");
    assert!(
        !check.has_blob(&digest).expect("has"),
        "gone from the database"
    );
    assert!(blob_files(&data_b).is_empty(), "gone from B's data_dir");
}
