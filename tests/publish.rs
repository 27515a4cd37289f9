//! The published crates, as `cargo metadata` describes them: each says what a registry shows,
//! and nothing they build with (their dependencies at the locked versions) needs a newer Rust
//! than the `rust-version` they promise. Only one toolchain can be installed where CI runs, so
//! this and clippy's `incompatible_msrv` lint (which checks pq's own use of the standard
//! library against that version) are the MSRV check.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--all-features",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON")
}

/// `1.85` or `1.85.0` as numbers, missing parts 0.
fn version(text: &str) -> [u64; 3] {
    let mut parts = text.split('.').map(|part| part.parse().expect("a number"));
    [(); 3].map(|()| parts.next().unwrap_or(0))
}

/// The workspace's crates that are published (those without `publish = false`).
fn published(metadata: &Value) -> Vec<&Value> {
    let members: HashSet<&str> = metadata["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap_or("")))
        .filter(|p| p["publish"] != serde_json::json!([]))
        .collect()
}

#[test]
fn every_published_crate_says_what_a_registry_shows() {
    let metadata = metadata();
    let crates = published(&metadata);
    let names: Vec<&str> = crates.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    for package in crates {
        let name = &package["name"];
        for field in ["description", "license", "repository", "rust_version"] {
            let value = package[field].as_str().unwrap_or("");
            assert!(!value.is_empty(), "{name} has no {field}");
        }
        for field in ["keywords", "categories"] {
            let values = package[field].as_array().map_or(0, Vec::len);
            assert!((1..=5).contains(&values), "{name}: {values} {field}");
        }
    }
}

#[test]
fn no_dependency_of_a_published_crate_needs_a_newer_rust_than_it_promises() {
    let metadata = metadata();
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("an id"), p))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("the resolved graph")
        .iter()
        .map(|n| (n["id"].as_str().expect("an id"), n))
        .collect();
    for package in published(&metadata) {
        let promised = package["rust_version"].as_str().expect("a rust-version");
        // What it builds with: normal and build dependencies, all features on (as docs.rs
        // and `--all-features` build it); dev-dependencies are for the workspace's tests.
        let root = package["id"].as_str().expect("an id");
        let mut seen = HashSet::new();
        let mut next = vec![root];
        let mut newer = Vec::new();
        while let Some(id) = next.pop() {
            if !seen.insert(id) {
                continue;
            }
            let dependency = packages[id];
            if let Some(needs) = dependency["rust_version"].as_str() {
                if version(needs) > version(promised) {
                    newer.push(format!(
                        "{} {} needs {needs}",
                        dependency["name"], dependency["version"]
                    ));
                }
            }
            for edge in nodes[id]["deps"].as_array().expect("deps") {
                let dev_only = edge["dep_kinds"]
                    .as_array()
                    .expect("kinds")
                    .iter()
                    .all(|kind| kind["kind"] == "dev");
                if !dev_only {
                    next.push(edge["pkg"].as_str().expect("a package id"));
                }
            }
        }
        newer.sort();
        assert!(
            newer.is_empty(),
            "{} promises Rust {promised}, but: {}",
            package["name"],
            newer.join(", ")
        );
    }
}
