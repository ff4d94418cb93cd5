//! `sbctl import-pm2 ecosystem.config.js`: a PM2 ecosystem file written as the
//! equivalent `ecosystem.toml`, and on stderr what could not be carried over.
//!
//! A PM2 file is JavaScript (`module.exports = {apps: [...]}`, often with
//! computed values: `path.join(__dirname, …)`, `process.env.X || …`,
//! `os.cpus().length`), so it is not parsed here: Node evaluates it, as PM2
//! itself does, and prints it as JSON ([`evaluate()`]). Only the conversion of
//! that JSON is ours ([`convert()`]), and the TOML is written by the `toml` crate,
//! so no name, path or env value can break out of its string (a newline, a
//! quote, `"]\n[[apps]]`: all stay data).
//!
//! What maps to what is in `docs/ecosystem-node.md`.
//!
//! # Layout
//!
//! - `evaluate`: Node's reading of the file, as JSON.
//! - `convert`: that JSON as `ecosystem.toml`, app by app, with the notes.
//! - `values`: PM2's values as main reads them (lists, env tables, sizes,
//!   durations).
//! - this file: [`run`], the command, and writing the file (mode 600).

mod convert;
mod evaluate;
#[cfg(test)]
mod tests;
mod values;

use anyhow::{bail, Context};
use std::path::Path;

use convert::convert;
use evaluate::evaluate;

/// What `import-pm2` writes: the TOML and the notes on what was not carried over.
#[derive(Debug)]
pub(crate) struct Imported {
    /// The `ecosystem.toml` text.
    pub(crate) toml: String,
    /// One line per thing not carried over (or carried over with a change).
    pub(crate) notes: Vec<String>,
}

/// Writes `text` to `path` as a new file of mode 600 (a PM2 file's `env` often
/// holds passwords), through a temporary file renamed over it, so a symlink at
/// `path` is replaced, never followed.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".import-pm2.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The command: evaluate `file` with `node`, convert, write to `output` (or
/// stdout) and print the notes on stderr.
///
/// # Errors
///
/// Node cannot evaluate the file, the file has no apps or an app cannot be
/// named on the bus, or `output` exists (without `force`) or cannot be written.
pub(crate) fn run(
    file: &Path,
    output: Option<&Path>,
    force: bool,
    node: &str,
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    if let Some(out) = output {
        // symlink_metadata: a dangling link is there too (exists() follows it).
        if out.symlink_metadata().is_ok() && !force {
            bail!("{} exists; --force to overwrite it", out.display());
        }
    }
    let pm2 = evaluate(file, node, limit)?;
    let from = std::path::absolute(file)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let to = match output {
        Some(out) => std::path::absolute(out)?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        None => std::env::current_dir()?,
    };
    let imported = convert(&pm2, &from, &to, file)?;
    match output {
        Some(out) => write_private(out, &imported.toml)
            .with_context(|| format!("writing {}", out.display()))?,
        None => print!("{}", imported.toml),
    }
    for note in &imported.notes {
        eprintln!("import-pm2: {note}");
    }
    Ok(())
}
