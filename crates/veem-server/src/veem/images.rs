//! The image store's part: which images exist, which image a VEE means by a name, and where
//! their bytes are. Whether VEEs still use an image is the core's question
//! ([`Veem::delete_image`](super::Veem::delete_image)): it needs the records too.
//!
//! Its lock is taken alone: no other part's lock is held while it is (see "The core's parts"
//! in ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use veem_model::{DiskSource, ImageName, ImageRecord, Principal, VeeId, VeeRecord};
use veem_store::Change;

use super::Veem;
use crate::auth::Caller;
use crate::committer::Committer;
use crate::error::CoreError;

pub struct Images {
    records: Mutex<BTreeMap<(Principal, ImageName), ImageRecord>>,
    committer: Committer,
    /// Principals with the admin role: their images are shared with all.
    admins: Vec<Principal>,
    /// `data_dir/images`: an image's bytes are at `<dir>/<owner>/<name>`.
    dir: PathBuf,
}

impl Images {
    pub(super) fn new(
        records: Vec<ImageRecord>,
        committer: Committer,
        admins: Vec<Principal>,
        data_dir: &Path,
    ) -> Self {
        Self {
            records: Mutex::new(
                records
                    .into_iter()
                    .map(|i| ((i.owner.clone(), i.name.clone()), i))
                    .collect(),
            ),
            committer,
            admins,
            dir: data_dir.join("images"),
        }
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<(Principal, ImageName), ImageRecord>> {
        self.records
            .lock()
            .expect("the images' lock is never held across a panic")
    }

    /// Where the bytes of `owner`'s image `name` are.
    pub fn path(&self, owner: &Principal, name: &ImageName) -> PathBuf {
        self.dir.join(owner.as_str()).join(name.as_str())
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

    /// Records an image whose bytes are already in place at [`Images::path`].
    pub async fn put(&self, record: ImageRecord) -> Result<(), CoreError> {
        self.committer
            .commit(vec![Change::PutImage(record.clone())])
            .await?;
        self.records()
            .insert((record.owner.clone(), record.name.clone()), record);
        Ok(())
    }

    /// Forgets an image and removes its bytes.
    pub(super) async fn remove(&self, image: &ImageRecord) -> Result<(), CoreError> {
        self.committer
            .commit(vec![Change::DeleteImage {
                owner: image.owner.clone(),
                name: image.name.clone(),
            }])
            .await?;
        self.records()
            .remove(&(image.owner.clone(), image.name.clone()));
        super::remove_file_if_present(&self.path(&image.owner, &image.name)).await
    }
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
