//! Writing an output directory atomically: everything goes into a temporary sibling directory that
//! is renamed onto the final path only once complete; an existing output is kept unless forced.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::CheckpointError;

/// Temporary directories being written by this process, for [`remove_unfinished_outputs`].
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the temporary directories of outputs still being written: what a Ctrl-C handler
/// calls before exiting, since the process then ends without running destructors.
pub fn remove_unfinished_outputs() {
    for dir in live().drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Gives every file of `dir` the mode a plain `File::create` would (`0666` less the umask, read
/// off the directory's own `0777`-less-umask mode): some writers create theirs `0600`.
#[cfg(unix)]
fn even_file_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o666;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn even_file_modes(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

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
        live().push(tmp.clone());
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
        even_file_modes(&self.tmp).map_err(io(&self.tmp))?;
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
        live().retain(|d| d != &self.tmp);
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
