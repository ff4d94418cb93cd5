//! Node's reading of a PM2 ecosystem file: it is JavaScript, so Node
//! evaluates it, as PM2 itself does, and prints it as JSON.

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::Path;

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
    if (e.code !== 'ERR_REQUIRE_ESM') throw e;
    m = (await import(pathToFileURL(file).href)).default;
  }
  if (m && m.default && !m.apps) m = m.default;
  const json = JSON.stringify(m, (k, v) => typeof v === 'function' ? '[function]' : v);
  out(json === undefined ? 'null' : json, () => process.exit(0));
})().catch((e) => { console.error((e && e.stack) || String(e)); process.exit(1); });
"#;

/// Node's reading of a PM2 ecosystem file (`.js`, `.cjs`, `.mjs`, `.json`).
/// Evaluating it runs its code, as `pm2 start` does: it is the operator's own
/// file.
///
/// # Errors
///
/// Node cannot be run, or fails on the file; its output is not JSON.
pub(crate) fn evaluate(file: &Path, node: &str) -> anyhow::Result<Value> {
    if !file.is_file() {
        bail!("{}: no such file", file.display());
    }
    let out = std::process::Command::new(node)
        .arg("-e")
        .arg(EVALUATE_JS)
        .env("SB_PM2_FILE", file)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {node} to read {} (Node.js is needed: PM2 files are JavaScript; --node PATH)", file.display()))?;
    if !out.status.success() {
        bail!(
            "{node} could not evaluate {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{node} printed no JSON for {}", file.display()))
}
