//! Every metric family the workspace records has its `# HELP` line in the one
//! table (`switchboard_svc::metrics::HELP`) and a row in docs/observability.md.
//! A family added to a crate's `metrics.rs` without them fails here.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `"sb_…"` literals of every crate's `src/metrics.rs` (svc's own, which
/// holds the HELP table, aside), label names left out.
fn families() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        if krate.file_name() == "svc" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(krate.path().join("src/metrics.rs")) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.contains("_LABEL")) {
            for piece in line.split("\"sb_").skip(1) {
                if let Some(end) = piece.find('"') {
                    out.insert(format!("sb_{}", &piece[..end]));
                }
            }
        }
    }
    out
}

/// The family names docs/observability.md shows, with `a_{b,c}_d` expanded.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/observability.md")).unwrap();
    let mut out = BTreeSet::new();
    for piece in text.split("sb_").skip(1) {
        let len = piece
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_{},".contains(c)))
            .unwrap_or(piece.len());
        let name = format!("sb_{}", &piece[..len]);
        match (name.find('{'), name.find('}')) {
            (Some(open), Some(close)) => {
                for alt in name[open + 1..close].split(',') {
                    out.insert(format!("{}{alt}{}", &name[..open], &name[close + 1..]));
                }
            }
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_metric_family_has_its_help_and_a_docs_row() {
    let families = families();
    assert!(families.len() > 30, "found only {families:?}");
    let help: BTreeSet<&str> = switchboard_bus::svc::metrics::HELP
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let documented = documented();
    let no_help: Vec<&String> = families
        .iter()
        .filter(|f| !help.contains(f.as_str()))
        .collect();
    let no_doc: Vec<&String> = families
        .iter()
        .filter(|f| !documented.contains(*f))
        .collect();
    assert!(
        no_help.is_empty() && no_doc.is_empty(),
        "families without a HELP line in switchboard_svc::metrics::HELP: {no_help:?}\n\
         families without a row in docs/observability.md: {no_doc:?}"
    );
}
