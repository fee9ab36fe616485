//! The module layering stays one-way: cli → controller → probe, emit → api, with `error` and
//! `telemetry` usable by all. Reads every `crate::` path in `src/` and fails on an edge that
//! runs back up.

use std::path::{Path, PathBuf};

/// Rank of each top-level module; a module may use modules of a lower rank, its own, and the
/// shared ones (rank 0).
fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "telemetry" => 0,
        "api" => 1,
        "probe" | "emit" => 2,
        "controller" => 3,
        "cli" => 4,
        _ => return None,
    })
}

/// The top-level module a source file belongs to (`src/probe/tls.rs` → `probe`).
fn owner(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every `crate::<module>` a file refers to that breaks the layering, as `file: a -> b`.
fn back_edges(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(from) = owner(path) else { continue };
        let Some(from_rank) = rank(&from) else {
            continue;
        };
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                // `netreach::`-style paths of another crate do not end in `crate::`.
                if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue;
                }
                let to: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let Some(to_rank) = rank(&to) else { continue };
                if to != from && to_rank != 0 && to_rank >= from_rank {
                    found.push(format!(
                        "{}:{}: {from} -> {to}",
                        path.display(),
                        line_no + 1
                    ));
                }
            }
        }
    }
    found
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source is UTF-8");
            out.push((path.strip_prefix(base).unwrap().to_path_buf(), text));
        }
    }
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&base, &base, &mut files);
    assert!(
        files.len() > 20,
        "read {} files from {}",
        files.len(),
        base.display()
    );
    let edges = back_edges(&files);
    assert!(
        edges.is_empty(),
        "imports that run back up the layers:\n{}",
        edges.join("\n")
    );
}

#[test]
fn an_api_module_importing_probe_is_caught() {
    let files = vec![
        (
            PathBuf::from("api/check.rs"),
            "use crate::api::result::ProbeResult;\nuse crate::probe::plan::Target;\n".to_owned(),
        ),
        (
            PathBuf::from("probe/tls.rs"),
            "let text = crate::cli::error_chain(&e); // crate::controller in a comment\n"
                .to_owned(),
        ),
        (
            PathBuf::from("probe/net.rs"),
            "use crate::emit::Input;\nuse crate::error::error_chain;\n".to_owned(),
        ),
        (
            PathBuf::from("cli/mod.rs"),
            "use crate::controller::Context;\nuse crate::probe::dns;\n".to_owned(),
        ),
    ];
    assert_eq!(
        back_edges(&files),
        [
            "api/check.rs:2: api -> probe",
            "probe/tls.rs:1: probe -> cli",
            "probe/net.rs:1: probe -> emit",
        ]
    );
}
