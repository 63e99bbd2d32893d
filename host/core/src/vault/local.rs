//! The local-directory store: a vault on a disk or a mounted file system.
//!
//! An object store acknowledges a write only once it is durable, and Strata
//! relies on that: a WAL segment is reported archived, and a backup
//! committed, only after its objects are stored. A local directory gives the
//! same promise only with `fsync`, so every write here flushes the file and
//! its directory entry before it returns.
//!
//! Flushing a large object only when it completes would write all of it
//! while the backup waits. Multipart uploads therefore write each chunk into
//! a staging file at its offset and ask the kernel to start writing it back
//! at once; when the upload completes, the final `fsync` finds little left
//! to write, then the staging file is renamed into place and the directory
//! flushed. Everything else (reads, listings, single puts, deletes) is
//! [`LocalFileSystem`]'s, with its `fsync` option on.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

const STORE: &str = "LocalVault";

/// A local directory as a durable object store; see the module docs.
#[derive(Debug)]
pub struct DurableLocalStore {
    inner: LocalFileSystem,
}

impl DurableLocalStore {
    /// The store rooted at the existing directory `root`.
    pub fn new(root: &std::path::Path) -> object_store::Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root)?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(DurableLocalStore { inner })
    }
}

impl DurableLocalStore {
    /// A failure of [`LocalFileSystem`] to write `location` that an OS error
    /// caused, as one naming the file (`writing <path>: No space left on
    /// device`): its own errors name no file, or only a directory, so a
    /// full or read-only vault disk would get no hint naming the file
    /// system to free or remount. Other errors (already exists, not found)
    /// are kept as they are: callers act on their kind.
    fn naming_the_file(&self, location: &Path, err: object_store::Error) -> object_store::Error {
        if !matches!(err, object_store::Error::Generic { .. }) {
            return err;
        }
        let Some(code) = os_error_in(&err) else {
            return err;
        };
        match self.inner.path_to_filesystem(location) {
            Ok(path) => generic(crate::Error::io_doing_at(
                "writing",
                path,
                std::io::Error::from_raw_os_error(code),
            )),
            Err(_) => err,
        }
    }
}

/// The OS error code at the root of `err`, if an `io::Error` carries one.
fn os_error_in(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(error) = current {
        if let Some(code) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}

impl fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocalStore({})", self.inner)
    }
}

fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(source),
    }
}

/// Runs file work on a blocking thread; an I/O failure names `path` and
/// keeps its `io::Error` (so a full disk is not mistaken for a network
/// blip when it is converted).
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(generic)?
        .map_err(|e| generic(crate::Error::io_at(path, e)))
}

/// A name for a staging file next to `dest`. [`LocalFileSystem`] does not
/// list files whose name ends in `#` and digits, so an unfinished upload is
/// never seen as an object.
fn staging_path(dest: &std::path::Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = dest.as_os_str().to_owned();
    name.push(format!("#{}{n:06}", std::process::id()));
    PathBuf::from(name)
}

/// Whether `name` is a staging file's: `staging_path`'s and
/// [`LocalFileSystem`]'s own (for single puts) both end in `#` and digits.
pub fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(object, digits)| {
        !object.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner
            .put_opts(location, payload, opts)
            .await
            .map_err(|err| self.naming_the_file(location, err))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let dest = self.inner.path_to_filesystem(location)?;
        let staging = staging_path(&dest);
        let file = {
            let (dest, staging) = (dest.clone(), staging.clone());
            blocking(staging.clone(), move || {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                File::create_new(&staging)
            })
            .await?
        };
        Ok(Box::new(DurableUpload {
            file: Some(Arc::new(file)),
            offset: 0,
            staging,
            dest,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner
            .copy_opts(from, to, options)
            .await
            .map_err(|err| self.naming_the_file(to, err))
    }
}

/// A multipart upload into a staging file; see the module docs.
#[derive(Debug)]
struct DurableUpload {
    /// `None` once completed or aborted.
    file: Option<Arc<File>>,
    offset: u64,
    staging: PathBuf,
    dest: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.offset;
        let len = data.content_length() as u64;
        self.offset += len;
        let Some(file) = self.file.clone() else {
            return Box::pin(futures::future::ready(Err(object_store::Error::Generic {
                store: STORE,
                source: "the upload was already completed or aborted".into(),
            })));
        };
        Box::pin(blocking(self.staging.clone(), move || {
            let mut at = offset;
            for piece in data.iter() {
                file.write_all_at(piece, at)?;
                at += piece.len() as u64;
            }
            // Start writing the chunk back now; the fsync at completion
            // then has little left to do. Advisory, so errors are ignored.
            let _ = rustix::fs::fadvise(
                &*file,
                offset,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            );
            Ok(())
        }))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let file = self
            .file
            .take()
            .ok_or_else(|| object_store::Error::Generic {
                store: STORE,
                source: "the upload was already completed or aborted".into(),
            })?;
        let (staging, dest) = (self.staging.clone(), self.dest.clone());
        blocking(dest.clone(), move || {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&staging, &dest)?;
            if let Some(parent) = dest.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            })
        })
        .await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.file = None;
        let staging = self.staging.clone();
        blocking(staging.clone(), move || {
            match std::fs::remove_file(&staging) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    /// A single put that the OS refuses names the file it was writing, and
    /// keeps the OS error (a full or read-only vault disk then gets the
    /// hint naming its file system); a put-if-absent that loses is still
    /// `AlreadyExists`.
    #[tokio::test]
    async fn a_failed_put_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(dir.path()).unwrap();
        // A file where a directory is needed: the OS refuses the write.
        std::fs::write(dir.path().join("blocker"), b"x").unwrap();
        let err = store
            .put(&Path::from("blocker/segment.0"), vec![1u8; 10].into())
            .await
            .unwrap_err();
        let err = crate::Error::from(err);
        let file = dir.path().join("blocker/segment.0");
        let text = err.to_string();
        assert!(
            text.contains(&format!("writing {}: ", file.display())) && text.contains("(os error "),
            "{text}"
        );
        assert!(!err.is_retryable(), "{err:?}");

        let key = Path::from("manifests/a.json");
        store.put(&key, vec![1u8].into()).await.unwrap();
        let again = store
            .put_opts(&key, vec![2u8].into(), object_store::PutMode::Create.into())
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
    }

    /// A multipart upload is invisible until it completes, then reads back
    /// whole; an aborted one leaves no file behind.
    #[tokio::test]
    async fn multipart_uploads_appear_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(dir.path()).unwrap();
        let path = Path::from("data/a/segment.0");
        let mut upload = store
            .put_multipart_opts(&path, PutMultipartOptions::default())
            .await
            .unwrap();
        let first = vec![1u8; 3 << 20];
        let second = vec![2u8; 1 << 20];
        // Parts may finish out of order.
        let a = upload.put_part(first.clone().into());
        let b = upload.put_part(second.clone().into());
        b.await.unwrap();
        a.await.unwrap();
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        assert!(matches!(
            store.get(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        upload.complete().await.unwrap();
        let back = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(back.len(), first.len() + second.len());
        assert!(back[..first.len()] == first[..] && back[first.len()..] == second[..]);

        let other = Path::from("data/a/segment.1");
        let mut upload = store
            .put_multipart_opts(&other, PutMultipartOptions::default())
            .await
            .unwrap();
        upload.put_part(vec![3u8; 1000].into()).await.unwrap();
        upload.abort().await.unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join("data/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["segment.0".to_owned()]);
    }
}
