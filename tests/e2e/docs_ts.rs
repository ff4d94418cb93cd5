//! Every JavaScript/TypeScript block of the README and the docs compiled by
//! `tsc --strict` against clients/js's published types, as a front-end
//! developer pasting it would (`scripts/deploy-tools.sh` installs TypeScript
//! in target/tsc).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ```js / ```ts blocks of `file`: (first line number, text).
fn blocks(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if ["```js", "```ts", "```javascript", "```typescript"]
                .contains(&fence.trim_end()) =>
            {
                current = Some((n + 2, String::new()));
            }
            Some(_) if fence.starts_with("```") => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_js_block_in_the_docs_compiles_under_tsc_strict() {
    let tsc = root().join("target/tsc/node_modules/.bin/tsc");
    if !tsc.exists() {
        eprintln!(
            "skipped: {} is not installed (scripts/deploy-tools.sh installs it)",
            tsc.display()
        );
        return;
    }
    let mut files: Vec<PathBuf> = vec![
        root().join("README.md"),
        root().join("clients/js/README.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let types = root()
        .join("clients/js/switchboard.d.ts")
        .canonicalize()
        .unwrap();
    let mut names = Vec::new();
    for file in &files {
        for (line, body) in blocks(file) {
            let name = format!("{}_{line}.ts", file.file_stem().unwrap().to_string_lossy());
            std::fs::write(dir.path().join(&name), body).unwrap();
            names.push((name, format!("{}:{line}", file.display())));
        }
    }
    assert!(!names.is_empty(), "the README has an example");
    let types = types.display();
    std::fs::write(
        dir.path().join("tsconfig.json"),
        format!(
            r#"{{"compilerOptions": {{"strict": true, "noEmit": true, "target": "es2022",
  "module": "esnext", "moduleResolution": "bundler", "lib": ["es2022", "dom"],
  "skipLibCheck": false, "paths": {{"@switchboard/client": ["{types}"], "/switchboard.js": ["{types}"]}}}},
  "include": ["*.ts"]}}"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&tsc)
        .args(["-p", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    for (name, origin) in &names {
        said = said.replace(name.as_str(), origin);
    }
    assert!(out.status.success(), "tsc --strict:\n{said}");
    // tsc can fail: an untyped catch variable is refused.
    std::fs::write(
        dir.path().join("bad.ts"),
        "export {};\ntry { } catch (e) { console.log(e.code); }\n",
    )
    .unwrap();
    let bad = std::process::Command::new(&tsc)
        .args(["-p", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success(), "tsc refuses what --strict refuses");
}
