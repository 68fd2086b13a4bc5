//! The artifact store (ADR 0037): firmware bytes kept under their SHA-256, behind one interface
//! ([`Store`]) so that a deployment chooses where they live. The digest is computed while the
//! bytes are written, a write becomes visible only whole (a crash leaves no half file under a
//! digest), and the same bytes stored twice are kept once.

mod fs;
mod s3;

use std::io;

use otaledger_domain::digest::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt};

pub use fs::FsStore;
pub use s3::{S3Settings, S3Store};

/// What the store refused or failed at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the artifact is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the bytes' SHA-256 is {actual}, not the {expected} the upload named")]
    Mismatch { expected: Sha256, actual: Sha256 },
    /// Reading the upload failed (the client went away, a broken stream).
    #[error("reading the upload: {0}")]
    Upload(#[source] io::Error),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn io(self, context: &'static str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io(self, context: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Io { context, source })
    }
}

/// An artifact the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: Sha256,
    pub length: u64,
    /// False when the store held these bytes already.
    pub created: bool,
}

/// A readable byte range of an artifact.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Where artifacts live. Implementations keep an artifact under its digest only once it is
/// whole, and never change it afterwards.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores what `body` yields, at most `max_bytes` of it; with `expected`, only when the
    /// bytes have that digest.
    async fn put(
        &self,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
        expected: Option<&Sha256>,
    ) -> Result<Stored>;

    /// The artifact's length, or `None` when the store does not hold it.
    async fn length(&self, artifact: &Sha256) -> Result<Option<u64>>;

    /// `length` bytes of the artifact from `start` (the caller knows they exist).
    async fn read(&self, artifact: &Sha256, start: u64, length: u64) -> Result<Reader>;

    /// Every artifact held, with its length, ordered by digest.
    async fn list(&self) -> Result<Vec<(Sha256, u64)>>;
}

/// How much of an upload is read at once: large enough that hashing and writing, not the
/// calls, bound the speed.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Reads `body` to its end into `sink`, hashing and counting as it goes; refuses past
/// `max_bytes` without reading further.
pub(crate) async fn copy_hashed<W>(
    body: &mut (dyn AsyncRead + Send + Unpin),
    sink: &mut W,
    max_bytes: u64,
) -> Result<(Sha256, u64)>
where
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut length: u64 = 0;
    loop {
        let n = body.read(&mut buf).await.map_err(StoreError::Upload)?;
        if n == 0 {
            break;
        }
        length += n as u64;
        if length > max_bytes {
            return Err(StoreError::TooLarge { max: max_bytes });
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n]).await.io("writing the artifact")?;
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let Ok(digest) = Sha256::try_from(hex) else {
        unreachable!("a SHA-256 printed as hexadecimal is a digest")
    };
    Ok((digest, length))
}
