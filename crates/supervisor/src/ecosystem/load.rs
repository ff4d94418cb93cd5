//! Loading: the file, the profile, environment overrides, every check, the start order.

use super::*;

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
    if let Some(host) = &main_conf.host {
        check_host(host).map_err(|message| EcosystemError::Invalid {
            app: "[main]".into(),
            message,
        })?;
    }
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
        apps.push(check_app(spec, &base, main_conf.host.as_deref())?);
    }
    let apps = order(apps)?;
    let run_dir = resolve_run_dir(&main_conf.run_dir, &base, env);
    Ok(Ecosystem {
        main: main_conf,
        broker,
        apps,
        base,
        run_dir,
    })
}

/// Where `[main] run_dir` is: an absolute path as is; a relative one under
/// systemd's `STATE_DIRECTORY` (set by `StateDirectory=`; its first folder when
/// it lists several) when there is one, so that the unit's config folder
/// (`/etc/switchboard`, read-only under `ProtectSystem=strict`) is never written
/// to; else next to the ecosystem file (`base`), as when run from a checkout.
pub fn resolve_run_dir(run_dir: &str, base: &Path, env: &HashMap<String, String>) -> PathBuf {
    let dir = Path::new(run_dir);
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    let state = env
        .get("STATE_DIRECTORY")
        .and_then(|s| s.split(':').next())
        .filter(|s| Path::new(s).is_absolute());
    match state {
        Some(state) => Path::new(state).join(dir),
        None => base.join(dir),
    }
}

pub(super) fn section<T: for<'de> Deserialize<'de>>(
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

pub(super) fn check_keys(
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
pub(super) fn apply_env_overrides(
    app: &str,
    map: &mut Map<String, Value>,
    env: &HashMap<String, String>,
) {
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
pub(super) fn apply_profile(map: &mut Map<String, Value>, profile: Option<&str>) {
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

pub(super) fn check_app(
    spec: AppSpec,
    base: &Path,
    host: Option<&str>,
) -> Result<App, EcosystemError> {
    let invalid = |message: String| EcosystemError::Invalid {
        app: spec.name.clone(),
        message,
    };
    switchboard_bus::proto::validate_name(&spec.name).map_err(|e| invalid(format!("name: {e}")))?;
    if spec.name.starts_with('$') || spec.name == "main" {
        return Err(invalid("the names `main` and `$…` are taken".into()));
    }
    // The gateway refuses its secret as an argument; refuse it here too, before
    // anything starts: each start would show it in `ps` until the refusal.
    if let Some(arg) = spec
        .args
        .iter()
        .find(|a| *a == "--auth-secret" || a.starts_with("--auth-secret="))
    {
        let flag = arg.split('=').next().unwrap_or_default();
        return Err(invalid(format!(
            "args: {flag} would show the secret to every local user (ps); give it in \
             env (SB_AUTH_SECRET) or in a file of mode 600 (--auth-secret-file PATH)"
        )));
    }
    if !(1..=99).contains(&spec.instances) {
        return Err(invalid(format!(
            "instances must be 1 to 99, not {}",
            spec.instances
        )));
    }
    let not_a_variable = |name: &&String| {
        name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if let Some(bad) = spec.pass_env.iter().find(not_a_variable) {
        return Err(invalid(format!(
            "pass_env: {bad:?} is not a variable name (letters, digits and _)"
        )));
    }
    // An `env` key with `=` or a newline (a PM2 file imported as is) would
    // reach the child as another variable, or none.
    if let Some(bad) = spec.env.keys().find(not_a_variable) {
        return Err(invalid(format!(
            "env: {bad:?} is not a variable name (letters, digits and _)"
        )));
    }
    let max_memory = match &spec.max_memory_restart {
        None => None,
        Some(v) => Some(parse_size(v).ok_or_else(|| {
            invalid(format!(
                "max_memory_restart {v}: use bytes or a size like \"200M\""
            ))
        })?),
    };
    let cwd = match &spec.cwd {
        None => None,
        Some(dir) => {
            let path = absolute(&base.join(dir));
            if !path.is_dir() {
                return Err(invalid(format!(
                    "cwd {dir:?}: no such folder ({})",
                    path.display()
                )));
            }
            Some(path)
        }
    };
    let (bin, script, argv) = match &spec.script {
        None => {
            if spec.interpreter.is_some() || !spec.interpreter_args.is_empty() {
                return Err(invalid(
                    "interpreter and interpreter_args need a script".into(),
                ));
            }
            let bin = spec
                .bin
                .as_deref()
                .ok_or_else(|| invalid("missing bin (or script)".into()))?;
            let bin = resolve_bin(bin, base).map_err(|e| invalid(e.to_string()))?;
            (bin, None, spec.args.clone())
        }
        Some(script) => {
            let path = absolute(&cwd.as_deref().unwrap_or(base).join(script));
            if !path.is_file() {
                return Err(invalid(format!(
                    "script {script:?} not found at {}",
                    path.display()
                )));
            }
            let interpreter = interpreter_of(&spec, script).map_err(invalid)?;
            if interpreter == "none" {
                if !spec.interpreter_args.is_empty() {
                    return Err(invalid(
                        "interpreter_args with interpreter \"none\": nothing to give them to"
                            .into(),
                    ));
                }
                (path.clone(), Some(path), spec.args.clone())
            } else {
                let bin = resolve_bin(&interpreter, base)
                    .map_err(|e| invalid(format!("interpreter of script {script:?}: {e}")))?;
                let mut argv = spec.interpreter_args.clone();
                if let Some(max) = max_memory.filter(|_| is_node(&bin)) {
                    if !argv.iter().any(|a| a.starts_with("--max-old-space-size")) {
                        argv.push(format!("--max-old-space-size={}", node_heap_mib(max)));
                    }
                }
                argv.push(path.display().to_string());
                argv.extend(spec.args.iter().cloned());
                (bin, Some(path), argv)
            }
        }
    };
    let instances = instance_names(&spec, host);
    Ok(App {
        spec,
        bin,
        script,
        cwd,
        argv,
        max_memory,
        instances,
    })
}

/// What runs an app's `script`: its `interpreter`; else its `bin` (which may
/// only name the interpreter); else, as PM2 does, `node` for JavaScript.
fn interpreter_of(spec: &AppSpec, script: &str) -> Result<String, String> {
    match (&spec.interpreter, &spec.bin) {
        (Some(i), Some(b)) if i != b => Err(format!(
            "bin {b:?} and script {script:?}: bin may only name the interpreter \
             ({i:?} here); drop one of them"
        )),
        (Some(i), _) | (None, Some(i)) => Ok(i.clone()),
        (None, None) => {
            let ext = Path::new(script).extension().and_then(|e| e.to_str());
            match ext {
                Some("js" | "mjs" | "cjs") => Ok("node".into()),
                _ => Err(format!(
                    "script {script:?}: which interpreter runs it? Set interpreter \
                     (\"python3\", …), or interpreter = \"none\" to run it as a program"
                )),
            }
        }
    }
}

/// Whether a resolved interpreter is Node.js (`node`, `nodejs`, `node20`…),
/// which gets `--max-old-space-size` from `max_memory_restart`.
pub(super) fn is_node(bin: &Path) -> bool {
    bin.file_name()
        .and_then(|n| n.to_str())
        // `node`, `nodejs`, `node20`: not `nodemon` and the like, which take no
        // V8 flags.
        .is_some_and(|n| {
            n == "nodejs"
                || n.strip_prefix("node")
                    .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Node's `--max-old-space-size` (MiB) for a `max_memory_restart` of `bytes`:
/// about 90 %, so that V8 collects harder before main's limit replaces the
/// process (the heap is not all of a process's memory); at least 16 MiB.
pub fn node_heap_mib(bytes: u64) -> u64 {
    ((bytes / 10 * 9) >> 20).max(16)
}

/// `path` made absolute against main's working directory (as the kernel will
/// read it), for error messages and `argv`.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The instance names of an app: its name alone, or NAME01, NAME02… when it
/// runs several instances or names them through `instance_var`; with a `host`
/// (a system of several hosts), each ends in `.HOST`.
pub fn instance_names(spec: &AppSpec, host: Option<&str>) -> Vec<String> {
    let numbered = spec.instances > 1 || spec.instance_var.is_some();
    (1..=spec.instances)
        .map(|n| {
            let name = if numbered {
                format!("{}{n:02}", spec.name)
            } else {
                spec.name.clone()
            };
            match host {
                Some(host) => format!("{name}.{host}"),
                None => name,
            }
        })
        .collect()
}

/// Longest `[main] host`: `INSTANCE.HOST` must stay a bus name (64 bytes).
pub const MAX_HOST: usize = 24;

/// A `[main] host`: a bus name without `.` (it is the suffix after one), at
/// most [`MAX_HOST`] bytes.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "[main] host {host:?}: 1 to {MAX_HOST} of A-Z a-z 0-9 _ -"
        ));
    }
    Ok(())
}

/// A `bin` (or interpreter) that is nowhere: the absolute paths tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinNotFound {
    /// The name or path as given.
    pub bin: String,
    /// Every absolute path looked at, in order.
    pub tried: Vec<PathBuf>,
}

impl std::fmt::Display for BinNotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tried: Vec<String> = self.tried.iter().map(|p| p.display().to_string()).collect();
        write!(
            f,
            "bin {:?} not found; tried {}",
            self.bin,
            tried.join(", ")
        )
    }
}

impl std::error::Error for BinNotFound {}

/// Resolves a `bin`: a path (relative to the ecosystem file's folder), or a bare
/// name next to the running `main`, then on PATH.
///
/// # Errors
///
/// [`BinNotFound`], naming every absolute path tried.
pub fn resolve_bin(bin: &str, base: &Path) -> Result<PathBuf, BinNotFound> {
    let mut tried = Vec::new();
    let mut found = |p: PathBuf| {
        let p = absolute(&p);
        let ok = p.is_file();
        if !ok {
            tried.push(p.clone());
        }
        ok.then_some(p)
    };
    let hit = if bin.contains('/') {
        found(base.join(bin))
    } else {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(bin)));
        let path = std::env::var_os("PATH").unwrap_or_default();
        beside
            .into_iter()
            .chain(std::env::split_paths(&path).map(|d| d.join(bin)))
            .find_map(&mut found)
    };
    hit.ok_or_else(|| BinNotFound {
        bin: bin.to_owned(),
        tried,
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
pub(super) fn order(apps: Vec<App>) -> Result<Vec<App>, EcosystemError> {
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
