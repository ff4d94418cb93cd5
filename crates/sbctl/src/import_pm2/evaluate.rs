//! Node's reading of a PM2 ecosystem file: it is JavaScript, so Node
//! evaluates it, as PM2 itself does, and prints it as JSON.

use anyhow::{bail, Context};
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// What Node runs to print a PM2 file as JSON: `require` for CommonJS and
/// JSON, `import()` for ES modules; a function value (PM2 has none that
/// survives into a process) becomes a marker the conversion reports. The
/// file's path comes in the environment, never in the script's text. What the
/// file prints itself goes to stderr (stdout carries the JSON alone), and node
/// exits once the JSON is written, whatever timers or sockets the file left
/// open.
const EVALUATE_JS: &str = r#"
const path = require('path');
const { pathToFileURL } = require('url');
const file = path.resolve(process.env.SB_PM2_FILE);
const out = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
(async () => {
  let m;
  try {
    m = require(file);
  } catch (e) {
    // An ES module: refused by require() (or, where require() loads ES
    // modules, one with a top-level await).
    if (e.code !== 'ERR_REQUIRE_ESM' && e.code !== 'ERR_REQUIRE_ASYNC_MODULE') throw e;
    m = (await import(pathToFileURL(file).href)).default;
  }
  if (m && m.default && !m.apps) m = m.default;
  const json = JSON.stringify(m, (k, v) => typeof v === 'function' ? '[function]' : v);
  out(json === undefined ? 'null' : json, () => process.exit(0));
})().catch((e) => { console.error((e && e.stack) || String(e)); process.exit(1); });
"#;

/// Node's reading of a PM2 ecosystem file (`.js`, `.cjs`, `.mjs`, `.json`).
/// Evaluating it runs its code, as `pm2 start` does: it is the operator's own
/// file. Node runs in a process group of its own, ended (with whatever the
/// file started in it) once Node is done or `limit` has passed: a file that
/// never finishes loading (a top-level `await` that never settles, a loop) is
/// given up on, and so is one that leaves a process holding Node's output
/// open.
///
/// # Errors
///
/// Node cannot be run, fails on the file, or runs past `limit`; its output is
/// not JSON.
pub(crate) fn evaluate(file: &Path, node: &str, limit: Duration) -> anyhow::Result<Value> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if !file.is_file() {
        bail!("{}: no such file", file.display());
    }
    let mut child = Command::new(node)
        .arg("-e")
        .arg(EVALUATE_JS)
        .env("SB_PM2_FILE", file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {node} to read {} (Node.js is needed: PM2 files are JavaScript; --node PATH)", file.display()))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let end_group = || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    // Both pipes read to their end on threads of their own, so that a file
    // printing a lot never blocks node on a full pipe while we wait.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let too_long = || {
        anyhow::anyhow!(
            "{node} had not finished reading {} after {} s: a file that never finishes loading (a top-level await that never settles, a loop), or that leaves a process holding Node's output? --timeout-secs to wait longer",
            file.display(),
            limit.as_secs()
        )
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            end_group();
            let _ = child.wait();
            return Err(too_long());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What the file started in Node's group goes with it; one that left the
    // group and kept the pipes open is waited for until the limit at most.
    end_group();
    let left = || deadline.saturating_duration_since(Instant::now());
    let stdout = stdout.recv_timeout(left()).map_err(|_| too_long())?;
    let stderr = stderr.recv_timeout(left()).unwrap_or_default();
    if !status.success() {
        bail!(
            "{node} could not evaluate {}: {}",
            file.display(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    serde_json::from_slice(&stdout)
        .with_context(|| format!("{node} printed no JSON for {}", file.display()))
}
