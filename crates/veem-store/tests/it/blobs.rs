//! Image bytes in PostgreSQL (`BlobStore`): whole or absent, by digest, and gone only when no
//! image names them.

use std::io::Cursor;

use sha2::{Digest, Sha256};
use veem_store::conformance::image;
use veem_store::{BlobStore, Change, PgStore, Store, StoreError, BLOB_CHUNK_BYTES};

use super::postgres::{fresh_database, server};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that span several chunks, the last one short, and differ from chunk to chunk.
fn several_chunks() -> Vec<u8> {
    (0..(2 * BLOB_CHUNK_BYTES + 12_345))
        .map(|i| (i % 251) as u8 ^ (i / BLOB_CHUNK_BYTES) as u8)
        .collect()
}

fn read(store: &PgStore, sha256: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    store
        .read_blob(sha256, &mut out)
        .expect("read a blob")
        .then_some(out)
}

#[test]
fn a_blob_is_put_read_and_deleted_by_digest() {
    let Some(server) = server() else { return };
    let url = fresh_database(server);
    let store = PgStore::open(&url).expect("open a PostgreSQL store");
    let bytes = several_chunks();
    let digest = sha256_hex(&bytes);
    assert!(!store.has_blob(&digest).expect("has"));
    assert_eq!(read(&store, &digest), None, "absent before its put");

    let size = store
        .put_blob(&digest, &mut Cursor::new(&bytes))
        .expect("put the blob");
    assert_eq!(size, bytes.len() as u64);
    assert!(store.has_blob(&digest).expect("has"));
    assert_eq!(read(&store, &digest).as_deref(), Some(&bytes[..]));
    // Again: nothing changes, and the reader is not even needed.
    let again = store
        .put_blob(&digest, &mut Cursor::new(Vec::new()))
        .expect("a second put of one digest");
    assert_eq!(again, bytes.len() as u64);
    assert_eq!(read(&store, &digest).as_deref(), Some(&bytes[..]));

    // Another front-end (another store on the same database) reads it too.
    let other = PgStore::open(&url).expect("open a second store");
    assert_eq!(read(&other, &digest).as_deref(), Some(&bytes[..]));

    // Named by an image: not deleted.
    let mut named = image("alice", "tiny", bytes.len() as u64);
    named.sha256 = digest.clone();
    store
        .commit(&[Change::PutImage(named.clone())])
        .expect("record the image");
    assert!(!store.delete_blob_if_unnamed(&digest).expect("delete"));
    assert!(store.has_blob(&digest).expect("has"), "still named");
    store
        .commit(&[Change::DeleteImage {
            owner: named.owner.clone(),
            name: named.name.clone(),
        }])
        .expect("forget the image");
    assert!(store.delete_blob_if_unnamed(&digest).expect("delete"));
    assert!(!store.has_blob(&digest).expect("has"));
    assert_eq!(read(&store, &digest), None);
    assert!(
        !store.delete_blob_if_unnamed(&digest).expect("delete again"),
        "nothing left to delete"
    );
}

#[test]
fn bytes_that_do_not_hash_to_the_digest_are_refused_and_leave_nothing() {
    let Some(server) = server() else { return };
    let store = PgStore::open(&fresh_database(server)).expect("open a PostgreSQL store");
    let bytes = several_chunks();
    let digest = sha256_hex(&bytes);
    let mut tampered = bytes.clone();
    tampered[BLOB_CHUNK_BYTES + 7] ^= 1;
    let error = store
        .put_blob(&digest, &mut Cursor::new(&tampered))
        .expect_err("the bytes do not hash to the name");
    match &error {
        StoreError::DigestMismatch { expected, found } => {
            assert_eq!(expected, &digest);
            assert_eq!(found, &sha256_hex(&tampered));
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.has_blob(&digest).expect("has"), "nothing stored");
    assert_eq!(read(&store, &digest), None);
    // The right bytes are taken afterwards.
    store
        .put_blob(&digest, &mut Cursor::new(&bytes))
        .expect("the right bytes");
    assert_eq!(read(&store, &digest).as_deref(), Some(&bytes[..]));
}
