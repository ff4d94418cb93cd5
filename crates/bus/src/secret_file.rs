//! The bus secret main generates on its first run: `RUN_DIR/bus.secret`.
//!
//! Like `scripts/ensure-mariadb.sh` does for the database, the first run of
//! main writes a random secret (32 bytes from the OS's CSPRNG, hex) to a file
//! only its owner can read (mode 0600, created exclusively so two mains racing
//! agree on one secret); main gives it to the broker and every app it starts,
//! and `sbctl` reads it from the same run folder. A file that other users can
//! read or write, or that another user owns, is refused rather than used: it
//! would not be a secret (or would be one its owner knows).

use rand::RngCore;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's name in the run folder.
pub const FILE_NAME: &str = "bus.secret";

/// Where the secret lives for a run folder.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(FILE_NAME)
}

/// Reads the secret, if the file exists (what `sbctl` does: root may read
/// the file of the user main runs as).
///
/// # Errors
///
/// When it cannot be read, is empty, or other users may read or write it.
pub fn read(run_dir: &Path) -> io::Result<Option<String>> {
    read_checked(run_dir, false)
}

/// [`read`], and the file must be ours (what main uses).
fn read_owned(run_dir: &Path) -> io::Result<Option<String>> {
    read_checked(run_dir, true)
}

fn read_checked(run_dir: &Path, must_own: bool) -> io::Result<Option<String>> {
    let path = path(run_dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    // The opened file's own metadata (fstat), so a symlink swapped in is
    // judged by what it points to.
    let meta = file.metadata()?;
    let mode = meta.permissions().mode();
    // Our user owns /proc/self; a file another user made (in a run folder
    // others can write to) would hold a secret they know.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if must_own && me.is_some_and(|me| me != meta.uid()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to another user (uid {}): not our secret; delete it to have a new one made",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is open to other users (mode {:o}): not a secret; chmod 600 it, or delete it to have a new one made",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    // A secret is 64 hex characters; anything much longer is not ours.
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Some(secret.to_owned()))
}

/// Reads the secret, making one first if there is none (creating the run
/// folder if need be).
///
/// # Errors
///
/// As [`read`], when another user owns the file, or when it cannot be
/// written.
pub fn load_or_create(run_dir: &Path) -> io::Result<String> {
    if let Some(secret) = read_owned(run_dir)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(run_dir)?;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path(run_dir))
    {
        Ok(mut file) => {
            file.write_all(format!("{secret}\n").as_bytes())?;
            file.sync_all()?;
            Ok(secret)
        }
        // Another main made it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_owned(run_dir)?.ok_or(e),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = load_or_create(&run).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(&run).unwrap(), first);
        assert_eq!(read(&run).unwrap(), Some(first));
        let mode = std::fs::metadata(path(&run)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(dir.path()).is_err());
        assert!(load_or_create(dir.path()).is_err());
    }

    #[test]
    fn a_symlink_is_never_followed_when_making_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, path(dir.path())).unwrap();
        // Dangling: reading finds nothing, making one refuses to write through it.
        assert!(load_or_create(dir.path()).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn none_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }
}
