//! Image bytes kept in the database, so that every front-end sharing it can serve them: the
//! [`BlobStore`] trait. A blob is named by the SHA-256 of its bytes and stored in chunks, so
//! neither a put nor a read holds a whole image in memory. SQLite needs none: a SQLite site has
//! one front-end, which keeps image bytes in its own `data_dir`.

use std::io::{Read, Write};

use crate::StoreError;

/// The size of the chunks a blob is stored in.
pub const BLOB_CHUNK_BYTES: usize = 1 << 20;

/// Image bytes by digest, shared by the front-ends of one database. Synchronous like
/// [`Store`](crate::Store): the server calls it from `spawn_blocking`.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the bytes `reader` gives under `sha256` (64 lowercase hex digits), whole or not
    /// at all: when they do not hash to `sha256`, nothing is stored and the answer is
    /// [`StoreError::DigestMismatch`]. Storing a digest already stored changes nothing. The
    /// number of bytes stored.
    fn put_blob(&self, sha256: &str, reader: &mut dyn Read) -> Result<u64, StoreError>;

    /// Whether the blob `sha256` is stored (then whole).
    fn has_blob(&self, sha256: &str) -> Result<bool, StoreError>;

    /// Writes the blob's bytes to `out`, a chunk at a time; `false` (and nothing written) when
    /// it is not stored. The reader checks the digest of what it got: a blob deleted while it
    /// is read ends short.
    fn read_blob(&self, sha256: &str, out: &mut dyn Write) -> Result<bool, StoreError>;

    /// Deletes the blob `sha256` unless a stored image still names it (another front-end may
    /// have named the same bytes since): whether it was deleted. Deleting a blob not stored is
    /// `Ok(false)`.
    fn delete_blob_if_unnamed(&self, sha256: &str) -> Result<bool, StoreError>;
}
