//! Per-instance log files with rotation by size, and reading them back.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An append-only log file rotated past `max_bytes` (`NAME.log` → `NAME.log.1` →
/// … → `NAME.log.<keep>`, the oldest dropped).
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Option<(File, u64)>>,
}

impl LogFile {
    /// Opens (creating) `dir/NAME.log`.
    ///
    /// # Errors
    ///
    /// When the folder or file cannot be created; the error names the path.
    pub fn open(dir: &Path, name: &str, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| naming(&path, e))?;
        let size = file.metadata().map_err(|e| naming(&path, e))?.len();
        Ok(Self {
            path,
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            file: Mutex::new(Some((file, size))),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes; rotates first when the file is full. Errors are swallowed
    /// (logging must never take the supervisor down) but reported once per file.
    pub fn write(&self, bytes: &[u8]) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_some_and(|(_, size)| *size + bytes.len() as u64 > self.max_bytes)
        {
            *guard = None;
            self.rotate();
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => *guard = Some((f, 0)),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen log")
                }
            }
        }
        if let Some((file, size)) = guard.as_mut() {
            if file.write_all(bytes).is_ok() {
                *size += bytes.len() as u64;
            }
        }
    }

    fn rotate(&self) {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
    }
}

/// `e` with the path it is about: "Permission denied" alone does not say
/// which folder to fix.
fn naming(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Creates `dir` and its missing parents as 0700: logs hold what the apps
/// print, for the service's user alone, whatever the umask (a container's
/// is 0022).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| naming(dir, e))
}

/// Makes sure main can write in `dir` (creating it): creates and removes a
/// probe file, so that a folder main cannot write to is named before anything
/// starts, not found later by a child's log.
///
/// # Errors
///
/// When the folder cannot be created or written to; the error names it.
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let probe = dir.join(format!(".write-probe.{}", std::process::id()));
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&probe)
        .map_err(|e| naming(dir, e))?;
    std::fs::remove_file(&probe).map_err(|e| naming(dir, e))
}

/// The last `lines` lines of a file and its size (the offset to follow from).
///
/// # Errors
///
/// When the file cannot be read.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    // Read at most the last 256 KiB: enough for any sensible `lines`.
    let start = size.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    Ok((all[from..].iter().map(|s| (*s).to_owned()).collect(), size))
}

/// What was written since `offset` (at most 64 KiB) and the new offset; after a
/// rotation (the file is shorter than `offset`) it starts from the beginning.
///
/// # Errors
///
/// When the file cannot be read.
pub fn since(path: &Path, offset: u64) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let from = if size < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; (size - from).min(64 * 1024) as usize];
    file.read_exact(&mut buf)?;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        from + buf.len() as u64,
    ))
}

/// What a process wrote last since `from` (a byte offset in its log): its
/// error lines if it wrote any, else its last line; at most 300 characters.
/// `None` when it wrote nothing.
pub fn last_words(path: &Path, from: u64) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    // A rotated log is shorter than the offset: read its end instead.
    let start = if from <= size { from } else { 0 }.max(size.saturating_sub(16 * 1024));
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    std::io::Read::take(file, 16 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("ERROR") || l.contains("error:") || l.contains("Error"))
        .collect();
    let words = if errors.is_empty() {
        lines.last()?.to_string()
    } else {
        errors[errors.len().saturating_sub(2)..].join(" / ")
    };
    Some(words.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "app", 1024, 2).unwrap();
        for i in 0..100 {
            log.write(format!("line {i:03} {}\n", "x".repeat(40)).as_bytes());
        }
        assert!(log.path().metadata().unwrap().len() <= 1024);
        assert!(dir.path().join("app.log.1").exists());
        assert!(dir.path().join("app.log.2").exists());
        assert!(!dir.path().join("app.log.3").exists(), "keeps 2");
        let (lines, size) = tail(log.path(), 3).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("line 099"));
        log.write(b"fresh\n");
        let (text, next) = since(log.path(), size).unwrap();
        assert_eq!(text, "fresh\n");
        assert_eq!(since(log.path(), next).unwrap().0, "");
    }

    #[test]
    fn last_words_prefer_errors_and_read_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "old ERROR before\n").unwrap();
        let from = std::fs::metadata(&path).unwrap().len();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("starting\nERROR receive: 127.0.0.1:3000 is in use\nbye\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            last_words(&path, from).as_deref(),
            Some("ERROR receive: 127.0.0.1:3000 is in use")
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_words(&path, 0), None);
    }
}
