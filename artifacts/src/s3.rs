//! The artifact store in an S3-compatible bucket (ADR 0037), through `object_store`, the
//! Apache Arrow project's client (with `ring`, already built for TLS, rather than aws-lc).
//!
//! An upload goes to `incoming/<uuid>.part` as a multipart upload, hashed as it streams; only a
//! whole upload with the right digest is copied to `sha256/<xx>/<digest>` (S3 makes an object
//! visible only once complete, so a reader sees the whole artifact or none) and the part is
//! deleted. A failed or refused upload is aborted; parts an instance died with are left to the
//! bucket's lifecycle rule for `incoming/`.

use std::sync::Arc;

use futures_util::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _};
use otaledger_domain::digest::Sha256;
use tokio::io::{AsyncRead, AsyncWriteExt as _};

use crate::{copy_hashed, Reader, Result, Store, StoreError, Stored};

/// Where the bucket is and how to reach it.
#[derive(Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Empty: AWS's endpoint for the region.
    pub endpoint: String,
    pub region: String,
    /// Prepended to every key (e.g. `otaledger/`).
    pub prefix: String,
    /// Empty: the usual AWS sources (environment, instance profile).
    pub access_key_id: String,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Artifacts in a bucket.
#[derive(Debug)]
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn failed(context: &'static str) -> impl FnOnce(object_store::Error) -> StoreError {
    move |e| StoreError::Io {
        context,
        source: std::io::Error::other(e),
    }
}

impl S3Store {
    /// A store over the bucket `s` names (nothing is contacted yet).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the settings do not make a client.
    pub fn new(s: &S3Settings) -> Result<Self> {
        // reqwest's TLS takes the process's provider: ring (another one installed first stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_allow_http(s.allow_http);
        if !s.endpoint.is_empty() {
            // A local S3-compatible server answers on a path, not on a bucket subdomain.
            b = b
                .with_endpoint(&s.endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !s.access_key_id.is_empty() {
            b = b.with_access_key_id(&s.access_key_id);
        }
        if let Some(secret) = &s.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        let store = b.build().map_err(failed("configuring the S3 client"))?;
        Ok(S3Store {
            store: Arc::new(store),
            prefix: s.prefix.clone(),
        })
    }

    fn key(&self, artifact: &Sha256) -> Key {
        let d = artifact.as_str();
        Key::from(format!("{}sha256/{}/{d}", self.prefix, &d[..2]))
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn put(
        &self,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
        expected: Option<&Sha256>,
    ) -> Result<Stored> {
        let part = Key::from(format!(
            "{}incoming/{}.part",
            self.prefix,
            uuid::Uuid::new_v4()
        ));
        let mut writer = BufWriter::new(Arc::clone(&self.store), part.clone());
        let copied = copy_hashed(body, &mut writer, max_bytes).await;
        let (sha256, length) = match copied {
            Ok(done) => done,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        if let Some(expected) = expected {
            if *expected != sha256 {
                let _ = writer.abort().await;
                return Err(StoreError::Mismatch {
                    expected: expected.clone(),
                    actual: sha256,
                });
            }
        }
        if let Err(source) = writer.shutdown().await {
            let _ = writer.abort().await;
            return Err(StoreError::Io {
                context: "completing the upload",
                source,
            });
        }
        let dest = self.key(&sha256);
        let created = match self.store.head(&dest).await {
            Ok(_) => Ok(false),
            Err(object_store::Error::NotFound { .. }) => self
                .store
                .copy(&part, &dest)
                .await
                .map(|()| true)
                .map_err(failed("moving the upload into place")),
            Err(e) => Err(failed("looking for the artifact")(e)),
        };
        // The part goes whether or not it was moved into place.
        if let Err(e) = self.store.delete(&part).await {
            tracing::warn!(error = %e, part = %part, "could not delete an upload's part");
        }
        let created = created?;
        Ok(Stored {
            sha256,
            length,
            created,
        })
    }

    async fn length(&self, artifact: &Sha256) -> Result<Option<u64>> {
        match self.store.head(&self.key(artifact)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed("reading the artifact's length")(e)),
        }
    }

    async fn read(&self, artifact: &Sha256, start: u64, length: u64) -> Result<Reader> {
        if length == 0 {
            return Ok(Box::new(tokio::io::empty()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + length)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.key(artifact), options)
            .await
            .map_err(failed("opening the artifact"))?;
        let stream = got.into_stream().map_err(std::io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    async fn list(&self) -> Result<Vec<(Sha256, u64)>> {
        let prefix = Key::from(format!("{}sha256", self.prefix));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(failed("listing the artifact store"))?;
        let mut found: Vec<(Sha256, u64)> = objects
            .into_iter()
            .filter_map(|m| {
                let digest = Sha256::try_from(m.location.filename()?).ok()?;
                Some((digest, m.size))
            })
            .collect();
        found.sort();
        Ok(found)
    }
}
