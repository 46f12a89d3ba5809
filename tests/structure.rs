//! The shape of `src/`: no import cycle among its modules (a module's dependencies are
//! the `crate::<module>` paths it names outside its tests), and no function longer than
//! 80 lines (phases stay one function each).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    (root, files)
}

/// The code of a file without its `#[cfg(test)]` module (tests may use anything).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("#[cfg(test)]").next().unwrap().to_owned()
}

/// `crate::a::b`, and `a` inside `use crate::{a::x, b}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            for item in group.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let (root, files) = src();
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_owned()
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(f);
        if m == "lib" || m == "main" {
            continue;
        }
        graph
            .entry(m.clone())
            .or_default()
            .extend(crate_paths(&code(f)));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (m, deps) in graph.iter_mut() {
        deps.retain(|d| d != m && modules.contains(d));
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &g[at] {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = module_graph();
    assert!(
        graph.len() > 10,
        "the module scan found too little: {graph:?}"
    );
    assert!(
        graph["service"].contains("rotate"),
        "the scan must see dependencies: {graph:?}"
    );
    let cycles: Vec<Vec<String>> = graph.keys().filter_map(|m| cycle_from(&graph, m)).collect();
    assert!(
        cycles.is_empty(),
        "import cycles among src/ modules: {cycles:?}"
    );
}

#[test]
fn the_scanner_finds_a_cycle_when_there_is_one() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        cycle_from(&graph, "a"),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::{cookies::X, names};\nlet x = crate::vault::y;"),
        BTreeSet::from(["cookies".into(), "names".into(), "vault".into()])
    );
}

/// Functions (their body from the `fn` line to the closing brace) longer than `max`.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let is_item = [
            "",
            "pub ",
            "pub(crate) ",
            "async ",
            "pub async ",
            "const ",
            "pub const ",
        ]
        .contains(&head);
        if !is_item || t.ends_with(';') {
            continue;
        }
        let (mut depth, mut opened) = (0i64, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            opened |= l.contains('{');
            if opened && depth <= 0 {
                let n = j - i + 1;
                if n > max {
                    let name = t[at + 3..]
                        .split(['(', '<'])
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    out.push((name, n));
                }
                break;
            }
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let (root, files) = src();
    let mut long = Vec::new();
    for f in &files {
        for (name, n) in long_functions(&code(f), 80) {
            long.push(format!(
                "{}: {name} ({n} lines)",
                f.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "split these into phases or helpers: {long:#?}"
    );
    let sample = format!("fn f() {{\n{}}}\n", "    x();\n".repeat(81));
    assert_eq!(
        long_functions(&sample, 80).len(),
        1,
        "the length check must see a long function"
    );
}
