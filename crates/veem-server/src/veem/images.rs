//! The image store's part: which images exist, which image a VEE means by a name, and where
//! their bytes are. Whether VEEs still use an image is the core's question
//! ([`Veem::delete_image`](super::Veem::delete_image)): it needs the records too.
//!
//! Bytes are content-addressed: they lie once per digest in `data_dir/blobs/sha256/<hex>`,
//! however many images name them, and go when the last image naming them goes. With a shared
//! [`BlobStore`] (the front-ends of one PostgreSQL database), an image's bytes are in the
//! database before its record is committed, and a front-end that lacks a digest's file makes
//! it from the database on first need (see [`Images::local_blob`]).
//!
//! Its lock is taken alone: no other part's lock is held while it is (see "The core's parts"
//! in ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use veem_model::{DiskSource, ImageName, ImageRecord, Principal, VeeId, VeeRecord};
use veem_store::{BlobStore, Change, Store};

use super::Veem;
use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;

pub struct Images {
    records: Mutex<BTreeMap<(Principal, ImageName), ImageRecord>>,
    committer: Committer,
    /// Principals with the admin role: their images are shared with all.
    admins: Vec<Principal>,
    /// The site's `data_dir`: bytes lie in its `blobs/`.
    data_dir: PathBuf,
    /// Where the front-ends of one database keep image bytes for each other; `None` on a
    /// site of one front-end (SQLite).
    shared: Option<Arc<dyn BlobStore>>,
    /// Taken while a digest's file is placed and its record committed, and while a record is
    /// removed and its digest's bytes released, so a release never takes bytes an upload
    /// just placed for a record it is about to commit.
    blob_turns: tokio::sync::Mutex<()>,
}

impl Images {
    /// The part, with the records of `store`. Images stored before bytes were
    /// content-addressed (no digest; their bytes at `data_dir/images/<owner>/<name>`) are
    /// hashed and moved into `blobs/` here, once, and their records stored again with it.
    pub(super) fn new(
        records: Vec<ImageRecord>,
        committer: Committer,
        admins: Vec<Principal>,
        data_dir: &Path,
        store: &dyn Store,
        shared: Option<Arc<dyn BlobStore>>,
    ) -> Result<Self, CoreError> {
        let mut adopted = Vec::with_capacity(records.len());
        for record in records {
            adopted.push(if record.sha256.is_empty() {
                adopt_unhashed(record, data_dir, store, shared.as_deref())?
            } else {
                record
            });
        }
        Ok(Self {
            records: Mutex::new(
                adopted
                    .into_iter()
                    .map(|i| ((i.owner.clone(), i.name.clone()), i))
                    .collect(),
            ),
            committer,
            admins,
            data_dir: data_dir.to_owned(),
            shared,
            blob_turns: tokio::sync::Mutex::new(()),
        })
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<(Principal, ImageName), ImageRecord>> {
        self.records
            .lock()
            .expect("the images' lock is never held across a panic")
    }

    /// Where this front-end keeps (or will keep) the bytes of digest `sha256`.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        veem_layout::blob_path(&self.data_dir, sha256)
    }

    /// Where uploads stream in: beside the digests' files, so that moving one into place is
    /// a rename.
    pub fn upload_dir(&self) -> PathBuf {
        veem_layout::blobs_dir(&self.data_dir)
    }

    /// Whether some image names the bytes of digest `sha256`.
    pub fn names_digest(&self, sha256: &str) -> bool {
        self.records().values().any(|i| i.sha256 == sha256)
    }

    /// The file of this front-end that holds the bytes of digest `sha256`, made from the
    /// shared store first when this front-end lacks it (checked against the digest, whole or
    /// absent). `NotFound` when no image names the digest or no one has its bytes.
    pub async fn local_blob(&self, sha256: &str) -> Result<PathBuf, CoreError> {
        if !veem_layout::is_sha256_hex(sha256) || !self.names_digest(sha256) {
            return Err(CoreError::NotFound(format!(
                "no image has bytes of digest {sha256}"
            )));
        }
        let path = self.blob_path(sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let Some(shared) = self.shared.clone() else {
            return Err(CoreError::NotFound(format!(
                "the bytes of digest {sha256} are missing from {}",
                path.display()
            )));
        };
        let digest = sha256.to_owned();
        let target = path.clone();
        tokio::task::spawn_blocking(move || materialise(&*shared, &digest, &target))
            .await
            .map_err(|e| CoreError::internal("making an image's file", e))??;
        Ok(path)
    }

    /// Whether `owner`'s images are shared with every principal.
    pub(super) fn is_shared(&self, owner: &Principal) -> bool {
        self.admins.contains(owner)
    }

    /// `owner`'s own image `name`.
    pub(super) fn own(&self, owner: &Principal, name: &ImageName) -> Option<ImageRecord> {
        self.records().get(&(owner.clone(), name.clone())).cloned()
    }

    /// The image a VEE of `owner` means by `name`: its own, else an admin's shared one.
    pub fn resolve(&self, owner: &Principal, name: &ImageName) -> Option<ImageRecord> {
        let records = self.records();
        if let Some(i) = records.get(&(owner.clone(), name.clone())) {
            return Some(i.clone());
        }
        records
            .values()
            .find(|i| &i.name == name && self.is_shared(&i.owner))
            .cloned()
    }

    /// The images the caller may use: its own and the shared ones.
    pub fn list(&self, caller: &Caller) -> Vec<ImageRecord> {
        self.records()
            .values()
            .filter(|i| i.owner == caller.principal || self.is_shared(&i.owner))
            .cloned()
            .collect()
    }

    /// The image the caller means by `name`.
    pub fn get(&self, caller: &Caller, name: &ImageName) -> Result<ImageRecord, CoreError> {
        self.resolve(&caller.principal, name)
            .ok_or_else(|| CoreError::NotFound(format!("no image {name}")))
    }

    /// Records an image whose bytes were streamed to `upload` (a file on the file system of
    /// `data_dir`), hashing to `record.sha256`: the file becomes the digest's (or goes, when
    /// the digest has one already), the shared store gets the bytes, and then the record is
    /// committed. The bytes an image of that owner and name named before go when nothing else
    /// names them.
    pub(crate) async fn put(&self, record: ImageRecord, upload: &Path) -> Result<(), CoreError> {
        let path = self.blob_path(&record.sha256);
        let _turn = self.blob_turns.lock().await;
        let placed = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| CoreError::internal("creating the blobs directory", e))?;
            }
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                super::remove_file_if_present(upload).await
            } else {
                tokio::fs::rename(upload, &path)
                    .await
                    .map_err(|e| CoreError::internal("moving the image into place", e))
            }
        }
        .await;
        if let Err(e) = placed {
            let _ = super::remove_file_if_present(upload).await;
            return Err(e);
        }
        if let Err(e) = self.share(&record.sha256).await {
            self.release_unnamed(&record.sha256).await;
            return Err(e);
        }
        let replaced = self.own(&record.owner, &record.name);
        if let Err(e) = self
            .committer
            .commit(vec![Change::PutImage(record.clone())])
            .await
        {
            self.release_unnamed(&record.sha256).await;
            return Err(e);
        }
        self.records()
            .insert((record.owner.clone(), record.name.clone()), record.clone());
        // Another front-end may have released the digest between the share and the commit
        // (its last image of those bytes deleted): now that the record names it, put again.
        self.share(&record.sha256).await?;
        if let Some(replaced) = replaced.filter(|r| r.sha256 != record.sha256) {
            self.release_unnamed(&replaced.sha256).await;
        }
        Ok(())
    }

    /// Puts the digest's bytes into the shared store, if there is one (nothing when it has
    /// them already).
    async fn share(&self, sha256: &str) -> Result<(), CoreError> {
        let Some(shared) = self.shared.clone() else {
            return Ok(());
        };
        let digest = sha256.to_owned();
        let path = self.blob_path(sha256);
        tokio::task::spawn_blocking(move || share_file(&*shared, &digest, &path))
            .await
            .map_err(|e| CoreError::internal("storing an image's bytes", e))?
    }

    /// Removes the bytes of `sha256`, here and in the shared store, unless an image names
    /// them. Best effort: bytes left behind are only disk space, and a failure is logged.
    async fn release_unnamed(&self, sha256: &str) {
        if sha256.is_empty() || self.names_digest(sha256) {
            return;
        }
        if let Err(e) = super::remove_file_if_present(&self.blob_path(sha256)).await {
            tracing::warn!(sha256, error = %e, "cannot remove an image's bytes");
        }
        if let Some(shared) = self.shared.clone() {
            let digest = sha256.to_owned();
            let outcome =
                tokio::task::spawn_blocking(move || shared.delete_blob_if_unnamed(&digest)).await;
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sha256, error = %e, "cannot remove an image's shared bytes")
                }
                Err(e) => {
                    tracing::warn!(sha256, error = %e, "cannot remove an image's shared bytes")
                }
            }
        }
    }

    /// Forgets an image and removes its bytes when no other image names them.
    pub(super) async fn remove(&self, image: &ImageRecord) -> Result<(), CoreError> {
        let _turn = self.blob_turns.lock().await;
        self.committer
            .commit(vec![Change::DeleteImage {
                owner: image.owner.clone(),
                name: image.name.clone(),
            }])
            .await?;
        self.records()
            .remove(&(image.owner.clone(), image.name.clone()));
        self.release_unnamed(&image.sha256).await;
        Ok(())
    }
}

/// The SHA-256 of what `reader` gives, as 64 lowercase hex digits, and its length.
fn hash_reader(reader: &mut dyn Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(reader, &mut HashingWriter(&mut hasher))?;
    Ok((hex(&hasher.finalize()), size))
}

/// Lowercase hex digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that only hashes.
struct HashingWriter<'a>(&'a mut Sha256);

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer to a file that hashes what passes.
struct HashingFile<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes the shared store's bytes of `sha256` to `target`, whole or not at all: through a
/// temporary file beside it, checked against the digest, synced, then renamed.
fn materialise(shared: &dyn BlobStore, sha256: &str, target: &Path) -> Result<(), CoreError> {
    let dir = target
        .parent()
        .ok_or_else(|| CoreError::broken("a blob path has a parent"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| CoreError::internal("creating the blobs directory", e))?;
    let temp = dir.join(format!(
        ".from-store-{sha256}-{:016x}",
        rand::random::<u64>()
    ));
    let outcome = (|| {
        let mut file = std::fs::File::create(&temp)
            .map_err(|e| CoreError::internal("creating an image's file", e))?;
        let mut writer = HashingFile {
            file: &mut file,
            hasher: Sha256::new(),
        };
        if !shared.read_blob(sha256, &mut writer)? {
            return Err(CoreError::NotFound(format!(
                "the bytes of digest {sha256} are in no front-end's store"
            )));
        }
        let found = hex(&writer.hasher.finalize());
        if found != sha256 {
            return Err(CoreError::broken(format!(
                "the store's bytes of digest {sha256} hash to {found}"
            )));
        }
        file.sync_all()
            .map_err(|e| CoreError::internal("syncing an image's file", e))?;
        std::fs::rename(&temp, target)
            .map_err(|e| CoreError::internal("moving an image's file into place", e))
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    outcome
}

/// Puts the file at `path` (the bytes of `sha256`) into the shared store.
fn share_file(shared: &dyn BlobStore, sha256: &str, path: &Path) -> Result<(), CoreError> {
    if shared.has_blob(sha256)? {
        return Ok(());
    }
    let mut file =
        std::fs::File::open(path).map_err(|e| CoreError::internal("reading an image's file", e))?;
    shared.put_blob(sha256, &mut file)?;
    Ok(())
}

/// A record stored before images were content-addressed, with its bytes (at
/// `data_dir/images/<owner>/<name>`) hashed, moved into `blobs/` and shared, and the record
/// stored again with its digest. Bytes already gone leave the record as it was: deploying it
/// fails, naming the image, and deleting it works.
fn adopt_unhashed(
    mut record: ImageRecord,
    data_dir: &Path,
    store: &dyn Store,
    shared: Option<&dyn BlobStore>,
) -> Result<ImageRecord, CoreError> {
    let old = data_dir
        .join("images")
        .join(record.owner.as_str())
        .join(record.name.as_str());
    let mut file = match std::fs::File::open(&old) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(image = %record.name, owner = %record.owner, path = %old.display(), "an image stored before digests has no bytes");
            return Ok(record);
        }
        Err(e) => {
            return Err(CoreError::internal(
                "reading an image stored before digests",
                e,
            ))
        }
    };
    let (sha256, _) = hash_reader(&mut file)
        .map_err(|e| CoreError::internal("hashing an image stored before digests", e))?;
    let blob = veem_layout::blob_path(data_dir, &sha256);
    if let Some(dir) = blob.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CoreError::internal("creating the blobs directory", e))?;
    }
    if blob.exists() {
        std::fs::remove_file(&old)
            .map_err(|e| CoreError::internal("removing an image's old file", e))?;
    } else {
        std::fs::rename(&old, &blob)
            .map_err(|e| CoreError::internal("moving an image's bytes into blobs", e))?;
    }
    if let Some(shared) = shared {
        share_file(shared, &sha256, &blob)?;
    }
    record.sha256 = sha256;
    store.commit(&[Change::PutImage(record.clone())])?;
    tracing::info!(image = %record.name, owner = %record.owner, sha256 = %record.sha256, "an image stored before digests is now content-addressed");
    Ok(record)
}

impl Veem {
    /// The VEEs (not purged) that depend on `image`: those of its owner that name it, and for
    /// a shared image those of other principals that name it and have no image of that name of
    /// their own.
    fn image_users(&self, image: &ImageRecord) -> Vec<VeeId> {
        let names_it = |r: &VeeRecord| {
            r.descriptor
                .disks
                .iter()
                .any(|d| matches!(&d.source, Some(DiskSource::Image(n)) if n == &image.name))
        };
        let images = &self.inner.images;
        let shared = images.is_shared(&image.owner);
        // Owners are few: whose own image of that name shadows the shared one is asked once
        // each, with the records' lock released.
        let shadowing: Vec<Principal> = if shared {
            self.inner
                .records
                .owners_where(|r| r.owner != image.owner && names_it(r))
                .into_iter()
                .filter(|owner| images.own(owner, &image.name).is_some())
                .collect()
        } else {
            Vec::new()
        };
        self.inner.records.ids_where(|r| {
            names_it(r) && (r.owner == image.owner || (shared && !shadowing.contains(&r.owner)))
        })
    }

    /// Refuses to let an image go while VEEs depend on it; `advice` tells the caller what to do.
    fn ensure_unused(&self, image: &ImageRecord, advice: &str) -> Result<(), CoreError> {
        let users = self.image_users(image);
        if users.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = users.iter().take(5).map(VeeId::as_str).collect();
        Err(CoreError::InUse(format!(
            "image {} is used by {} VEE(s) ({}); {advice}",
            image.name,
            users.len(),
            shown.join(", ")
        )))
    }

    /// Refuses to replace an image VEEs depend on.
    pub fn check_image_replaceable(
        &self,
        owner: &Principal,
        name: &ImageName,
    ) -> Result<(), CoreError> {
        match self.inner.images.own(owner, name) {
            Some(existing) => self.ensure_unused(&existing, "upload under another name"),
            None => Ok(()),
        }
    }

    /// Deletes one of the caller's images once no VEE depends on it.
    pub async fn delete_image(&self, caller: &Caller, name: &ImageName) -> Result<(), CoreError> {
        let image = self
            .inner
            .images
            .own(&caller.principal, name)
            .ok_or_else(|| CoreError::NotFound(format!("no image {name} of yours")))?;
        self.ensure_unused(&image, "purge them first")?;
        self.inner.images.remove(&image).await
    }
}
