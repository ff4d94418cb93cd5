//! PM2's JSON as `ecosystem.toml`: one `[[apps]]` table per app, written by
//! the `toml` crate, and a note for each key not carried over.

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

use super::values::{env_table, millis, size, string_list};
use super::Imported;

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
