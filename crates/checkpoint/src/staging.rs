//! Writing an output directory atomically: everything goes into a temporary sibling directory that
//! is renamed onto the final path only once complete; an existing output is kept unless forced.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::CheckpointError;

/// A temporary directory next to the final output; removed on drop unless published.
#[derive(Debug)]
pub(crate) struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    force: bool,
    published: bool,
}

fn sibling(out: &Path, tag: &str) -> Result<PathBuf, CheckpointError> {
    let name = out
        .file_name()
        .ok_or_else(|| CheckpointError::Output {
            path: out.to_path_buf(),
            message: "the output path has no final component".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let parent = out.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}-{nanos:09}", std::process::id())))
}

impl Staging {
    /// Refuses an existing `out` unless `force`, then creates the temporary directory.
    pub(crate) fn new(out: &Path, force: bool) -> Result<Self, CheckpointError> {
        if !force && out.symlink_metadata().is_ok() {
            return Err(CheckpointError::Exists {
                path: out.to_path_buf(),
            });
        }
        if out.is_file() {
            return Err(CheckpointError::Output {
                path: out.to_path_buf(),
                message: "exists and is a file, not a checkpoint directory".into(),
            });
        }
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| CheckpointError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let tmp = sibling(out, "tmp")?;
        std::fs::create_dir(&tmp).map_err(|source| CheckpointError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            force,
            published: false,
        })
    }

    /// The temporary directory to write into.
    pub(crate) fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary directory onto the output. With `force`, an existing output is moved
    /// aside first and deleted only after the new one is in place.
    pub(crate) fn publish(mut self) -> Result<(), CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        if self.out.symlink_metadata().is_ok() {
            if !self.force {
                // Someone else created it while we were writing.
                return Err(CheckpointError::Exists {
                    path: self.out.clone(),
                });
            }
            let old = sibling(&self.out, "old")?;
            std::fs::rename(&self.out, &old).map_err(io(&self.out))?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
                // Put the previous output back; the new one stays in the temporary dir for removal.
                let _ = std::fs::rename(&old, &self.out);
                return Err(io(&self.out)(e));
            }
            self.published = true;
            if old.is_dir() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            } else {
                std::fs::remove_file(&old).map_err(io(&old))?;
            }
        } else {
            std::fs::rename(&self.tmp, &self.out).map_err(io(&self.out))?;
            self.published = true;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
