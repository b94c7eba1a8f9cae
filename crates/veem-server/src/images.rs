//! The image store's bytes: uploads are streamed to a temporary file beside their final place,
//! made durable, then renamed, so an image is either whole or absent, and never held in memory.

use std::path::PathBuf;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use veem_model::{ImageFormat, ImageName, ImageRecord};

use crate::auth::Caller;
use crate::error::CoreError;
use crate::veem::{now_ms, Veem};

/// Streams an upload into the image store and records it.
pub async fn put_image<S, E>(
    veem: &Veem,
    caller: &Caller,
    name: &str,
    mut body: S,
) -> Result<ImageRecord, CoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let name = ImageName::new(name).map_err(|e| CoreError::malformed("name", e.to_string()))?;
    veem.check_image_replaceable(&caller.principal, &name)?;
    let path = veem.images().path(&caller.principal, &name);
    let dir = path
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| CoreError::broken("an image path has a parent"))?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| CoreError::internal("creating the image directory", e))?;
    let tmp = dir.join(format!(".upload-{}-{}", name, now_ms()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| CoreError::internal("creating the image file", e))?;
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(4);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                CoreError::malformed("body", format!("the upload was cut short: {e}"))
            })?;
            if head.len() < 4 {
                let take = (4 - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| CoreError::internal("writing the image", e))?;
        }
        if size == 0 {
            return Err(CoreError::malformed("body", "an image cannot be empty"));
        }
        file.sync_all()
            .await
            .map_err(|e| CoreError::internal("syncing the image", e))?;
        Ok((size, ImageFormat::sniff(&head)))
    }
    .await;
    let (size, format) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    // Checked again: a VEE may have started to use the name while the bytes streamed in.
    if let Err(e) = veem.check_image_replaceable(&caller.principal, &name) {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| CoreError::internal("moving the image into place", e))?;
    let record = ImageRecord {
        owner: caller.principal.clone(),
        name,
        format,
        size_bytes: size,
        created_ms: now_ms(),
    };
    veem.images().put(record.clone()).await?;
    Ok(record)
}
