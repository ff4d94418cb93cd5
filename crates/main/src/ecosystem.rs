//! `ecosystem.toml`: PM2's ecosystem file, in TOML.
//!
//! Read with the `config` crate in three layers: the file, then the `--env NAME`
//! profile (each app's `env_NAME` table over its `env`), then environment
//! variables: `SB_ECO__MAIN__HEARTBEAT_MS=500`, `SB_ECO__BROKER__BIND=…` for the
//! top-level tables, and `SB_ECO__APPS__<APP>__<KEY>=value` for one app's key
//! (the value is read as JSON when it parses, as a string otherwise).
//!
//! Everything is checked before anything starts: an unknown key is an error that
//! names the app and the key; so is a `depends_on` cycle, a dependency that does
//! not exist, or a `bin` that cannot be found.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What can be wrong with an ecosystem file.
#[derive(Debug, thiserror::Error)]
pub enum EcosystemError {
    /// The file cannot be read or is not TOML.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A key the format does not have.
    #[error("app {app:?}: unknown key {key:?}")]
    UnknownKey {
        /// The app (or `[broker]`/`[main]`/top level).
        app: String,
        /// The key.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("app {app:?}: {message}")]
    Invalid {
        /// The app.
        app: String,
        /// What is wrong.
        message: String,
    },
    /// A dependency cycle.
    #[error("depends_on cycle: {0}")]
    Cycle(String),
}

const APP_KEYS: &[&str] = &[
    "name",
    "bin",
    "args",
    "instances",
    "instance_var",
    "env",
    "depends_on",
    "wait_ready",
    "ready_timeout_ms",
    "kill_timeout_ms",
    "autorestart",
    "max_restarts",
    "min_uptime_ms",
    "restart_delay_ms",
    "exp_backoff_restart_delay_ms",
    "max_memory_restart",
    "watch",
    "ignore_watch",
];
const BROKER_KEYS: &[&str] = &["bin", "bind", "args", "env"];
const MAIN_KEYS: &[&str] = &[
    "run_dir",
    "heartbeat_ms",
    "liveness",
    "log_max_bytes",
    "log_keep",
];
const TOP_KEYS: &[&str] = &["main", "broker", "apps"];

/// `[main]`: the supervisor's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct MainConf {
    /// Folder for logs (`run_dir/logs/INSTANCE.log`), relative to the file.
    #[serde(default = "default_run_dir")]
    pub run_dir: String,
    /// How often each instance is health-checked (`$health` over the bus).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Failed health checks in a row after which a live process counts as hung.
    #[serde(default = "default_liveness")]
    pub liveness: u32,
    /// A log file is rotated past this size.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
}

/// `[broker]`: the broker main starts first.
#[derive(Debug, Clone, Deserialize)]
pub struct BrokerConf {
    /// Binary.
    #[serde(default = "default_broker_bin")]
    pub bin: String,
    /// Endpoint (port 0 picks one).
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Extra arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
}

/// One `[[apps]]` table. Units are in the names; defaults follow PM2's where it
/// has one.
#[derive(Debug, Clone, Deserialize)]
pub struct AppSpec {
    /// App name; also its service name on the bus.
    pub name: String,
    /// Binary: a path, or a name looked up next to `main` and then on PATH.
    pub bin: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Processes to run (1 to 99).
    #[serde(default = "one")]
    pub instances: u32,
    /// Like PM2's `increment_var`: instance n is named NAME01, NAME02… and this
    /// environment variable carries the name (SB_INSTANCE always does).
    #[serde(default)]
    pub instance_var: Option<String>,
    /// Environment (after the profile is applied).
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    /// Apps that must be ready before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Started means registered and ready on the bus (true), or just spawned.
    #[serde(default = "yes")]
    pub wait_ready: bool,
    /// How long readiness may take before the start counts as failed.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// Between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_kill_timeout_ms")]
    pub kill_timeout_ms: u64,
    /// Restart when the process exits or hangs.
    #[serde(default = "yes")]
    pub autorestart: bool,
    /// Unstable restarts (uptime under `min_uptime_ms`) in a row before `errored`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Uptime under which an exit counts as unstable.
    #[serde(default = "default_min_uptime_ms")]
    pub min_uptime_ms: u64,
    /// Delay before a restart.
    #[serde(default = "default_restart_delay_ms")]
    pub restart_delay_ms: u64,
    /// When set, the delay doubles on each unstable restart from this value
    /// (at most 15 s) instead of `restart_delay_ms`.
    #[serde(default)]
    pub exp_backoff_restart_delay_ms: u64,
    /// Resident memory past which the instance is replaced gracefully ("200M",
    /// "1G", "512K" or bytes).
    #[serde(default)]
    pub max_memory_restart: Option<Value>,
    /// Reload (zero downtime) when the binary changes on disk.
    #[serde(default)]
    pub watch: bool,
    /// Paths never watched (accepted for PM2 compatibility; only `bin` is watched).
    #[serde(default)]
    pub ignore_watch: Vec<String>,
}

/// A checked ecosystem, apps in start order.
#[derive(Debug, Clone)]
pub struct Ecosystem {
    /// `[main]`.
    pub main: MainConf,
    /// `[broker]`.
    pub broker: BrokerConf,
    /// Apps, dependencies first.
    pub apps: Vec<App>,
    /// The folder of the file (relative paths are read from there).
    pub base: PathBuf,
}

/// A checked app.
#[derive(Debug, Clone)]
pub struct App {
    /// The spec.
    pub spec: AppSpec,
    /// The resolved binary.
    pub bin: PathBuf,
    /// `max_memory_restart` in bytes.
    pub max_memory: Option<u64>,
    /// Instance names.
    pub instances: Vec<String>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_run_dir() -> String {
    "run".into()
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_liveness() -> u32 {
    3
}
fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_log_keep() -> u32 {
    3
}
fn default_broker_bin() -> String {
    "broker".into()
}
fn default_bind() -> String {
    "tcp://127.0.0.1:5555".into()
}
fn default_ready_timeout_ms() -> u64 {
    10_000
}
fn default_kill_timeout_ms() -> u64 {
    5_000
}
fn default_max_restarts() -> u32 {
    10
}
fn default_min_uptime_ms() -> u64 {
    1_000
}
fn default_restart_delay_ms() -> u64 {
    100
}

fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, Value> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Loads and checks `path` with profile `profile` and the process environment.
///
/// # Errors
///
/// See [`EcosystemError`].
pub fn load(path: &Path, profile: Option<&str>) -> Result<Ecosystem, EcosystemError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_with_env(path, profile, &env)
}

/// As [`load`], with the environment given (tests).
///
/// # Errors
///
/// See [`EcosystemError`].
pub fn load_with_env(
    path: &Path,
    profile: Option<&str>,
    env: &HashMap<String, String>,
) -> Result<Ecosystem, EcosystemError> {
    let file_err = |message: String| EcosystemError::File {
        path: path.display().to_string(),
        message,
    };
    let top_env: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| {
            k.starts_with("SB_ECO__") && !k.to_ascii_uppercase().starts_with("SB_ECO__APPS__")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let built = config::Config::builder()
        .add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        )
        .add_source(
            config::Environment::with_prefix("SB_ECO")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(top_env)),
        )
        .build()
        .map_err(|e| file_err(e.to_string()))?;
    let mut root: Value = built
        .try_deserialize()
        .map_err(|e| file_err(e.to_string()))?;
    let root_map = root
        .as_object_mut()
        .ok_or_else(|| file_err("the file is not a table".into()))?;
    check_keys("(top level)", root_map, TOP_KEYS, false)?;
    let main_conf: MainConf = section(root_map, "main", MAIN_KEYS)?;
    let broker: BrokerConf = section(root_map, "broker", BROKER_KEYS)?;
    let apps_raw = match root_map.remove("apps") {
        Some(Value::Array(apps)) => apps,
        None => Vec::new(),
        Some(_) => {
            return Err(file_err(
                "`apps` must be an array of tables ([[apps]])".into(),
            ))
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut apps = Vec::new();
    for (i, mut raw) in apps_raw.into_iter().enumerate() {
        let map = raw.as_object_mut().ok_or_else(|| EcosystemError::Invalid {
            app: format!("#{}", i + 1),
            message: "not a table".into(),
        })?;
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| EcosystemError::Invalid {
                app: format!("#{}", i + 1),
                message: "missing name".into(),
            })?;
        check_keys(&name, map, APP_KEYS, true)?;
        apply_env_overrides(&name, map, env);
        apply_profile(map, profile);
        let spec: AppSpec = serde_json::from_value(raw).map_err(|e| EcosystemError::Invalid {
            app: name.clone(),
            message: e.to_string(),
        })?;
        apps.push(check_app(spec, &base)?);
    }
    let apps = order(apps)?;
    Ok(Ecosystem {
        main: main_conf,
        broker,
        apps,
        base,
    })
}

fn section<T: for<'de> Deserialize<'de>>(
    root: &mut Map<String, Value>,
    name: &str,
    keys: &[&str],
) -> Result<T, EcosystemError> {
    let mut value = root.remove(name).unwrap_or(Value::Object(Map::new()));
    if let Some(map) = value.as_object_mut() {
        check_keys(&format!("[{name}]"), map, keys, false)?;
    }
    serde_json::from_value(value).map_err(|e| EcosystemError::Invalid {
        app: format!("[{name}]"),
        message: e.to_string(),
    })
}

fn check_keys(
    app: &str,
    map: &Map<String, Value>,
    known: &[&str],
    profiles: bool,
) -> Result<(), EcosystemError> {
    for key in map.keys() {
        let profile_env = profiles && key.starts_with("env_") && key.len() > 4;
        if !known.contains(&key.as_str()) && !profile_env {
            return Err(EcosystemError::UnknownKey {
                app: app.to_owned(),
                key: key.clone(),
            });
        }
    }
    Ok(())
}

/// `SB_ECO__APPS__<APP>__<KEY>=value` overrides one key of one app.
fn apply_env_overrides(app: &str, map: &mut Map<String, Value>, env: &HashMap<String, String>) {
    let prefix = format!(
        "SB_ECO__APPS__{}__",
        app.to_ascii_uppercase().replace('-', "_")
    );
    for (k, v) in env {
        if let Some(key) = k.strip_prefix(&prefix) {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            map.insert(key.to_ascii_lowercase(), value);
        }
    }
}

/// Merges `env_<profile>` over `env` and drops every `env_*` table.
fn apply_profile(map: &mut Map<String, Value>, profile: Option<&str>) {
    let overlay = profile.and_then(|p| map.get(&format!("env_{p}")).cloned());
    map.retain(|k, _| !k.starts_with("env_"));
    if let Some(Value::Object(overlay)) = overlay {
        let env = map
            .entry("env")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(env) = env.as_object_mut() {
            env.extend(overlay);
        }
    }
}

fn check_app(spec: AppSpec, base: &Path) -> Result<App, EcosystemError> {
    let invalid = |message: String| EcosystemError::Invalid {
        app: spec.name.clone(),
        message,
    };
    switchboard_bus::proto::validate_name(&spec.name).map_err(|e| invalid(format!("name: {e}")))?;
    if spec.name.starts_with('$') || spec.name == "main" {
        return Err(invalid("the names `main` and `$…` are taken".into()));
    }
    if !(1..=99).contains(&spec.instances) {
        return Err(invalid(format!(
            "instances must be 1 to 99, not {}",
            spec.instances
        )));
    }
    let bin = resolve_bin(&spec.bin, base).ok_or_else(|| {
        invalid(format!(
            "bin {:?} not found (looked next to main and on PATH)",
            spec.bin
        ))
    })?;
    let max_memory = match &spec.max_memory_restart {
        None => None,
        Some(v) => Some(parse_size(v).ok_or_else(|| {
            invalid(format!(
                "max_memory_restart {v}: use bytes or a size like \"200M\""
            ))
        })?),
    };
    let numbered = spec.instances > 1 || spec.instance_var.is_some();
    let instances = (1..=spec.instances)
        .map(|n| {
            if numbered {
                format!("{}{n:02}", spec.name)
            } else {
                spec.name.clone()
            }
        })
        .collect();
    Ok(App {
        spec,
        bin,
        max_memory,
        instances,
    })
}

/// Resolves a `bin`: a path (relative to the ecosystem file's folder), or a bare
/// name next to the running `main`, then on PATH.
pub fn resolve_bin(bin: &str, base: &Path) -> Option<PathBuf> {
    let is_file = |p: &Path| p.is_file();
    if bin.contains('/') {
        let p = if Path::new(bin).is_absolute() {
            PathBuf::from(bin)
        } else {
            base.join(bin)
        };
        return is_file(&p).then_some(p);
    }
    let beside = std::env::current_exe().ok()?.parent()?.join(bin);
    if is_file(&beside) {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| is_file(p))
    })
}

/// "200M" → 209715200; also K, G, plain bytes (number or string).
pub fn parse_size(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
                'K' => (&s[..s.len() - 1], 1u64 << 10),
                'M' => (&s[..s.len() - 1], 1 << 20),
                'G' => (&s[..s.len() - 1], 1 << 30),
                _ => (s, 1),
            };
            num.trim().parse::<u64>().ok()?.checked_mul(mult)
        }
        _ => None,
    }
}

/// Orders apps so that every app comes after what it depends on.
fn order(apps: Vec<App>) -> Result<Vec<App>, EcosystemError> {
    let index: HashMap<String, usize> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.spec.name.clone(), i))
        .collect();
    if index.len() != apps.len() {
        let mut seen = std::collections::HashSet::new();
        let dup = apps
            .iter()
            .find(|a| !seen.insert(&a.spec.name))
            .map(|a| a.spec.name.clone())
            .unwrap_or_default();
        return Err(EcosystemError::Invalid {
            app: dup,
            message: "two apps have this name".into(),
        });
    }
    for app in &apps {
        for dep in &app.spec.depends_on {
            if !index.contains_key(dep) {
                return Err(EcosystemError::Invalid {
                    app: app.spec.name.clone(),
                    message: format!("depends_on {dep:?}, which is not an app"),
                });
            }
        }
    }
    // Depth-first, with the path kept to name a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        apps: &[App],
        index: &HashMap<String, usize>,
        marks: &mut [Mark],
        path: &mut Vec<String>,
        out: &mut Vec<usize>,
    ) -> Result<(), EcosystemError> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = path
                    .iter()
                    .position(|n| *n == apps[i].spec.name)
                    .unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(apps[i].spec.name.clone());
                return Err(EcosystemError::Cycle(cycle.join(" -> ")));
            }
            Mark::New => {}
        }
        marks[i] = Mark::Active;
        path.push(apps[i].spec.name.clone());
        for dep in &apps[i].spec.depends_on {
            visit(index[dep], apps, index, marks, path, out)?;
        }
        path.pop();
        marks[i] = Mark::Done;
        out.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; apps.len()];
    let mut out = Vec::new();
    for i in 0..apps.len() {
        visit(i, &apps, &index, &mut marks, &mut Vec::new(), &mut out)?;
    }
    let mut slots: Vec<Option<App>> = apps.into_iter().map(Some).collect();
    Ok(out.into_iter().filter_map(|i| slots[i].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_text(
        text: &str,
        profile: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Ecosystem, EcosystemError> {
        let f = write(text);
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_with_env(f.path(), profile, &env)
    }

    const OK: &str = r#"
        [broker]
        bind = "tcp://127.0.0.1:0"

        [[apps]]
        name = "web"
        bin = "/bin/sh"
        depends_on = ["api"]
        env = { PORT = 3000, MODE = "dev" }
        env_production = { MODE = "prod" }

        [[apps]]
        name = "api"
        bin = "/bin/sh"
        instances = 2
        max_memory_restart = "200M"
    "#;

    #[test]
    fn orders_by_dependency_names_instances_and_applies_profile() {
        let eco = load_text(OK, Some("production"), &[]).unwrap();
        let names: Vec<&str> = eco.apps.iter().map(|a| a.spec.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(eco.apps[0].instances, ["api01", "api02"]);
        assert_eq!(eco.apps[0].max_memory, Some(200 << 20));
        assert_eq!(eco.apps[1].instances, ["web"]);
        assert_eq!(eco.apps[1].spec.env["MODE"], "prod");
        assert_eq!(eco.apps[1].spec.env["PORT"], "3000");
        assert_eq!(eco.broker.bind, "tcp://127.0.0.1:0");
        let dev = load_text(OK, None, &[]).unwrap();
        assert_eq!(dev.apps[1].spec.env["MODE"], "dev");
    }

    #[test]
    fn environment_overrides_top_level_and_app_keys() {
        let eco = load_text(
            OK,
            None,
            &[
                ("SB_ECO__MAIN__HEARTBEAT_MS", "250"),
                ("SB_ECO__APPS__API__INSTANCES", "3"),
                ("SB_SECRET", "not ours"),
            ],
        )
        .unwrap();
        assert_eq!(eco.main.heartbeat_ms, 250);
        assert_eq!(eco.apps[0].instances.len(), 3);
    }

    #[test]
    fn unknown_key_names_app_and_key() {
        let err = load_text(&OK.replace("instances = 2", "instancs = 2"), None, &[]).unwrap_err();
        assert_eq!(err.to_string(), r#"app "api": unknown key "instancs""#);
        let err = load_text(&format!("{OK}\n[extra]\nx = 1\n"), None, &[]).unwrap_err();
        assert!(err.to_string().contains("unknown key \"extra\""), "{err}");
        let err = load_text(&OK.replace("bind =", "bnd ="), None, &[]).unwrap_err();
        assert!(
            err.to_string().contains("[broker]") && err.to_string().contains("bnd"),
            "{err}"
        );
    }

    #[test]
    fn cycles_missing_dependencies_and_bins_are_errors() {
        let cyclic = OK.replace("max_memory_restart = \"200M\"", "depends_on = [\"web\"]");
        assert!(
            matches!(load_text(&cyclic, None, &[]), Err(EcosystemError::Cycle(c)) if c.contains("web") && c.contains("api"))
        );
        let missing = OK.replace("depends_on = [\"api\"]", "depends_on = [\"nope\"]");
        assert!(load_text(&missing, None, &[])
            .unwrap_err()
            .to_string()
            .contains("\"nope\""));
        let no_bin = OK.replacen("bin = \"/bin/sh\"", "bin = \"/no/such/bin\"", 1);
        let err = load_text(&no_bin, None, &[]).unwrap_err().to_string();
        assert!(err.contains("web") && err.contains("not found"), "{err}");
        let bad_mem = OK.replace("\"200M\"", "\"lots\"");
        assert!(load_text(&bad_mem, None, &[])
            .unwrap_err()
            .to_string()
            .contains("max_memory_restart"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&Value::from("512K")), Some(512 << 10));
        assert_eq!(parse_size(&Value::from("1G")), Some(1 << 30));
        assert_eq!(parse_size(&Value::from(1000)), Some(1000));
        assert_eq!(parse_size(&Value::from("x")), None);
    }
}
