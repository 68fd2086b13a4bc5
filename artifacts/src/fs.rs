//! The local filesystem store, the default: `<root>/sha256/<2 digits>/<digest>`, written to
//! `<root>/incoming/` first and renamed into place once whole and synced, so a crash leaves at
//! most a part file in `incoming/` (removed at the next start once it is an hour old: another
//! instance may still be writing a newer one).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use otaledger_domain::digest::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use crate::{copy_hashed, IoContext, Reader, Result, Store, StoreError, Stored};

/// Part files older than this are a crashed upload's.
const STALE_PART: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

/// Removes a part file unless it was renamed into place.
struct PartFile(Option<PathBuf>);

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: a leftover is removed at the next start.
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FsStore {
    /// A store under `root`, created when missing; removes stale part files.
    ///
    /// # Errors
    /// When the directories cannot be created or read.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["incoming", "sha256"] {
            tokio::fs::create_dir_all(root.join(dir))
                .await
                .io("creating the artifact store's directories")?;
        }
        let mut parts = tokio::fs::read_dir(root.join("incoming"))
            .await
            .io("reading the artifact store's incoming directory")?;
        while let Some(entry) = parts.next_entry().await.io("reading incoming/")? {
            let stale = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_PART);
            if stale {
                tracing::info!(path = %entry.path().display(), "removing a crashed upload's part file");
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(FsStore { root })
    }

    fn path(&self, artifact: &Sha256) -> PathBuf {
        let hex = artifact.as_str();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(|e| StoreError::Io {
            context: "syncing the artifact's directory",
            source: std::io::Error::other(e),
        })?
        .io("syncing the artifact's directory")
}

#[async_trait::async_trait]
impl Store for FsStore {
    async fn put(
        &self,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
        expected: Option<&Sha256>,
    ) -> Result<Stored> {
        let part = self
            .root
            .join("incoming")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let mut file = tokio::fs::File::create(&part)
            .await
            .io("creating the upload's part file")?;
        let mut guard = PartFile(Some(part.clone()));
        let (sha256, length) = copy_hashed(body, &mut file, max_bytes).await?;
        if let Some(expected) = expected {
            if *expected != sha256 {
                return Err(StoreError::Mismatch {
                    expected: expected.clone(),
                    actual: sha256,
                });
            }
        }
        file.sync_all().await.io("syncing the upload")?;
        drop(file);
        let dest = self.path(&sha256);
        if tokio::fs::try_exists(&dest)
            .await
            .io("looking for the artifact")?
        {
            return Ok(Stored {
                sha256,
                length,
                created: false,
            });
        }
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .io("creating the artifact's directory")?;
        // Atomic: readers see no file or the whole one. Two uploads of the same bytes at once
        // both rename; the second replaces the first with the same bytes.
        tokio::fs::rename(&part, &dest)
            .await
            .io("moving the upload into place")?;
        guard.0 = None;
        sync_dir(&dir).await?;
        Ok(Stored {
            sha256,
            length,
            created: true,
        })
    }

    async fn length(&self, artifact: &Sha256) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.path(artifact)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                context: "reading the artifact's length",
                source,
            }),
        }
    }

    async fn read(&self, artifact: &Sha256, start: u64, length: u64) -> Result<Reader> {
        let mut file = tokio::fs::File::open(self.path(artifact))
            .await
            .io("opening the artifact")?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .io("seeking in the artifact")?;
        }
        Ok(Box::new(file.take(length)))
    }

    async fn list(&self) -> Result<Vec<(Sha256, u64)>> {
        let mut found = Vec::new();
        let mut prefixes = tokio::fs::read_dir(self.root.join("sha256"))
            .await
            .io("listing the artifact store")?;
        while let Some(prefix) = prefixes.next_entry().await.io("listing the store")? {
            let Ok(mut files) = tokio::fs::read_dir(prefix.path()).await else {
                continue;
            };
            while let Some(file) = files.next_entry().await.io("listing the store")? {
                let name = file.file_name();
                let Some(digest) = name.to_str().and_then(|n| Sha256::try_from(n).ok()) else {
                    continue;
                };
                if let Ok(m) = file.metadata().await {
                    found.push((digest, m.len()));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (FsStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("otaledger-store-{}", uuid::Uuid::new_v4()));
        (FsStore::open(&root).await.unwrap(), root)
    }

    async fn read_all(s: &FsStore, d: &Sha256, start: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.read(d, start, len)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    fn parts(root: &Path) -> usize {
        std::fs::read_dir(root.join("incoming")).unwrap().count()
    }

    #[tokio::test]
    async fn stores_by_digest_once_and_reads_back_ranges() {
        let (s, root) = store().await;
        let bytes = b"firmware image 1.2.3".to_vec();
        let first = s.put(&mut &bytes[..], 1000, None).await.unwrap();
        // sha256("firmware image 1.2.3"), by `sha256sum`.
        assert_eq!(
            first.sha256.as_str(),
            "c3bb23f6831674d0000e74e7e7e7be8054c20bfc7b0b36a666cc667462810ed0"
        );
        assert_eq!((first.length, first.created), (20, true));
        let again = s
            .put(&mut &bytes[..], 1000, Some(&first.sha256))
            .await
            .unwrap();
        assert_eq!(
            (again.sha256.clone(), again.created),
            (first.sha256.clone(), false)
        );
        assert_eq!(s.length(&first.sha256).await.unwrap(), Some(20));
        assert_eq!(read_all(&s, &first.sha256, 0, 20).await, bytes);
        assert_eq!(read_all(&s, &first.sha256, 9, 5).await, b"image");
        assert_eq!(s.list().await.unwrap(), vec![(first.sha256.clone(), 20)]);
        assert_eq!(parts(&root), 0, "no part file left behind");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn too_large_or_mismatched_uploads_leave_nothing() {
        let (s, root) = store().await;
        let bytes = vec![7u8; 1001];
        assert!(matches!(
            s.put(&mut &bytes[..], 1000, None).await,
            Err(StoreError::TooLarge { max: 1000 })
        ));
        // Exactly the limit is accepted.
        assert!(s.put(&mut &bytes[..1000], 1000, None).await.is_ok());
        let wrong = Sha256::try_from("0".repeat(64)).unwrap();
        assert!(matches!(
            s.put(&mut &bytes[..10], 1000, Some(&wrong)).await,
            Err(StoreError::Mismatch { .. })
        ));
        assert_eq!(s.list().await.unwrap().len(), 1, "only the whole upload");
        assert_eq!(parts(&root), 0);
        assert_eq!(s.length(&wrong).await.unwrap(), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn a_crashed_uploads_old_part_file_is_removed_at_open() {
        let (_, root) = store().await;
        let old = root.join("incoming/old.part");
        let fresh = root.join("incoming/fresh.part");
        std::fs::write(&old, b"half").unwrap();
        std::fs::write(&fresh, b"half").unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        let s = FsStore::open(&root).await.unwrap();
        assert!(!old.exists(), "an hour-old part file is a crash's");
        assert!(
            fresh.exists(),
            "a recent one may be another instance's upload"
        );
        assert!(s.list().await.unwrap().is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }
}
