//! Model files mapped into memory: the weights are read where the file lies, and the
//! pages an import has converted are handed back, so that a model's weights are held
//! once (as IR tensors) instead of twice (file buffer and tensors).

use crate::error::{OnnxError, Result};
use memmap2::Mmap;
use prost::bytes::Bytes;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// What tells that a file's content changed after it was mapped: a file written in place
/// changes under a private mapping, and a model's weights would change with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// A model file mapped read-only and private.
///
/// A file replaced by another (renamed over it) leaves this mapping on the old one. One
/// written in place is refused by [`MappedFile::check_unchanged`] before each import; one
/// truncated during an import ends the process (SIGBUS), as with any mapped file.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
    file: File,
    path: PathBuf,
    stamp: Stamp,
}

/// Lets a [`Bytes`] keep the mapping alive.
struct Owner(Arc<MappedFile>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

impl MappedFile {
    /// Maps `path`, or `None` where it cannot be mapped (empty, or not a regular file:
    /// a pipe), for the caller to read it instead.
    pub(crate) fn open(path: &Path) -> Result<Option<Arc<MappedFile>>> {
        let io = |source| OnnxError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || meta.len() == 0 {
            return Ok(None);
        }
        let stamp = Stamp::of(&meta);
        // SAFETY: the mapping is private and read-only, and nothing here writes to it. A
        // file changed in place is caught by `check_unchanged` before each import.
        let map = match unsafe { Mmap::map(&file) } {
            Ok(map) => map,
            Err(_) => return Ok(None),
        };
        Ok(Some(Arc::new(MappedFile {
            map,
            file,
            path: path.to_path_buf(),
            stamp,
        })))
    }

    /// The whole file, as a buffer whose slices keep the mapping alive.
    pub(crate) fn bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(Owner(self.clone()))
    }

    /// Refuses a file written since it was mapped.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(|source| OnnxError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        let now = Stamp::of(&meta);
        if now != self.stamp {
            return Err(OnnxError::Model(format!(
                "'{}' was written since it was loaded ({} bytes then, {} now); load it again",
                self.path.display(),
                self.stamp.len,
                now.len
            )));
        }
        Ok(())
    }

    /// Hands back the whole pages under `part` (a slice of this mapping; anything else
    /// is ignored): they leave the process' resident memory, and a later read maps them
    /// again from the page cache with the same content.
    pub(crate) fn release(&self, part: &[u8]) {
        const PAGE: usize = 4096;
        let base = self.map.as_ptr() as usize;
        let start = part.as_ptr() as usize;
        if start < base || start + part.len() > base + self.map.len() {
            return;
        }
        let from = (start - base).div_ceil(PAGE) * PAGE;
        let to = (start - base + part.len()) / PAGE * PAGE;
        // Only Unix has the advice; elsewhere the pages stay until the model is dropped.
        #[cfg(unix)]
        if to > from {
            // SAFETY: the mapping is private, read-only and never written, so dropping
            // its pages loses nothing: the next read maps the file's bytes again. The
            // advice is only a hint; where the kernel refuses it, the pages stay.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
        #[cfg(not(unix))]
        let _ = (from, to);
    }
}
