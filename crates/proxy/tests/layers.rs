//! The layering of weft-proxy's modules, checked: each module imports only
//! the layers below it (the table is ARCHITECTURE.md's), and the HTTP/2
//! engine crate depends on no other part of weft. A change that needs a new
//! arrow changes this table and ARCHITECTURE.md together, on purpose.

use std::{collections::BTreeSet, path::Path};

/// Each module (a file `src/<m>.rs` and its folder `src/<m>/`) and the
/// modules of this crate it may import.
const LAYERS: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("fuzzing", &["transport", "discovery"]),
    ("config", &[]),
    ("drain", &[]),
    ("error", &["core"]),
    ("grpc_client", &[]),
    ("identity", &["grpc_client"]),
    ("policy", &["core", "config", "grpc_client"]),
    ("telemetry", &["core", "identity", "policy"]),
    ("health", &["grpc_client"]),
    ("discovery", &["core", "grpc_client"]),
    ("transport", &["core", "config"]),
    (
        "endpoint",
        &[
            "core",
            "config",
            "error",
            "discovery",
            "identity",
            "telemetry",
            "transport",
        ],
    ),
    (
        "balance",
        &[
            "core",
            "config",
            "error",
            "discovery",
            "endpoint",
            "telemetry",
            "transport",
        ],
    ),
    (
        "route",
        &[
            "core",
            "config",
            "error",
            "discovery",
            "endpoint",
            "balance",
            "telemetry",
            "transport",
        ],
    ),
    ("inbound", &["core", "transport"]),
    ("outbound", &["core", "route"]),
    (
        "http",
        &[
            "core",
            "error",
            "route",
            "balance",
            "endpoint",
            "policy",
            "telemetry",
            "transport",
        ],
    ),
    ("tcp", &["core", "route", "telemetry"]),
    (
        "server",
        &[
            "core",
            "config",
            "drain",
            "http",
            "identity",
            "inbound",
            "outbound",
            "policy",
            "route",
            "tcp",
            "telemetry",
            "transport",
        ],
    ),
];

/// Every `crate::<module>` a source file names (in `use` lists and paths).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // `use crate::{a::x, b, c::{...}}`: the first segment of each item.
            let mut depth = 0;
            let mut item = String::new();
            let mut at_start = true;
            for c in list.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if at_start && !item.is_empty() {
                            found.insert(item.clone());
                        }
                        at_start = true;
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        found.insert(item.clone());
                        at_start = false;
                    }
                }
            }
            if at_start && !item.is_empty() {
                found.insert(item);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, allowed) in LAYERS {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        assert!(file.is_file(), "{} is missing: update LAYERS", file.display());
        files.push(file);
        if src.join(module).is_dir() {
            sources(&src.join(module), &mut files);
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for used in imports(&text) {
                if used != *module && !allowed.contains(&used.as_str()) {
                    violations.push(format!(
                        "{} imports crate::{used}",
                        f.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_is_in_the_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).chain(["app", "lib", "main"]).collect();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_string();
        assert!(known.contains(name.as_str()), "src/{name} has no place in LAYERS");
    }
}

#[test]
fn the_http2_engine_depends_on_no_other_part_of_weft() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../splice/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let deps = text.split("[dependencies]").nth(1).unwrap_or("");
    assert!(!deps.contains("weft"), "weft-splice must stay protocol only:\n{deps}");
}

#[test]
fn the_import_reader_reads_nested_lists() {
    let found = imports(
        "use crate::{\n    balance::{Balancer, x},\n    core::lock,\n    error,\n};\nlet x = crate::route::Router::new();",
    );
    let want: BTreeSet<String> = ["balance", "core", "error", "route"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
}
