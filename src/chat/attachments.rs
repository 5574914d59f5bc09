//! Chat attachments: type detection from the content (never from the file name or the client's
//! Content-Type), and storage behind a small trait ([`AttachmentStore`]); the default stores files on
//! disk under `<data dir>/attachments/`.
//!
//! Accepted: images (JPEG, PNG, GIF, WebP, BMP), videos (MP4, WebM, QuickTime, Matroska, AVI) and
//! documents (PDF, Office and OpenDocument files, RTF, plain UTF-8 text). Anything else is refused with
//! 415. Files are served back to the two participants only, as downloads with `nosniff`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{StreamExt, future::BoxFuture, stream::BoxStream};
use sea_orm::DatabaseConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{io::ReaderStream, sync::CancellationToken};

use crate::db::{self, DbError};

/// One accepted type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub mime: &'static str,
    pub ext: &'static str,
    /// `image`, `video` or `document` (the message's `attachment_type`).
    pub kind: &'static str,
}

const ACCEPTED: &[FileType] = &[
    FileType {
        mime: "image/jpeg",
        ext: "jpg",
        kind: "image",
    },
    FileType {
        mime: "image/png",
        ext: "png",
        kind: "image",
    },
    FileType {
        mime: "image/gif",
        ext: "gif",
        kind: "image",
    },
    FileType {
        mime: "image/webp",
        ext: "webp",
        kind: "image",
    },
    FileType {
        mime: "image/bmp",
        ext: "bmp",
        kind: "image",
    },
    FileType {
        mime: "video/mp4",
        ext: "mp4",
        kind: "video",
    },
    FileType {
        mime: "video/webm",
        ext: "webm",
        kind: "video",
    },
    FileType {
        mime: "video/quicktime",
        ext: "mov",
        kind: "video",
    },
    FileType {
        mime: "video/x-matroska",
        ext: "mkv",
        kind: "video",
    },
    FileType {
        mime: "video/x-msvideo",
        ext: "avi",
        kind: "video",
    },
    FileType {
        mime: "application/pdf",
        ext: "pdf",
        kind: "document",
    },
    FileType {
        mime: "application/msword",
        ext: "doc",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ext: "docx",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.ms-excel",
        ext: "xls",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ext: "xlsx",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.ms-powerpoint",
        ext: "ppt",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ext: "pptx",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.oasis.opendocument.text",
        ext: "odt",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.oasis.opendocument.spreadsheet",
        ext: "ods",
        kind: "document",
    },
    FileType {
        mime: "application/vnd.oasis.opendocument.presentation",
        ext: "odp",
        kind: "document",
    },
    FileType {
        mime: "application/rtf",
        ext: "rtf",
        kind: "document",
    },
    FileType {
        mime: "text/plain; charset=utf-8",
        ext: "txt",
        kind: "document",
    },
];

/// The accepted type of `bytes`, judged by their content; `None` when refused.
pub fn detect(bytes: &[u8]) -> Option<FileType> {
    if bytes.is_empty() {
        return None;
    }
    if let Some(t) = infer::get(bytes) {
        return ACCEPTED.iter().find(|a| a.mime == t.mime_type()).copied();
    }
    // No magic number: plain text is a document if it is valid UTF-8 without control bytes.
    let text = std::str::from_utf8(bytes).ok()?;
    let plain = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'));
    plain.then(|| *ACCEPTED.last().expect("text/plain is listed"))
}

/// The type of a stored key (`<uuid>.<ext>`), for serving it back.
pub fn type_of_key(key: &str) -> Option<FileType> {
    let ext = key.rsplit_once('.')?.1;
    ACCEPTED.iter().find(|a| a.ext == ext).copied()
}

/// An attachment received with a send, held in memory until the send is accepted (nothing is written
/// before). It keeps its turn among the uploads in memory ([`upload_turn`]) until it is dropped.
pub struct Upload {
    pub bytes: Bytes,
    _turn: OwnedSemaphorePermit,
}

impl Upload {
    pub fn new(bytes: Bytes, turn: OwnedSemaphorePermit) -> Self {
        Upload { bytes, _turn: turn }
    }
}

/// Waits up to `timeout` for a turn to hold an upload in memory: at most `POSTBOX_MAX_UPLOADS` are held
/// at once, each up to the attachment limit. `None` when no turn comes.
pub async fn upload_turn(
    uploads: &Arc<Semaphore>,
    timeout: Duration,
) -> Option<OwnedSemaphorePermit> {
    match tokio::time::timeout(timeout, uploads.clone().acquire_owned()).await {
        Ok(Ok(turn)) => Some(turn),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// A stored file as a stream of bytes, with its length.
pub struct Download {
    pub len: u64,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Where attachment bytes live. Keys are opaque to callers; they are never shown to clients.
pub trait AttachmentStore: Send + Sync {
    /// Stores a file and returns its new key. A failed or interrupted write leaves at most a `.part`
    /// file, never a file under a key.
    fn put(&self, bytes: Bytes, file_type: FileType) -> BoxFuture<'_, std::io::Result<String>>;
    /// The file of `key`, streamed; `None` when there is none.
    fn open(&self, key: &str) -> BoxFuture<'_, std::io::Result<Option<Download>>>;
    /// Removes the file `name` (a key, or a `.part` name from [`AttachmentStore::stale`]); a missing
    /// file is no error.
    fn remove(&self, name: &str) -> BoxFuture<'_, std::io::Result<()>>;
    /// The files last written more than `age` ago: keys, and `.part` names (ending in `.part`). Other
    /// files in the store are never listed.
    fn stale(&self, age: Duration) -> BoxFuture<'_, std::io::Result<Vec<String>>>;
}

/// Files on disk, one per attachment, named by a random UUID.
pub struct DiskStore {
    dir: PathBuf,
}

/// The suffix of a file being written.
const PART: &str = ".part";

impl DiskStore {
    pub fn new(data_dir: &std::path::Path) -> Self {
        DiskStore {
            dir: data_dir.join("attachments"),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        // Keys are ours (`<uuid>.<ext>`); refuse anything else rather than touch other paths.
        is_key(key).then(|| self.dir.join(key))
    }
}

/// Whether `name` is a key this store makes: 32 hex digits, a dot, an accepted extension.
fn is_key(name: &str) -> bool {
    name.split_once('.').is_some_and(|(id, ext)| {
        id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && ACCEPTED.iter().any(|a| a.ext == ext)
    })
}

/// Whether `name` is the file a write of a key goes through (`.<key>.part`).
fn is_part(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(PART))
        .is_some_and(is_key)
}

impl AttachmentStore for DiskStore {
    fn put(&self, bytes: Bytes, file_type: FileType) -> BoxFuture<'_, std::io::Result<String>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(&self.dir).await?;
            let key = format!("{}.{}", uuid::Uuid::new_v4().simple(), file_type.ext);
            let tmp = self.dir.join(format!(".{key}{PART}"));
            let written = async {
                tokio::fs::write(&tmp, &bytes).await?;
                tokio::fs::rename(&tmp, self.dir.join(&key)).await
            }
            .await;
            if let Err(e) = written {
                // A full disk, most likely: do not keep the half file (the sweep would, later).
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            Ok(key)
        })
    }

    fn open(&self, key: &str) -> BoxFuture<'_, std::io::Result<Option<Download>>> {
        let path = self.path(key);
        Box::pin(async move {
            let Some(path) = path else { return Ok(None) };
            let file = match tokio::fs::File::open(path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let len = file.metadata().await?.len();
            Ok(Some(Download {
                len,
                body: ReaderStream::with_capacity(file, 64 * 1024).boxed(),
            }))
        })
    }

    fn remove(&self, name: &str) -> BoxFuture<'_, std::io::Result<()>> {
        let path = (is_key(name) || is_part(name)).then(|| self.dir.join(name));
        Box::pin(async move {
            let Some(path) = path else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not an attachment file name",
                ));
            };
            match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn stale(&self, age: Duration) -> BoxFuture<'_, std::io::Result<Vec<String>>> {
        Box::pin(async move {
            let mut dir = match tokio::fs::read_dir(&self.dir).await {
                Ok(dir) => dir,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let now = std::time::SystemTime::now();
            let mut names = Vec::new();
            while let Some(entry) = dir.next_entry().await? {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !(is_key(&name) || is_part(&name)) {
                    continue;
                }
                let modified = match entry.metadata().await.and_then(|m| m.modified()) {
                    Ok(t) => t,
                    // Removed meanwhile (a concurrent sweep), or no time to judge it by: leave it.
                    Err(_) => continue,
                };
                if now.duration_since(modified).is_ok_and(|d| d > age) {
                    names.push(name);
                }
            }
            Ok(names)
        })
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files older than the grace period that no message refers to, removed.
    pub removed: usize,
    /// Files older than the grace period that messages refer to, kept.
    pub kept: usize,
}

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("attachment store: {0}")]
    Store(#[from] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Removes the files no message refers to, among those older than `grace`: uploads of sends that
/// failed after their file was stored (the request went away, the process died) and `.part` files
/// of interrupted writes. A newer file may belong to a message being stored at this moment, so it is
/// left for a later sweep. Messages are never deleted, so a file found referenced stays for good.
pub async fn sweep(
    db: &DatabaseConnection,
    store: &dyn AttachmentStore,
    grace: Duration,
) -> Result<Swept, SweepError> {
    let (parts, keys): (Vec<String>, Vec<String>) = store
        .stale(grace)
        .await?
        .into_iter()
        .partition(|name| name.ends_with(PART));
    let mut swept = Swept::default();
    for chunk in keys.chunks(SWEEP_CHUNK) {
        let referenced = db::chat::referenced_attachments(db, chunk).await?;
        for key in chunk {
            if referenced.contains(key) {
                swept.kept += 1;
            } else {
                store.remove(key).await?;
                swept.removed += 1;
            }
        }
    }
    for part in &parts {
        store.remove(part).await?;
        swept.removed += 1;
    }
    Ok(swept)
}

/// Keys looked up in the database per query.
const SWEEP_CHUNK: usize = 500;

/// Sweeps the attachments folder every `every` (zero: never) until `shutdown`; see [`sweep`].
pub async fn run_sweeper(
    db: DatabaseConnection,
    store: Arc<dyn AttachmentStore>,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        tracing::info!("attachment sweep off (POSTBOX_ATTACHMENT_SWEEP=0)");
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the first sweep comes one interval after start
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let started = std::time::Instant::now();
        match sweep(&db, store.as_ref(), grace).await {
            Ok(Swept { removed: 0, kept }) => {
                tracing::debug!(kept, "attachment sweep: nothing to remove")
            }
            Ok(Swept { removed, kept }) => tracing::info!(
                removed,
                kept,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "attachment sweep removed files no message refers to"
            ),
            Err(e) => tracing::warn!(error = %e, "attachment sweep failed; the next one retries"),
        }
    }
    tracing::debug!("attachment sweep stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content_not_name() {
        let png = [
            0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R',
        ];
        assert_eq!(detect(&png).unwrap().kind, "image");
        assert_eq!(detect(b"%PDF-1.7\n%...").unwrap().ext, "pdf");
        assert_eq!(detect("héllo\nworld".as_bytes()).unwrap().kind, "document");
        assert!(
            detect(b"MZ\x90\x00\x03\x00\x00\x00").is_none(),
            "executables are refused"
        );
        assert!(detect(b"\x00\x01\x02binary").is_none());
        assert!(detect(b"").is_none());
        assert_eq!(type_of_key("abc.pdf").unwrap().mime, "application/pdf");
    }

    #[test]
    fn disk_store_refuses_foreign_keys() {
        let store = DiskStore::new(std::path::Path::new("/tmp"));
        assert!(store.path("../../etc/passwd").is_none());
        assert!(store.path("a/b.pdf").is_none());
        assert!(store.path("0123abcd.pdf").is_none(), "not a key it makes");
        let key = format!("{}.pdf", uuid::Uuid::new_v4().simple());
        assert!(store.path(&key).is_some());
        assert!(is_part(&format!(".{key}.part")));
        assert!(!is_key(&format!(".{key}.part")));
        assert!(!is_part(&format!(".{key}")));
        assert!(!is_key(&key.replace(".pdf", ".exe")));
    }
}
