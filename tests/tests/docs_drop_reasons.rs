//! The README and docs/ name exactly the drop reasons the metrics export. The labels come from the
//! code's enums (the replay stage's `RequestDrop`, the extraction stage's `http::DropReason`), so
//! a reason added there fails this test until the documentation lists it.
//!
//! Where the documentation names them: a Markdown table whose header's first cell is
//! `drop reason`, one reason per row, as the first cell in backticks. README.md and
//! docs/operations.md must each have one; every such table in README.md or docs/*.md must list
//! every exported reason, once, and nothing else.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use shadow_daemon::{http::DropReason, metrics::RequestDrop};

fn exported() -> BTreeSet<&'static str> {
    RequestDrop::ALL.iter().map(|r| r.as_str()).chain(DropReason::ALL.iter().map(|r| r.as_str())).collect()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
}

/// Each drop-reason table of `text` as (line number of its header, the reasons of its rows).
fn drop_reason_tables(text: &str) -> Vec<(usize, Vec<String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tables = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let is_header = lines[i].trim_start().starts_with('|')
            && cells(lines[i]).first().is_some_and(|c| c.eq_ignore_ascii_case("drop reason"));
        if !is_header {
            i += 1;
            continue;
        }
        let header = i + 1;
        i += 2; // the header and its |---| line
        let mut rows = Vec::new();
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            let first = cells(lines[i]).into_iter().next().unwrap_or_default();
            let name = first.strip_prefix('`').and_then(|c| c.strip_suffix('`'));
            match name {
                Some(n) if !n.is_empty() && !n.contains('`') => rows.push(n.to_owned()),
                _ => panic!("line {}: a drop-reason row starts with one reason in backticks, not {first:?}", i + 1),
            }
            i += 1;
        }
        tables.push((header, rows));
    }
    tables
}

#[test]
fn readme_and_docs_name_exactly_the_exported_drop_reasons() {
    let want = exported();
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        let tables = drop_reason_tables(&text);
        if (name == "README.md" || name == "docs/operations.md") && tables.is_empty() {
            problems.push(format!("{name}: no `| drop reason |` table"));
        }
        for (line, rows) in tables {
            let got: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
            let missing: Vec<&&str> = want.difference(&got).collect();
            let unknown: Vec<&&str> = got.difference(&want).collect();
            let twice = rows.len() - got.len();
            if !missing.is_empty() || !unknown.is_empty() || twice > 0 {
                problems.push(format!(
                    "{name}:{line}: missing {missing:?}, not exported {unknown:?}, {twice} listed twice"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "drop reasons in the documentation:\n  {}", problems.join("\n  "));
}

#[test]
fn a_label_means_one_reason() {
    // The ledger counts both stages' reasons under one label set: a label in both would add two
    // different causes into one series.
    let replay: BTreeSet<&str> = RequestDrop::ALL.iter().map(|r| r.as_str()).collect();
    let extraction: BTreeSet<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(replay.len(), RequestDrop::ALL.len());
    assert_eq!(extraction.len(), DropReason::ALL.len());
    let both: Vec<&&str> = replay.intersection(&extraction).collect();
    assert!(both.is_empty(), "labels of both stages: {both:?}");
}

#[test]
fn tables_are_read_row_by_row() {
    let t = "x\n| Drop reason | why |\n|---|---|\n| `gap` | a |\n| `parse_error` | b |\n\n| reason | x |\n|--|--|\n| `no` | c |\n";
    assert_eq!(drop_reason_tables(t), vec![(2, vec!["gap".to_owned(), "parse_error".to_owned()])]);
}
