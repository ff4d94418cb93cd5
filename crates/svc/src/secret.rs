//! Secrets from the environment or a file, never from the command line: a
//! process's arguments are readable by every local user (`ps`,
//! `/proc/PID/cmdline`) and are printed wherever a command line is shown
//! (`sbctl describe`, logs), while its environment is readable only by its own
//! user and root, and a file by whom its mode allows.

use std::path::Path;

/// A secret flag given on the command line: the message that refuses it.
pub fn refused_arg(flag: &str, var: &str, file_flag: &str) -> String {
    format!(
        "{flag} is refused: a secret on the command line is visible to every local user \
         (ps, /proc/PID/cmdline) and in sbctl describe; put it in the environment ({var}) \
         or in a file (mode 600) named by {file_flag} PATH"
    )
}

/// The secret in environment variable `var` (empty counts as unset), or in
/// the file at `file`: its content less one trailing newline.
///
/// # Errors
///
/// Both given (which one wins would be a guess), a file that cannot be read,
/// or an empty file.
pub fn from_env_or_file(var: &str, file: Option<&Path>) -> Result<Option<String>, String> {
    let from_env = std::env::var(var).ok().filter(|s| !s.is_empty());
    match (from_env, file) {
        (Some(_), Some(path)) => Err(format!(
            "both {var} and a secret file ({}) are set: give one",
            path.display()
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => read_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// The secret in the file at `path`, less one trailing newline (`echo` and
/// editors add one). A file that others can read is used, with a warning.
///
/// # Errors
///
/// A file that cannot be read, or that holds nothing.
pub fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    // A secret is short; a path to something endless (/dev/zero) must not
    // fill memory.
    const MAX: u64 = 64 * 1024;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_string(&mut text))
        .map_err(|e| format!("secret file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX {
        return Err(format!(
            "secret file {} is over {MAX} bytes",
            path.display()
        ));
    }
    let secret = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |s| s.strip_suffix('\r').unwrap_or(s));
    if secret.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the secret file can be read by other users: chmod 600 it"
            );
        }
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_less_its_newline_and_never_empty() {
        let dir = std::env::temp_dir().join(format!("sb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "abc\n").unwrap();
        assert_eq!(read_file(&file).unwrap(), "abc");
        std::fs::write(&file, "abc\r\n").unwrap();
        assert_eq!(read_file(&file).unwrap(), "abc");
        std::fs::write(&file, "a b\n\n").unwrap();
        assert_eq!(read_file(&file).unwrap(), "a b\n", "one newline only");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_file(&file).is_err());
        assert!(read_file(&dir.join("missing")).is_err());
        assert!(read_file(Path::new("/dev/zero")).is_err(), "endless");
        assert!(read_file(&dir).is_err(), "a folder");
        // No such variable in the test's environment: the file.
        let var = "SB_TEST_SECRET_NEVER_SET";
        std::fs::write(&file, "k").unwrap();
        assert_eq!(
            from_env_or_file(var, Some(&file)).unwrap().as_deref(),
            Some("k")
        );
        assert_eq!(from_env_or_file(var, None).unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
