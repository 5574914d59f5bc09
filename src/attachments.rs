//! Chat attachments: type detection from the content (never from the file name or the client's
//! Content-Type), and storage behind a small trait ([`AttachmentStore`]); the default stores files on
//! disk under `<data dir>/attachments/`.
//!
//! Accepted: images (JPEG, PNG, GIF, WebP, BMP), videos (MP4, WebM, QuickTime, Matroska, AVI) and
//! documents (PDF, Office and OpenDocument files, RTF, plain UTF-8 text). Anything else is refused with
//! 415. Files are served back to the two participants only, as downloads with `nosniff`.

use std::path::PathBuf;

use futures_util::future::BoxFuture;

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

/// Where attachment bytes live. Keys are opaque to callers; they are never shown to clients.
pub trait AttachmentStore: Send + Sync {
    fn put(&self, bytes: Vec<u8>, file_type: FileType) -> BoxFuture<'_, std::io::Result<String>>;
    fn get(&self, key: &str) -> BoxFuture<'_, std::io::Result<Option<Vec<u8>>>>;
}

/// Files on disk, one per attachment, named by a random UUID.
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    pub fn new(data_dir: &std::path::Path) -> Self {
        DiskStore {
            dir: data_dir.join("attachments"),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        // Keys are ours (`<uuid>.<ext>`); refuse anything else rather than touch other paths.
        let ok = key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && !key.contains("..");
        ok.then(|| self.dir.join(key))
    }
}

impl AttachmentStore for DiskStore {
    fn put(&self, bytes: Vec<u8>, file_type: FileType) -> BoxFuture<'_, std::io::Result<String>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(&self.dir).await?;
            let key = format!("{}.{}", uuid::Uuid::new_v4().simple(), file_type.ext);
            let tmp = self.dir.join(format!(".{key}.part"));
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, self.dir.join(&key)).await?;
            Ok(key)
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, std::io::Result<Option<Vec<u8>>>> {
        let path = self.path(key);
        Box::pin(async move {
            let Some(path) = path else { return Ok(None) };
            match tokio::fs::read(path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
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
        assert!(store.path("0123abcd.pdf").is_some());
    }
}
