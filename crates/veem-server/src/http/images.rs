//! The image store: `GET /images`, `GET|PUT|DELETE /images/{name}` (an image is uploaded as a
//! streamed body) and `GET /images/{name}/data`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use veem_api::{ImageList, ImageView};
use veem_model::{ImageName, ImageRecord};

use super::common::{stream_file, AppState};
use super::problem::ApiResult;
use crate::auth::Caller;
use crate::error::CoreError;

/// An image name the caller wrote: text that cannot be a name names no image.
fn image_name(text: &str) -> Result<ImageName, CoreError> {
    ImageName::new(text).map_err(|e| CoreError::NotFound(e.to_string()))
}

fn view(image: &ImageRecord) -> ImageView {
    ImageView {
        name: image.name.to_string(),
        format: image.format.as_str().to_owned(),
        size_bytes: image.size_bytes,
        owner: image.owner.to_string(),
        created_ms: image.created_ms,
        sha256: (!image.sha256.is_empty()).then(|| image.sha256.clone()),
    }
}

pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> Json<ImageList> {
    let images = state.veem.images().list(&caller);
    Json(ImageList {
        images: images.iter().map(view).collect(),
    })
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageView>> {
    Ok(Json(view(
        &state.veem.images().get(&caller, &image_name(&name)?)?,
    )))
}

pub(super) async fn data(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let images = state.veem.images();
    let image = images.get(&caller, &image_name(&name)?)?;
    stream_file(&images.local_blob(&image.sha256).await?, false).await
}

pub(super) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let stream = body.into_data_stream();
    let record = crate::images::put_image(&state.veem, &caller, &name, stream).await?;
    Ok((StatusCode::CREATED, Json(view(&record))))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .veem
        .delete_image(&caller, &image_name(&name)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
