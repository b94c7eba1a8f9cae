//! The image store's records: which image a VEE means, and which VEEs hold an image.

use veem_model::{DiskSource, ImageName, ImageRecord, Principal, VeeId};
use veem_store::Change;

use super::*;
use crate::auth::Caller;
use crate::error::CoreError;

impl Veem {
    /// The image a VEE of `owner` means by `name`: its own, else an admin's shared one.
    pub fn resolve_image(&self, owner: &Principal, name: &ImageName) -> Option<ImageRecord> {
        let state = self.state();
        if let Some(i) = state.images.get(&(owner.clone(), name.clone())) {
            return Some(i.clone());
        }
        state
            .images
            .values()
            .find(|i| &i.name == name && self.is_shared_owner(&i.owner))
            .cloned()
    }

    fn is_shared_owner(&self, owner: &Principal) -> bool {
        self.inner.config.admins.contains(owner)
    }

    pub fn list_images(&self, caller: &Caller) -> Vec<ImageRecord> {
        self.state()
            .images
            .values()
            .filter(|i| i.owner == caller.principal || self.is_shared_owner(&i.owner))
            .cloned()
            .collect()
    }

    pub fn get_image(&self, caller: &Caller, name: &str) -> Result<ImageRecord, CoreError> {
        let name = ImageName::new(name).map_err(|e| CoreError::NotFound(e.to_string()))?;
        self.resolve_image(&caller.principal, &name)
            .ok_or_else(|| CoreError::NotFound(format!("no image {name}")))
    }

    /// Whether a VEE that is not purged depends on the image `(owner, name)`.
    fn image_users(&self, state: &State, image: &ImageRecord) -> Vec<VeeId> {
        let shared = self.is_shared_owner(&image.owner);
        state
            .vees
            .values()
            .map(|s| &s.record)
            .filter(|r| {
                r.descriptor.disks.iter().any(|d| match &d.source {
                    Some(DiskSource::Image(n)) if n == &image.name => {
                        r.owner == image.owner
                            || (shared
                                && !state
                                    .images
                                    .contains_key(&(r.owner.clone(), image.name.clone())))
                    }
                    _ => false,
                })
            })
            .map(|r| r.id.clone())
            .collect()
    }

    /// Records an image whose bytes are already in place at `image_path(owner, name)`.
    pub async fn put_image_record(&self, record: ImageRecord) -> Result<(), CoreError> {
        self.inner
            .committer
            .commit(vec![Change::PutImage(record.clone())])
            .await?;
        self.state()
            .images
            .insert((record.owner.clone(), record.name.clone()), record);
        Ok(())
    }

    /// Refuses to replace an image VEEs depend on.
    pub fn check_image_replaceable(
        &self,
        owner: &Principal,
        name: &ImageName,
    ) -> Result<(), CoreError> {
        let state = self.state();
        match state.images.get(&(owner.clone(), name.clone())) {
            Some(existing) => self.ensure_unused(&state, existing, "upload under another name"),
            None => Ok(()),
        }
    }

    /// Refuses to let an image go while VEEs depend on it; `advice` tells the caller what to do.
    fn ensure_unused(
        &self,
        state: &State,
        image: &ImageRecord,
        advice: &str,
    ) -> Result<(), CoreError> {
        let users = self.image_users(state, image);
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

    pub async fn delete_image(&self, caller: &Caller, name: &str) -> Result<(), CoreError> {
        let name = ImageName::new(name).map_err(|e| CoreError::NotFound(e.to_string()))?;
        let image = {
            let state = self.state();
            let key = (caller.principal.clone(), name.clone());
            let image = state
                .images
                .get(&key)
                .cloned()
                .ok_or_else(|| CoreError::NotFound(format!("no image {name} of yours")))?;
            self.ensure_unused(&state, &image, "purge them first")?;
            image
        };
        self.inner
            .committer
            .commit(vec![Change::DeleteImage {
                owner: image.owner.clone(),
                name: image.name.clone(),
            }])
            .await?;
        self.state()
            .images
            .remove(&(image.owner.clone(), image.name.clone()));
        remove_file_if_present(&self.image_path(&image.owner, &image.name)).await
    }
}
