//! `sbctl import-pm2 ecosystem.config.js`: a PM2 ecosystem file written as the
//! equivalent `ecosystem.toml`, and on stderr what could not be carried over.
//!
//! A PM2 file is JavaScript (`module.exports = {apps: [...]}`, often with
//! computed values: `path.join(__dirname, …)`, `process.env.X || …`,
//! `os.cpus().length`), so it is not parsed here: Node evaluates it, as PM2
//! itself does, and prints it as JSON ([`evaluate`]). Only the conversion of
//! that JSON is ours ([`convert`]), and the TOML is written by the `toml` crate,
//! so no name, path or env value can break out of its string (a newline, a
//! quote, `"]\n[[apps]]`: all stay data).
//!
//! What maps to what is in `docs/ecosystem-node.md`.

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// What `import-pm2` writes: the TOML and the notes on what was not carried over.
#[derive(Debug)]
pub(crate) struct Imported {
    /// The `ecosystem.toml` text.
    pub(crate) toml: String,
    /// One line per thing not carried over (or carried over with a change).
    pub(crate) notes: Vec<String>,
}

/// The command: evaluate `file` with `node`, convert, write to `output` (or
/// stdout) and print the notes on stderr.
///
/// # Errors
///
/// Node cannot evaluate the file, the file has no apps or an app cannot be
/// named on the bus, or `output` exists (without `force`) or cannot be written.
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

pub(crate) fn run(
    file: &Path,
    output: Option<&Path>,
    force: bool,
    node: &str,
) -> anyhow::Result<()> {
    if let Some(out) = output {
        // symlink_metadata: a dangling link is there too (exists() follows it).
        if out.symlink_metadata().is_ok() && !force {
            bail!("{} exists; --force to overwrite it", out.display());
        }
    }
    let pm2 = evaluate(file, node)?;
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

/// One `[[apps]]` table as written, keys in the order an operator reads them.
#[derive(Debug, Default, Serialize)]
struct AppOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    script: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interpreter: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interpreter_args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_var: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_restart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    autorestart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    autostart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_restarts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_uptime_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp_backoff_restart_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watch: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignore_watch: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    /// `env_production` and the other profiles, as `env_NAME` tables.
    #[serde(flatten)]
    profiles: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct FileOut {
    apps: Vec<AppOut>,
}

/// Why a PM2 key has no equivalent, for the ones operators use most.
fn not_carried(key: &str) -> &'static str {
    match key {
        "out_file" | "error_file" | "log_file" | "output" | "error" | "log" => {
            "logs go to run_dir/logs/INSTANCE.log (stdout and stderr together); `sbctl logs` reads them"
        }
        "merge_logs" | "combine_logs" => "each instance keeps its own log; `sbctl logs` with no name prints them all, prefixed",
        "log_date_format" | "time" | "log_type" => "the services' own log lines carry their time",
        "cron_restart" => "no cron restarts: a systemd timer or cron job running `sbctl reload NAME` does it",
        "pid_file" => "main keeps the pids (`sbctl ls`)",
        "uid" | "gid" | "user" => "every app runs as main's user: run main as that user (deploy/ has a systemd unit)",
        "source_map_support" => "give node `--enable-source-maps` in interpreter_args",
        "vizion" | "post_update" | "automation" | "pmx" | "treekill" | "force" => "a PM2 feature with no part here",
        "instance_var" => "PM2's NODE_APP_INSTANCE number: here SB_INSTANCE carries each instance's name (increment_var maps to instance_var)",
        "namespace" => "no namespaces: an app's name is its service on the bus",
        "stop_exit_codes" => "every exit is restarted while autorestart is on",
        "shutdown_with_message" | "kill_retry_time" => "main stops an app with SIGTERM, then SIGKILL after kill_timeout_ms",
        "filter_env" | "append_env_to_name" => "an app gets only its own env (and pass_env), never main's whole environment",
        _ => "no equivalent in ecosystem.toml",
    }
}

/// Converts PM2's JSON (`{apps: [...]}`, an array of apps, or one app) to
/// `ecosystem.toml`. `from` is the folder of the PM2 file and `to` that of
/// the TOML: relative paths are kept when they are the same folder, else
/// made absolute (the loader reads them from the TOML's folder). `file`
/// names the source in the header.
///
/// # Errors
///
/// No apps; an app without name or script, or whose name is not a bus name.
pub(crate) fn convert(
    pm2: &Value,
    from: &Path,
    to: &Path,
    file: &Path,
) -> anyhow::Result<Imported> {
    let mut notes = Vec::new();
    let apps: Vec<&Value> = match pm2 {
        Value::Array(apps) => apps.iter().collect(),
        Value::Object(top) if top.contains_key("apps") => {
            for key in top.keys().filter(|k| *k != "apps") {
                notes.push(format!("top-level `{key}` not carried over: {}", match key.as_str() {
                    "deploy" => "deployment is not main's: docs/ has a systemd unit, a container image and Kubernetes manifests",
                    _ => "ecosystem.toml's top level has only [main], [broker] and [[apps]]",
                }));
            }
            match &top["apps"] {
                Value::Array(apps) => apps.iter().collect(),
                one @ Value::Object(_) => vec![one],
                _ => bail!("`apps` is neither an array nor an app"),
            }
        }
        one @ Value::Object(_) => vec![one],
        _ => bail!("the file exports no apps (module.exports = {{apps: [...]}})"),
    };
    if apps.is_empty() {
        bail!("the file has no apps");
    }
    let same_folder = same_dir(from, to);
    let mut out = Vec::new();
    for (i, app) in apps.into_iter().enumerate() {
        let Value::Object(app) = app else {
            bail!("app #{} is not an object", i + 1);
        };
        out.push(convert_app(app, i, from, same_folder, &mut notes)?);
    }
    let body = toml::to_string(&FileOut { apps: out }).context("writing TOML")?;
    // `{:?}`: the path quoted and escaped, so no newline in a file name can
    // end the comment.
    let toml = format!(
        "# Written by `sbctl import-pm2` from {:?}.\n# See docs/ecosystem-node.md; `main --check` checks it.\n\n{body}",
        file.display().to_string()
    );
    Ok(Imported { toml, notes })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Keys converted by [`convert_app`] (everything else is reported).
const MAPPED: &[&str] = &[
    "name",
    "script",
    "args",
    "interpreter",
    "exec_interpreter",
    "interpreter_args",
    "node_args",
    "cwd",
    "instances",
    "exec_mode",
    "increment_var",
    "env",
    "max_memory_restart",
    "kill_timeout",
    "wait_ready",
    "listen_timeout",
    "autorestart",
    "autostart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "watch",
    "ignore_watch",
];

fn convert_app(
    app: &Map<String, Value>,
    index: usize,
    from: &Path,
    same_folder: bool,
    notes: &mut Vec<String>,
) -> anyhow::Result<AppOut> {
    let script = match app.get("script") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => bail!("app #{}: no script", index + 1),
    };
    // PM2's default name: the script's file name without its extension.
    let name = match app.get("name") {
        Some(Value::String(n)) => n.clone(),
        Some(other) => other.to_string(),
        None => Path::new(&script)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if let Err(e) = switchboard_bus::proto::validate_name(&name) {
        bail!(
            "app #{} {name:?}: not a name on the bus ({e}); rename it in the PM2 file \
             (its name is its service name here)",
            index + 1
        );
    }
    if name == "main" || name.starts_with('$') {
        bail!("app {name:?}: `main` and `$…` are taken on the bus; rename it");
    }
    let mut note = |what: String| notes.push(format!("app {name:?}: {what}"));
    let mut out = AppOut {
        name: name.clone(),
        ..AppOut::default()
    };

    // --- the command ---
    let interpreter = match app.get("interpreter").or(app.get("exec_interpreter")) {
        Some(Value::String(i)) if !i.is_empty() => Some(i.clone()),
        _ => None,
    };
    let ext = Path::new(&script)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    // PM2's choice when none is given: by extension, else node; a script
    // with no extension is run as a program (PM2 does so for a command found
    // on PATH, like `npm`).
    let interpreter = interpreter.unwrap_or_else(|| {
        match ext {
            "js" | "mjs" | "cjs" => "node",
            "sh" => "bash",
            "py" => "python3",
            "rb" => "ruby",
            "php" => "php",
            "pl" => "perl",
            "" => "none",
            _ => "node",
        }
        .to_owned()
    });
    let cwd = app.get("cwd").and_then(Value::as_str).map(str::to_owned);
    let place = |p: &str| -> String {
        if same_folder || Path::new(p).is_absolute() {
            p.to_owned()
        } else {
            from.join(p).display().to_string()
        }
    };
    out.cwd = cwd.as_deref().map(place);
    if interpreter == "none" {
        // A program: `bin` (a bare name is looked up on PATH; a path is read
        // from the TOML's folder, so one under `cwd` gets cwd in front).
        out.bin = Some(if script.contains('/') {
            match &cwd {
                Some(c) if Path::new(&script).is_relative() => {
                    place(&Path::new(c).join(&script).display().to_string())
                }
                _ => place(&script),
            }
        } else {
            script.clone()
        });
    } else {
        // A script is read from `cwd` when set, as in PM2, else from the
        // TOML's folder.
        out.script = Some(if cwd.is_some() {
            script.clone()
        } else {
            place(&script)
        });
        if !matches!((ext, interpreter.as_str()), ("js" | "mjs" | "cjs", "node")) {
            out.interpreter = Some(interpreter.clone());
        }
    }
    out.args = string_list(app.get("args"), "args", &mut note);
    for key in ["interpreter_args", "node_args"] {
        let list = string_list(app.get(key), key, &mut note);
        if !list.is_empty() && interpreter == "none" {
            note(format!(
                "{key} not carried over: the script runs as a program (interpreter none)"
            ));
        } else {
            out.interpreter_args.extend(list);
        }
    }

    convert_instances(app, &mut out, &mut note);

    // --- environment ---
    out.env = env_table(app.get("env"), "env", &mut note);
    for (key, value) in app {
        if let Some(profile) = key.strip_prefix("env_").filter(|p| !p.is_empty()) {
            let table = env_table(Some(value), key, &mut note);
            out.profiles.insert(format!("env_{profile}"), table);
        }
    }

    convert_timings(app, &mut out, &mut note);

    // --- watch ---
    match app.get("watch") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => out.watch = Some(*b),
        Some(paths) => {
            out.watch = Some(true);
            note(format!(
                "watch {paths}: watch = true, which watches the script only (not these paths)"
            ));
        }
    }
    out.ignore_watch = string_list(app.get("ignore_watch"), "ignore_watch", &mut note);

    for key in app.keys() {
        if !MAPPED.contains(&key.as_str()) && !key.starts_with("env_") {
            note(format!("`{key}` not carried over: {}", not_carried(key)));
        }
    }
    Ok(out)
}

/// PM2's `instances`, `exec_mode` and `increment_var`.
fn convert_instances(app: &Map<String, Value>, out: &mut AppOut, note: &mut impl FnMut(String)) {
    if let Some(v) = app.get("instances") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
        let n = match v {
            Value::String(s) if s == "max" => Some(cores),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        let n = match n {
            // PM2: 0 and "max" are one per core, -1 one fewer.
            Some(0) => Some(cores),
            Some(k) if k < 0 => Some((cores + k).max(1)),
            other => other,
        };
        match n {
            Some(k) => {
                let clamped = k.clamp(1, 99) as u32;
                if v.as_i64() != Some(k) || k != i64::from(clamped) {
                    note(format!(
                        "instances {v}: {clamped} (this machine's {cores} cores; 1 to 99)"
                    ));
                }
                out.instances = Some(clamped);
            }
            None => note(format!("instances {v} not carried over: not a number")),
        }
    }
    match app.get("exec_mode").and_then(Value::as_str) {
        Some("cluster" | "cluster_mode") => note(
            "exec_mode cluster: each instance is its own process and its own instance on \
             the bus (NAME01, NAME02…), as in fork mode; no port is shared between them \
             (a service on the bus listens on none)"
                .into(),
        ),
        Some("fork" | "fork_mode") | None => {}
        Some(other) => note(format!("exec_mode {other:?} not carried over")),
    }
    if let Some(var) = app.get("increment_var").and_then(Value::as_str) {
        out.instance_var = Some(var.to_owned());
        note(format!(
            "increment_var {var:?}: instance_var; it carries each instance's name (NAME01…), \
             not a number"
        ));
    }
}

/// `max_memory_restart` and the restart and stop timings.
fn convert_timings(app: &Map<String, Value>, out: &mut AppOut, note: &mut impl FnMut(String)) {
    if let Some(v) = app.get("max_memory_restart") {
        match size(v) {
            Some(s) => out.max_memory_restart = Some(s),
            None => note(format!(
                "max_memory_restart {v} not carried over: use \"200M\", \"1G\", \"512K\" or bytes"
            )),
        }
    }
    let mut ms = |key: &str| -> Option<u64> {
        let v = app.get(key)?;
        let parsed = millis(v);
        if parsed.is_none() {
            note(format!("{key} {v} not carried over: not a duration"));
        }
        parsed
    };
    out.kill_timeout_ms = ms("kill_timeout");
    out.ready_timeout_ms = ms("listen_timeout");
    out.min_uptime_ms = ms("min_uptime");
    out.restart_delay_ms = ms("restart_delay");
    out.exp_backoff_restart_delay_ms = ms("exp_backoff_restart_delay");
    out.max_restarts = app
        .get("max_restarts")
        .and_then(Value::as_u64)
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    out.autorestart = app.get("autorestart").and_then(Value::as_bool);
    out.autostart = app.get("autostart").and_then(Value::as_bool);
    if let Some(ready) = app.get("wait_ready").and_then(Value::as_bool) {
        out.wait_ready = Some(ready);
        if !ready {
            note(
                "wait_ready false: main counts the app started once spawned, and cannot \
                 hold a reload until the new process is ready on the bus"
                    .into(),
            );
        }
    }
}

/// A list of strings: an array, or a string split as a shell would (PM2
/// takes both; `shlex` rather than a hand-written splitter, for quotes).
fn string_list(v: Option<&Value>, key: &str, note: &mut impl FnMut(String)) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => shlex::split(s).unwrap_or_else(|| {
            note(format!("{key} {s:?}: unbalanced quotes; split on spaces"));
            s.split_whitespace().map(str::to_owned).collect()
        }),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => vec![other.to_string()],
    }
}

/// An env table: strings, numbers and booleans become strings (as Node's
/// `process.env` makes them); anything else, and a name no process
/// environment can hold, is reported.
fn env_table(
    v: Option<&Value>,
    key: &str,
    note: &mut impl FnMut(String),
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return out };
    let Value::Object(map) = v else {
        note(format!("{key} is not an object: not carried over"));
        return out;
    };
    for (name, value) in map {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            note(format!(
                "{key}.{name:?} not carried over: not an environment variable name"
            ));
            continue;
        }
        let value = match value {
            Value::String(s) if s.contains('\0') => {
                note(format!("{key}.{name} not carried over: holds a NUL byte"));
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            other => {
                note(format!(
                    "{key}.{name} ({other}) not carried over: not a string, number or boolean"
                ));
                continue;
            }
        };
        out.insert(name.clone(), value);
    }
    out
}

/// PM2's `max_memory_restart` ("200M", "1G", "150K", "300MB", bytes) as main
/// reads it ("200M", "1G", "512K", bytes).
fn size(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) => {
            let s = s.trim().to_ascii_uppercase();
            let s = s
                .strip_suffix('B')
                .filter(|r| r.ends_with(['K', 'M', 'G']))
                .unwrap_or(&s);
            let digits = s.trim_end_matches(['K', 'M', 'G']);
            let unit = &s[digits.len()..];
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && unit.len() <= 1)
                .then(|| s.to_owned())
        }
        _ => None,
    }
}

/// A PM2 duration: ms as a number or digits, or a string with a unit ("60s",
/// "1m"; read by `humantime`).
fn millis(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                humantime::parse_duration(s)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_private_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sb-import-pm2-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = dir.join("ecosystem.toml");
        let _ = std::fs::remove_file(&out);
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_private(&out, "[[apps]]\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&out).unwrap();
        assert!(meta.is_file(), "the link was replaced by a file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).ok();
    }
    use serde_json::json;

    fn conv(pm2: Value) -> Imported {
        let here = Path::new("/srv/app");
        convert(&pm2, here, here, &here.join("ecosystem.config.js")).unwrap()
    }

    #[test]
    fn every_seed_field_maps() {
        let out = conv(json!({"apps": [{
            "name": "chat", "script": "services/chat.js", "args": "--port 3000 --name 'a b'",
            "node_args": ["--enable-source-maps"], "instances": 2, "exec_mode": "fork",
            "env": {"PORT": 3000, "DEBUG": true, "MODE": "dev"},
            "env_production": {"MODE": "prod"},
            "max_memory_restart": "300MB", "kill_timeout": 3000, "autorestart": true, "autostart": false,
            "max_restarts": 5, "min_uptime": "10s", "restart_delay": 200,
            "exp_backoff_restart_delay": 100, "watch": false, "ignore_watch": ["node_modules"],
            "wait_ready": true, "listen_timeout": 8000,
        }]}));
        assert!(out.notes.is_empty(), "{:?}", out.notes);
        let t: toml::Table = toml::from_str(&out.toml).unwrap();
        let app = &t["apps"].as_array().unwrap()[0];
        assert_eq!(app["name"].as_str(), Some("chat"));
        assert_eq!(app["script"].as_str(), Some("services/chat.js"));
        assert!(app.get("interpreter").is_none());
        assert_eq!(
            app["args"],
            toml::Value::try_from(["--port", "3000", "--name", "a b"]).unwrap()
        );
        assert_eq!(
            app["interpreter_args"],
            toml::Value::try_from(["--enable-source-maps"]).unwrap()
        );
        assert_eq!(app["instances"].as_integer(), Some(2));
        assert_eq!(app["env"]["PORT"].as_str(), Some("3000"));
        assert_eq!(app["env"]["DEBUG"].as_str(), Some("true"));
        assert_eq!(app["env_production"]["MODE"].as_str(), Some("prod"));
        assert_eq!(app["max_memory_restart"].as_str(), Some("300M"));
        assert_eq!(app["kill_timeout_ms"].as_integer(), Some(3000));
        assert_eq!(app["min_uptime_ms"].as_integer(), Some(10_000));
        assert_eq!(app["restart_delay_ms"].as_integer(), Some(200));
        assert_eq!(app["exp_backoff_restart_delay_ms"].as_integer(), Some(100));
        assert_eq!(app["max_restarts"].as_integer(), Some(5));
        assert_eq!(app["ready_timeout_ms"].as_integer(), Some(8000));
        assert_eq!(app["wait_ready"].as_bool(), Some(true));
        assert_eq!(app["watch"].as_bool(), Some(false));
        assert_eq!(app["autorestart"].as_bool(), Some(true));
        assert_eq!(app["autostart"].as_bool(), Some(false));
    }

    #[test]
    fn what_cannot_be_carried_is_said() {
        let out = conv(json!({"apps": [{
            "name": "api", "script": "api.js", "exec_mode": "cluster", "instances": "max",
            "cron_restart": "0 * * * *", "merge_logs": true, "out_file": "/var/log/api.log",
            "watch": ["src"], "env": {"OBJ": {"a": 1}}
        }], "deploy": {}}));
        let all = out.notes.join("\n");
        for word in [
            "exec_mode cluster",
            "cron_restart",
            "merge_logs",
            "out_file",
            "watch [\"src\"]",
            "env.OBJ",
            "`deploy`",
            "instances \"max\"",
        ] {
            assert!(all.contains(word), "{word}: {all}");
        }
    }

    #[test]
    fn hostile_values_stay_data() {
        let evil = "x\"\n[[apps]]\nname = \"evil\"\nbin = \"/bin/sh\"\n#";
        let out = conv(json!({"apps": [{
            "name": "chat", "script": evil,
            "interpreter": "node",
            "args": [evil], "env": {"K": evil, "B\n[x]": "v", "C=1": "v"},
            "env_production": {"\"]\n[[apps]]": evil},
        }]}));
        let t: toml::Table = toml::from_str(&out.toml).unwrap();
        let apps = t["apps"].as_array().unwrap();
        assert_eq!(apps.len(), 1, "{}", out.toml);
        assert_eq!(apps[0]["script"].as_str(), Some(evil));
        assert_eq!(apps[0]["env"]["K"].as_str(), Some(evil));
        assert_eq!(apps[0]["env"]["B\n[x]"].as_str(), Some("v"));
        assert!(apps[0]["env"].get("C=1").is_none());
        assert!(
            out.notes.iter().any(|n| n.contains("C=1")),
            "{:?}",
            out.notes
        );
        assert_eq!(t.len(), 1, "only [[apps]] at the top: {}", out.toml);
        // A name that is not a bus name is refused, not written.
        let err = convert(
            &json!({"apps": [{"name": "a\"\nb", "script": "a.js"}]}),
            Path::new("/"),
            Path::new("/"),
            Path::new("f.js"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a name on the bus"), "{err}");
        // The header cannot be ended by a file name.
        let out = convert(
            &json!([{"script": "a.js"}]),
            Path::new("/"),
            Path::new("/"),
            Path::new("a\n[[apps]]\nname=\"x\"\n.js"),
        )
        .unwrap();
        let t: toml::Table = toml::from_str(&out.toml).unwrap();
        assert_eq!(t["apps"].as_array().unwrap().len(), 1, "{}", out.toml);
        assert_eq!(t["apps"][0]["name"].as_str(), Some("a"));
    }

    #[test]
    fn paths_become_absolute_when_the_toml_is_elsewhere() {
        let out = convert(
            &json!({"apps": [{"name": "a", "script": "a.js"}, {"name": "b", "script": "b.js", "cwd": "svc"}, {"name": "c", "script": "./run", "interpreter": "none"}, {"name": "d", "script": "npm", "args": "start"}]}),
            Path::new("/srv/app"),
            Path::new("/etc/sb"),
            Path::new("/srv/app/ecosystem.config.js"),
        )
        .unwrap();
        let t: toml::Table = toml::from_str(&out.toml).unwrap();
        let apps = t["apps"].as_array().unwrap();
        assert_eq!(apps[0]["script"].as_str(), Some("/srv/app/a.js"));
        assert_eq!(apps[1]["script"].as_str(), Some("b.js"));
        assert_eq!(apps[1]["cwd"].as_str(), Some("/srv/app/svc"));
        assert_eq!(apps[2]["bin"].as_str(), Some("/srv/app/./run"));
        assert_eq!(apps[3]["bin"].as_str(), Some("npm"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size(&json!("200M")).as_deref(), Some("200M"));
        assert_eq!(size(&json!("1gb")).as_deref(), Some("1G"));
        assert_eq!(size(&json!(1024)).as_deref(), Some("1024"));
        assert_eq!(size(&json!("lots")), None);
        assert_eq!(millis(&json!("1m")), Some(60_000));
        assert_eq!(millis(&json!("500")), Some(500));
        assert_eq!(millis(&json!(true)), None);
    }

    /// A PM2 file is a program: one that logs while it loads (`console.log`)
    /// printed its line into the JSON, and one that leaves a timer or a socket
    /// open (a config that reads a vault, say) kept node, and sbctl, waiting
    /// for ever. Node is needed; without it the test says so and passes.
    #[test]
    fn a_file_that_logs_or_keeps_node_busy_still_evaluates() {
        if std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: node is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("sb-import-pm2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let apps = "module.exports = { apps: [{ name: 'api', script: 'api.js' }] };\n";
        for (name, head) in [
            (
                "logs.config.js",
                "console.log('loading the config'); process.stdout.write('x');\n",
            ),
            ("busy.config.js", "setInterval(() => {}, 1000);\n"),
        ] {
            let file = dir.join(name);
            std::fs::write(&file, format!("{head}{apps}")).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let f = file.clone();
            std::thread::spawn(move || tx.send(evaluate(&f, "node").map_err(|e| e.to_string())));
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{name}: node still running after 20 s"));
            assert_eq!(
                got.unwrap_or_else(|e| panic!("{name}: {e}")),
                json!({"apps": [{"name": "api", "script": "api.js"}]}),
                "{name}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
