//! The house rules, checked on the sources: no import circle between the modules of any crate
//! of the workspace, and the master's pure layer (`einhorn_master::pure`) does no I/O.
//!
//! Both checks read the sources with `syn`, the parser the proc-macro ecosystem uses, so
//! comments, docs and strings never count, and paths inside macro calls do (`format!`,
//! `tokio::select!`).
//!
//! # What counts as an import
//! Every path that names a module of the same crate: `use crate::a::B`, `crate::a::f()`,
//! `super::B`, `self::child::C`, and `child::C` for a child module the file declares. A
//! module's path to one of its own descendants is containment, not an import (a parent
//! declares and re-exports its children); a child's path to its parent is an import. Code under
//! `#[cfg(test)]` is left out: a test module may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module: its path inside the crate (`machine::upgrade`; the root is empty) and its file.
#[derive(Debug)]
struct Module {
    file: PathBuf,
    /// Every path this module's code names, as written (`crate::a::B`, `super::x`, `x::y`).
    paths: Vec<Vec<String>>,
    /// The child modules it declares.
    children: BTreeSet<String>,
}

/// Every module of one crate, read from its root file through its `mod` declarations.
fn read_crate(root: &Path) -> BTreeMap<String, Module> {
    let mut modules = BTreeMap::new();
    read_module(root, String::new(), true, &mut modules);
    modules
}

fn read_module(file: &Path, name: String, owns_dir: bool, out: &mut BTreeMap<String, Module>) {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let syntax =
        syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()));
    let mut collector = Collector::default();
    collector.visit_file(&syntax);
    // Where this module's children live: beside a `lib.rs`/`main.rs`/`mod.rs`, else in a folder
    // named after the module.
    let dir = if owns_dir {
        file.parent().unwrap().to_path_buf()
    } else {
        file.with_extension("")
    };
    let mut children = BTreeSet::new();
    for child in collector.file_mods {
        let child_name = if name.is_empty() {
            child.clone()
        } else {
            format!("{name}::{child}")
        };
        let flat = dir.join(format!("{child}.rs"));
        let nested = dir.join(&child).join("mod.rs");
        let (path, owns) = if flat.exists() {
            (flat, false)
        } else {
            (nested, true)
        };
        read_module(&path, child_name, owns, out);
        children.insert(child);
    }
    out.insert(
        name,
        Module {
            file: file.to_path_buf(),
            paths: collector.paths,
            children,
        },
    );
}

/// Collects the paths a file names, and the `mod x;` it declares, outside `#[cfg(test)]`.
#[derive(Default)]
struct Collector {
    paths: Vec<Vec<String>>,
    file_mods: Vec<String>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<TokenStream>()
                .is_ok_and(|tokens| tokens.to_string().split_whitespace().any(|t| t == "test"))
    })
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_cfg_test(attrs) {
            return;
        }
        if let syn::Item::Mod(m) = item
            && m.content.is_none()
        {
            self.file_mods.push(m.ident.to_string());
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.paths
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        use_paths(&item.tree, &mut prefix, &mut self.paths);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        macro_paths(mac.tokens.clone(), &mut self.paths);
    }
}

/// Expands `use a::{b, c::{d, e as f}}` into `a::b`, `a::c::d`, `a::c::e`.
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(with(prefix, &n.ident)),
        syn::UseTree::Rename(r) => out.push(with(prefix, &r.ident)),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_paths(t, prefix, out)),
    }
}

fn with(prefix: &[String], last: &syn::Ident) -> Vec<String> {
    let mut path = prefix.to_vec();
    path.push(last.to_string());
    path
}

/// The `a::b::c` sequences inside a macro call's tokens (`format!`, `matches!`, `select!`).
fn macro_paths(tokens: TokenStream, out: &mut Vec<Vec<String>>) {
    let mut current: Vec<String> = Vec::new();
    let mut colons = 0;
    let flush = |current: &mut Vec<String>, out: &mut Vec<Vec<String>>| {
        if current.len() > 1 {
            out.push(std::mem::take(current));
        }
        current.clear();
    };
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                if colons != 2 {
                    flush(&mut current, out);
                }
                current.push(ident.to_string());
                colons = 0;
            }
            TokenTree::Punct(p) if p.as_char() == ':' && !current.is_empty() => colons += 1,
            TokenTree::Group(group) => {
                flush(&mut current, out);
                colons = 0;
                macro_paths(group.stream(), out);
            }
            _ => {
                flush(&mut current, out);
                colons = 0;
            }
        }
    }
    flush(&mut current, out);
}

/// The module a path names, seen from module `from`: the longest prefix that is a module of
/// the crate, or `None` for a path outside the crate (std, another crate, a local name).
fn resolve(from: &str, path: &[String], modules: &BTreeMap<String, Module>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_owned).collect()
    };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        // A bare path is the crate's only when it starts with a child this module declares.
        Some(first) if modules[from].children.contains(first) => {}
        _ => return None,
    }
    let mut found = base.join("::");
    let mut current = base;
    for segment in rest {
        current.push(segment.clone());
        let name = current.join("::");
        if modules.contains_key(&name) {
            found = name;
        } else {
            break;
        }
    }
    Some(found)
}

fn is_within(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// Imports between sibling modules: `from -> {to: an example path}`.
///
/// A path from module `x` to module `y` is an import between the two children of their closest
/// common ancestor that hold them (`crate::a::b` naming `crate::c::d` is `a -> c`; inside `a`,
/// `a::b` naming `a::e` is `a::b -> a::e`), so a circle is found at every level of the tree.
/// A path to a module's own descendant or ancestor is containment, not an import.
fn imports(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (from, module) in modules {
        for path in &module.paths {
            let Some(to) = resolve(from, path, modules) else {
                continue;
            };
            if is_within(&to, from) || is_within(from, &to) {
                continue;
            }
            let (a, b): (Vec<&str>, Vec<&str>) =
                (from.split("::").collect(), to.split("::").collect());
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            let (from_child, to_child) = (a[..=common].join("::"), b[..=common].join("::"));
            edges
                .entry(from_child)
                .or_default()
                .entry(to_child)
                .or_insert_with(|| format!("{from} names `{}`", path.join("::")));
        }
    }
    edges
}

/// Every import circle (a strongly connected set of two or more modules), each described with
/// the imports that close it.
fn circles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    // Tarjan's algorithm, iterative over a small graph: recursion depth is the module count.
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, node: &'a str) {
            let i = self.index.len();
            self.index.insert(node, i);
            self.low.insert(node, i);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.edges.get(node).into_iter().flat_map(|e| e.keys()) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top);
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !tarjan.index.contains_key(node.as_str()) {
            tarjan.visit(node);
        }
    }
    tarjan
        .found
        .iter()
        .map(|component| {
            let inside: BTreeSet<&str> = component.iter().copied().collect();
            let mut lines = vec![format!("circle: {}", component.join(", "))];
            for from in component {
                for (to, example) in &edges[*from] {
                    if inside.contains(to.as_str()) {
                        lines.push(format!("  {from} -> {to}: {example}"));
                    }
                }
            }
            lines.join("\n")
        })
        .collect()
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The root file of every library and binary in the workspace.
fn crate_roots() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut roots = vec![
        root.join("graceful-listener/src/lib.rs"),
        root.join("master/src/lib.rs"),
        root.join("master/src/main.rs"),
        root.join("test-support/lib.rs"),
    ];
    for dir in [
        "adapters/hyper",
        "adapters/axum",
        "adapters/warp",
        "adapters/actix",
        "demo",
    ] {
        let src = root.join(dir).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n == "lib.rs" || n == "main.rs")
            {
                roots.push(path);
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            roots.extend(bins.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    roots
}

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let mut report = Vec::new();
    let mut modules_read = 0;
    for root in crate_roots() {
        let modules = read_crate(&root);
        modules_read += modules.len();
        for circle in circles(&imports(&modules)) {
            report.push(format!("{}:\n{circle}", root.display()));
        }
    }
    // The walk must have found the crates' modules, or the check proves nothing.
    assert!(
        modules_read > 60,
        "only {modules_read} modules read: the walk is broken"
    );
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

/// Paths the master's pure layer may not name: I/O, processes, system calls, the clock, and the
/// process shell around it.
fn forbidden(path: &[String], shell_modules: &BTreeSet<String>) -> Option<&'static str> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["tokio", ..] => Some("tokio"),
        ["std", "process", ..] => Some("std::process"),
        ["std", "net", ..] => Some("std::net"),
        ["std", "fs", ..] => Some("std::fs"),
        ["std", "os", ..] => Some("std::os (file descriptors, Unix extensions)"),
        ["std", "env", ..] => Some("std::env (the process's environment)"),
        ["std", "thread", ..] => Some("std::thread"),
        ["std", "io", "stdin" | "stdout" | "stderr", ..] => Some("std's standard streams"),
        // A signal's name and number are data; sending one is a system call.
        ["nix", "sys", "signal", "Signal", ..] => None,
        ["nix", ..] => Some("nix (system calls)"),
        ["libc", ..] => Some("libc (system calls)"),
        ["socket2", ..] => Some("socket2"),
        [.., "Instant" | "SystemTime", "now"] => Some("a clock read (time is passed in)"),
        ["crate", first, ..] if shell_modules.contains(*first) => Some("the process shell"),
        _ => None,
    }
}

#[test]
fn the_masters_pure_layer_does_no_io() {
    let modules = read_crate(&workspace_root().join("master/src/lib.rs"));
    let shell: BTreeSet<String> = modules
        .keys()
        .filter(|name| !name.is_empty() && !name.contains("::") && *name != "pure")
        .cloned()
        .collect();
    let pure: Vec<(&String, &Module)> = modules
        .iter()
        .filter(|(name, _)| is_within(name, "pure"))
        .collect();
    assert!(
        pure.len() >= 8,
        "the pure layer has {} modules: is it still `pure`?",
        pure.len()
    );
    let mut found = Vec::new();
    for (name, module) in pure {
        for path in &module.paths {
            if let Some(why) = forbidden(path, &shell) {
                found.push(format!(
                    "{} ({name}) names `{}`: {why}",
                    module.file.display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the pure layer does I/O:\n{}",
        found.join("\n")
    );
}

// The checks themselves, on crates made for them: each must catch what it is for.

fn scratch_crate(files: &[(&str, &str)]) -> (tempfile::TempDir, BTreeMap<String, Module>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let modules = read_crate(&dir.path().join("lib.rs"));
    (dir, modules)
}

#[test]
fn a_circle_through_a_use_group_a_macro_or_super_is_found() {
    let (_dir, modules) = scratch_crate(&[
        ("lib.rs", "mod a; mod b; mod c;"),
        ("a.rs", "use crate::{b::{B}};"),
        ("b.rs", "fn f() { let _ = format!(\"{}\", crate::c::C); }"),
        ("c.rs", "mod inner; pub struct C;"),
        ("c/inner.rs", "fn g() { super::super::a::A; }"),
    ]);
    let found = circles(&imports(&modules));
    assert_eq!(found.len(), 1, "{found:?}");
    // c's child names a: c as a whole is in the circle.
    assert!(found[0].starts_with("circle: a, b, c\n"), "{}", found[0]);
}

#[test]
fn containment_docs_and_test_code_are_not_imports() {
    let (_dir, modules) = scratch_crate(&[
        ("lib.rs", "mod a; mod b;"),
        // a parent naming its child, and a child naming its parent: no circle.
        ("a.rs", "mod child; pub use self::child::X; pub struct A;"),
        ("a/child.rs", "use super::A; pub struct X;"),
        // b names a in a doc, a comment, a string and a test module only.
        (
            "b.rs",
            "//! [`crate::a::A`]\n// crate::a::A\nfn f() { let _ = \"crate::a\"; }\n\
             #[cfg(test)] mod tests { use crate::a::A; }",
        ),
    ]);
    let edges = imports(&modules);
    assert!(circles(&edges).is_empty());
    assert!(edges.is_empty(), "{edges:?}");
}

#[test]
fn the_pure_layers_rules_name_what_they_refuse() {
    let shell: BTreeSet<String> = ["driver".to_owned()].into();
    let refused = |p: &str| {
        forbidden(
            &p.split("::").map(str::to_owned).collect::<Vec<_>>(),
            &shell,
        )
    };
    assert_eq!(refused("tokio::spawn"), Some("tokio"));
    assert_eq!(refused("std::process::Command"), Some("std::process"));
    assert_eq!(refused("std::fs::read"), Some("std::fs"));
    assert_eq!(refused("std::net::TcpStream"), Some("std::net"));
    assert_eq!(
        refused("nix::sys::signal::kill"),
        Some("nix (system calls)")
    );
    assert_eq!(
        refused("Instant::now"),
        Some("a clock read (time is passed in)")
    );
    assert_eq!(refused("crate::driver::run"), Some("the process shell"));
    assert_eq!(refused("nix::sys::signal::Signal"), None);
    assert_eq!(refused("crate::pure::wire::Reply"), None);
    assert_eq!(refused("std::time::Duration"), None);
}
