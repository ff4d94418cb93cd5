//! The ecosystem file's rules, pinned.

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

#[test]
fn pass_env_takes_variable_names_only() {
    let ok = "[[apps]]\nname = \"db\"\nbin = \"/bin/sh\"\npass_env = [\"DATABASE_URL\", \"_X1\"]\n";
    let eco = load_text(ok, None, &[]).unwrap();
    assert_eq!(eco.apps[0].spec.pass_env, ["DATABASE_URL", "_X1"]);
    for bad in ["", "1X", "A=B", "A B", "DATABASE_URL\\u0000"] {
        let text = format!("[[apps]]\nname = \"db\"\nbin = \"/bin/sh\"\npass_env = [\"{bad}\"]\n");
        let err = load_text(&text, None, &[]).unwrap_err().to_string();
        assert!(err.contains("pass_env"), "{bad:?}: {err}");
    }
}

#[test]
fn run_dir_is_absolute_or_under_the_state_directory_or_next_to_the_file() {
    let base = Path::new("/etc/switchboard");
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        resolve_run_dir("run", base, &env(&[])),
        Path::new("/etc/switchboard/run")
    );
    let systemd = env(&[("STATE_DIRECTORY", "/var/lib/switchboard:/var/lib/other")]);
    assert_eq!(
        resolve_run_dir("run", base, &systemd),
        Path::new("/var/lib/switchboard/run")
    );
    assert_eq!(
        resolve_run_dir("/srv/sb", base, &systemd),
        Path::new("/srv/sb")
    );
    // A relative STATE_DIRECTORY is not systemd's: ignored.
    assert_eq!(
        resolve_run_dir("run", base, &env(&[("STATE_DIRECTORY", "x")])),
        Path::new("/etc/switchboard/run")
    );
    let eco = load_text(OK, None, &[("SB_ECO__MAIN__RUN_DIR", "/tmp/sb-run")]).unwrap();
    assert_eq!(eco.run_dir, Path::new("/tmp/sb-run"));
}

/// An ecosystem file in a folder of its own, beside `files` (relative path,
/// content), loaded.
fn load_in_dir(
    text: &str,
    files: &[(&str, &str)],
) -> (tempfile::TempDir, Result<Ecosystem, EcosystemError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let file = dir.path().join("ecosystem.toml");
    std::fs::write(&file, text).unwrap();
    let loaded = load_with_env(&file, None, &HashMap::new());
    (dir, loaded)
}

/// A `node` found on PATH: what the default interpreter resolves to.
fn node() -> PathBuf {
    resolve_bin("node", Path::new(".")).expect("node on PATH (Node 20 is on the machine)")
}

#[test]
fn a_js_script_runs_under_node_with_its_arguments_in_order() {
    let text = r#"
        [[apps]]
        name = "chat"
        script = "services/chat.js"
        interpreter_args = ["--enable-source-maps"]
        args = ["--flag"]
        max_memory_restart = "200M"
    "#;
    let (dir, eco) = load_in_dir(text, &[("services/chat.js", "")]);
    let app = &eco.unwrap().apps[0];
    let script = dir.path().join("services/chat.js");
    assert_eq!(app.bin, node());
    assert_eq!(app.script.as_deref(), Some(script.as_path()));
    // 200 MiB: 90 % is 180 MiB.
    assert_eq!(
        app.argv,
        [
            "--enable-source-maps",
            "--max-old-space-size=180",
            &script.display().to_string(),
            "--flag"
        ]
    );
    assert_eq!(app.watched(), script);
}

#[test]
fn bin_may_name_the_interpreter_and_an_explicit_heap_flag_wins() {
    let text = r#"
        [[apps]]
        name = "chat"
        bin = "node"
        script = "chat.mjs"
        interpreter_args = ["--max-old-space-size=64"]
        max_memory_restart = "1G"
    "#;
    let (dir, eco) = load_in_dir(text, &[("chat.mjs", "")]);
    let app = &eco.unwrap().apps[0];
    assert_eq!(app.bin, node());
    let script = dir.path().join("chat.mjs").display().to_string();
    assert_eq!(app.argv, ["--max-old-space-size=64", script.as_str()]);
}

#[test]
fn other_interpreters_get_no_heap_flag_and_none_runs_the_script() {
    let text = r#"
        [[apps]]
        name = "py"
        script = "job.py"
        interpreter = "/bin/sh"
        max_memory_restart = "200M"
        cwd = "work"

        [[apps]]
        name = "direct"
        script = "tool"
        interpreter = "none"
        args = ["-x"]
    "#;
    let (dir, eco) = load_in_dir(text, &[("work/job.py", ""), ("tool", "")]);
    let eco = eco.unwrap();
    let job = dir.path().join("work/job.py").display().to_string();
    assert_eq!(eco.apps[0].bin, Path::new("/bin/sh"));
    assert_eq!(eco.apps[0].argv, [job]);
    assert_eq!(
        eco.apps[0].cwd.as_deref(),
        Some(dir.path().join("work").as_path())
    );
    assert_eq!(eco.apps[1].bin, dir.path().join("tool"));
    assert_eq!(eco.apps[1].argv, ["-x"]);
}

#[test]
fn script_errors_name_the_path_tried_and_the_conflict() {
    let (dir, eco) = load_in_dir(
        "[[apps]]\nname = \"chat\"\nscript = \"services/chat.js\"\n",
        &[],
    );
    let err = eco.unwrap_err().to_string();
    let tried = dir.path().join("services/chat.js");
    assert!(
        err.contains("chat") && err.contains(&tried.display().to_string()),
        "{err}"
    );
    let conflict =
        "[[apps]]\nname = \"c\"\nbin = \"/bin/sh\"\nscript = \"c.js\"\ninterpreter = \"node\"\n";
    let err = load_in_dir(conflict, &[("c.js", "")])
        .1
        .unwrap_err()
        .to_string();
    assert!(err.contains("bin may only name the interpreter"), "{err}");
    let unknown = "[[apps]]\nname = \"c\"\nscript = \"c.rb\"\n";
    let err = load_in_dir(unknown, &[("c.rb", "")])
        .1
        .unwrap_err()
        .to_string();
    assert!(err.contains("which interpreter"), "{err}");
    let stray = "[[apps]]\nname = \"c\"\nbin = \"/bin/sh\"\ninterpreter_args = [\"-x\"]\n";
    let err = load_in_dir(stray, &[]).1.unwrap_err().to_string();
    assert!(err.contains("need a script"), "{err}");
    let neither = "[[apps]]\nname = \"c\"\n";
    let err = load_in_dir(neither, &[]).1.unwrap_err().to_string();
    assert!(err.contains("missing bin"), "{err}");
    let no_cwd = "[[apps]]\nname = \"c\"\nbin = \"/bin/sh\"\ncwd = \"nope\"\n";
    let (dir, eco) = load_in_dir(no_cwd, &[]);
    let err = eco.unwrap_err().to_string();
    let tried = dir.path().join("nope").display().to_string();
    assert!(err.contains("cwd") && err.contains(&tried), "{err}");
}

#[test]
fn a_relative_bin_not_found_names_the_absolute_paths_tried() {
    let (dir, eco) = load_in_dir("[[apps]]\nname = \"c\"\nbin = \"bin/svc\"\n", &[]);
    let err = eco.unwrap_err().to_string();
    let tried = dir.path().join("bin/svc").display().to_string();
    assert!(err.contains(&format!("tried {tried}")), "{err}");
    // A bare name: next to main, then each PATH folder, all absolute.
    let err = resolve_bin("no-such-program-sb", Path::new(".")).unwrap_err();
    assert!(err.tried.len() >= 2, "{err}");
    assert!(err.tried.iter().all(|p| p.is_absolute()), "{err}");
    assert!(err.to_string().contains("no-such-program-sb"), "{err}");
}

#[test]
fn node_heap_is_about_ninety_percent_in_mib() {
    assert_eq!(node_heap_mib(200 << 20), 180);
    assert_eq!(node_heap_mib(1 << 30), 921);
    assert_eq!(node_heap_mib(1 << 20), 16);
}

#[test]
fn the_node_app_in_the_docs_loads_as_documented() {
    let doc = include_str!("../../../../docs/ecosystem-node.md");
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ecosystem-node.md has a toml block");
    let (dir, eco) = load_in_dir(block, &[("services/chat.js", "")]);
    let app = &eco.unwrap().apps[0];
    let script = dir.path().join("services/chat.js").display().to_string();
    assert_eq!(
        app.argv,
        [
            "--enable-source-maps",
            "--max-old-space-size=180",
            script.as_str(),
            "--flag"
        ]
    );
}

#[test]
fn only_node_itself_gets_v8_flags() {
    for yes in ["node", "/usr/bin/node", "nodejs", "node20"] {
        assert!(load::is_node(Path::new(yes)), "{yes}");
    }
    for no in ["nodemon", "node-dev", "/usr/bin/nodenv", "deno"] {
        assert!(!load::is_node(Path::new(no)), "{no}");
    }
}

#[test]
fn an_env_key_that_is_not_a_variable_name_is_refused() {
    for key in ["\"A\\nB\"", "\"A=B\"", "\"1X\"", "\"\""] {
        let text = format!("[[apps]]\nname = \"a\"\nbin = \"sh\"\nenv = {{ {key} = \"v\" }}\n");
        let err = load_text(&text, None, &[]).unwrap_err().to_string();
        assert!(
            err.contains("env:") && err.contains("not a variable name"),
            "{key}: {err}"
        );
    }
    let ok = "[[apps]]\nname = \"a\"\nbin = \"sh\"\nenv = { RUST_LOG = \"info\", _X1 = \"v\" }\n";
    assert!(load_text(ok, None, &[]).is_ok());
}
