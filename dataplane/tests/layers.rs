//! The dataplane's modules are layered: each imports only modules of the layers below
//! it, so none reaches back up (issue 14, "Structure"). The runtime is the one module
//! that composes the others; the proxy and the admin server take a context and a view
//! they define themselves.
//!
//! This reads every module's source with `syn` and collects the `crate::<module>` paths
//! it names outside its tests: in `use` items, in expressions and types, and inside
//! macro invocations (`tracing::info!`, `tokio::select!`). A new module must be given a
//! layer here, and an import against the order fails with the module and the path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Bottom to top. A module may import modules of earlier layers only.
const LAYERS: &[&[&str]] = &[
    // Connection primitives, config sources, bodies, metrics, and the pure session
    // cryptography: nothing of the crate below them.
    &[
        "bind", "source", "body", "metrics", "canary", "htpasswd", "session",
    ],
    // TLS configs, the proxy's error answers, tracing spans, route tables.
    &["tls", "error", "trace", "routes"],
    // Request framing and hygiene, rate limits, filters, and the pool of upstream
    // connections by endpoint identity (limits and passive health with it).
    &["framing", "hygiene", "ratelimit", "filters", "pool"],
    // Active health (connectivity verifiers) and the external-auth client.
    &["health", "extauth"],
    // Load balancing over healthy endpoints; the access phase.
    &["balance", "access"],
    // The snapshot: a pure build of everything a config needs.
    &["snapshot"],
    // The proxy, over a `proxy::Context` it defines.
    &["proxy"],
    // Client connections; the admin server, over an `admin::View` it defines.
    &["listener", "admin"],
    // The composition root.
    &["runtime"],
    // Entry points over the runtime, and the fuzz harness.
    &["cluster", "fuzz"],
];

/// Not modules of the library: the binary, and the crate root that declares the rest.
const ROOTS: &[&str] = &["lib", "main"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's modules and the files each is made of.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src()).expect("src/ is readable") {
        let path = entry.expect("a src/ entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = Vec::new();
            for e in std::fs::read_dir(&path).expect("a module directory") {
                let p = e.expect("an entry").path();
                // One level of submodules is what this reader knows how deep to read.
                assert!(
                    !p.is_dir(),
                    "{} nests modules deeper than the reader follows",
                    p.display()
                );
                if p.extension().is_some_and(|e| e == "rs") {
                    files.push(p);
                }
            }
            out.entry(name).or_insert_with(Vec::new).extend(files);
        } else if path.extension().is_some_and(|e| e == "rs") && !ROOTS.contains(&name.as_str()) {
            // `x.rs` with submodules in `x/`: both are module `x`.
            out.entry(name).or_insert_with(Vec::new).push(path);
        }
    }
    out
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| matches!(&m, syn::Meta::Path(p) if p.is_ident("test")))
    })
}

/// The crate-level names one file reaches outside `#[cfg(test)]` items: through
/// `crate::<name>`, or through as many `super::` as the file is deep.
#[derive(Default)]
struct Imports {
    /// How deep the file's module is: 1 for `src/x.rs` and `src/x/mod.rs`, 2 for
    /// `src/x/y.rs`.
    depth: usize,
    found: BTreeSet<(String, String)>,
    /// Ways of naming the crate root that hide what is imported (`use crate as c`,
    /// `use crate::*`, `extern crate self as c`): refused outright.
    hidden: Vec<String>,
}

impl Imports {
    /// The crate-level name a path starting with `segments` reaches, if it goes
    /// through the crate root.
    fn root_name<'a>(&self, segments: &'a [String]) -> Option<&'a String> {
        if segments.first().is_some_and(|s| s == "crate") {
            return segments.get(1);
        }
        let supers = segments.iter().take_while(|s| *s == "super").count();
        (supers > 0 && supers >= self.depth)
            .then(|| segments.get(supers))
            .flatten()
    }

    /// Whether `segments` is exactly the crate root.
    fn is_root(&self, segments: &[String]) -> bool {
        segments == ["crate"]
            || (segments.len() == self.depth && segments.iter().all(|s| s == "super"))
    }

    fn reach(&mut self, segments: &[String]) {
        if let Some(name) = self.root_name(segments)
            && name != "self"
        {
            let path = segments.join("::");
            self.found.insert((name.clone(), path));
        }
    }

    /// Paths inside macro bodies and attribute arguments: every `crate ::` or
    /// `super ::` chain, and `crate::{a, b::c}` groups.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let is_sep = |i: usize| {
            matches!((trees.get(i), trees.get(i + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut segments = vec![id.to_string()];
                    let mut at = i + 1;
                    while is_sep(at) {
                        match trees.get(at + 2) {
                            Some(TokenTree::Ident(next)) => {
                                segments.push(next.to_string());
                                at += 3;
                            }
                            Some(TokenTree::Group(g)) if self.is_root(&segments) => {
                                self.use_group(g.stream(), &segments);
                                at += 3;
                                break;
                            }
                            _ => break,
                        }
                    }
                    self.reach(&segments);
                    i = at;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// `crate::{a, b::c}` inside a macro: the first name of each branch.
    fn use_group(&mut self, tokens: TokenStream, root: &[String]) {
        let mut first = true;
        for t in tokens {
            match &t {
                TokenTree::Ident(name) if first => {
                    let mut segments = root.to_vec();
                    segments.push(name.to_string());
                    self.reach(&segments);
                    first = false;
                }
                TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                _ => {}
            }
        }
    }

    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &[String]) {
        let with = |ident: &syn::Ident| {
            let mut segments = prefix.to_vec();
            segments.push(ident.to_string());
            segments
        };
        match tree {
            syn::UseTree::Path(p) => {
                let segments = with(&p.ident);
                self.reach(&segments);
                self.use_tree(&p.tree, &segments);
            }
            syn::UseTree::Name(n) => self.reach(&with(&n.ident)),
            syn::UseTree::Rename(r) => {
                let segments = with(&r.ident);
                if self.is_root(&segments) || (r.ident == "self" && self.is_root(prefix)) {
                    self.hidden
                        .push(format!("use {} as {}", segments.join("::"), r.rename));
                }
                self.reach(&segments);
            }
            syn::UseTree::Glob(_) if self.is_root(prefix) => {
                self.hidden.push(format!("use {}::*", prefix.join("::")));
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix);
                }
            }
            syn::UseTree::Glob(_) => {}
        }
    }
}

impl<'ast> Visit<'ast> for Imports {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Const(c) => &c.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&u.tree, &[]);
    }

    fn visit_item_extern_crate(&mut self, e: &'ast syn::ItemExternCrate) {
        if e.ident == "self" {
            self.hidden.push("extern crate self".to_owned());
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.reach(&segments);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_meta_list(&mut self, m: &'ast syn::MetaList) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_meta_list(self, m);
    }
}

/// How deep the module in `file` is (see [`Imports::depth`]).
fn depth_of(file: &Path) -> usize {
    let parent = file.parent().expect("a file in src/");
    let in_dir = parent != src();
    match (in_dir, file.file_stem().and_then(|n| n.to_str())) {
        (false, _) | (true, Some("mod")) => 1,
        (true, _) => 2,
    }
}

/// Every crate-level name one module's files reach, and the ways they hide the root.
fn imports_of(files: &[PathBuf]) -> (BTreeSet<(String, String)>, Vec<String>) {
    let mut found = BTreeSet::new();
    let mut hidden = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("a readable source file");
        let file = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        let mut v = Imports {
            depth: depth_of(f),
            ..Imports::default()
        };
        v.visit_file(&file);
        found.extend(v.found);
        hidden.extend(
            v.hidden
                .into_iter()
                .map(|h| format!("{}: {h}", f.display())),
        );
    }
    (found, hidden)
}

/// Names the crate root re-exports (`pub use runtime::{Handle, ..}` in `lib.rs`), by
/// the module they come from: `crate::Handle` is an import of `runtime`.
fn root_reexports() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let file = syn::parse_file(&text).expect("lib.rs parses");
    fn walk(tree: &syn::UseTree, module: Option<&str>, out: &mut BTreeMap<String, String>) {
        match tree {
            syn::UseTree::Path(p) => {
                let first = p.ident.to_string();
                walk(&p.tree, Some(module.unwrap_or(first.as_str())), out);
            }
            syn::UseTree::Name(n) => {
                if let Some(m) = module {
                    out.insert(n.ident.to_string(), m.to_owned());
                }
            }
            syn::UseTree::Rename(r) => {
                if let Some(m) = module {
                    out.insert(r.rename.to_string(), m.to_owned());
                }
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| walk(t, module, out)),
            syn::UseTree::Glob(_) => {}
        }
    }
    let mut out = BTreeMap::new();
    for item in &file.items {
        if let syn::Item::Use(u) = item {
            walk(&u.tree, None, &mut out);
        }
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let modules = modules();
    let reexports = root_reexports();
    let mut wrong = Vec::new();
    for (module, files) in &modules {
        let Some(own) = layer_of(module) else {
            wrong.push(format!(
                "{module}: a module with no layer; add it to LAYERS"
            ));
            continue;
        };
        let (found, hidden) = imports_of(files);
        wrong.extend(
            hidden
                .into_iter()
                .map(|h| format!("{h}: names the crate root")),
        );
        for (name, path) in found {
            let Some(target) = (if modules.contains_key(&name) {
                Some(name)
            } else {
                reexports.get(&name).cloned()
            }) else {
                continue;
            };
            if target == *module {
                continue;
            }
            match layer_of(&target) {
                Some(l) if l < own => {}
                _ => wrong.push(format!(
                    "{module} (layer {own}) names {path}, which is not below it"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn every_layer_names_a_module_that_exists() {
    let modules = modules();
    let mut seen = BTreeSet::new();
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            modules.contains_key(*name),
            "LAYERS names {name}, which is no module"
        );
        assert!(seen.insert(*name), "LAYERS names {name} twice");
    }
}

/// The reader itself: it must see each kind of path this crate uses, or the first test
/// would pass by reading nothing.
#[test]
fn the_reader_finds_uses_paths_and_macro_paths() {
    let file: syn::File = syn::parse_quote! {
        use crate::pool::Endpoint;
        use crate::{error::ProxyError, metrics};
        use super::balance::FarmRt;
        #[derive(Debug, thiserror::Error)]
        #[error("{}", crate::routes::NAME)]
        struct E;
        fn f() {
            let _ = crate::trace::Tracer::start();
            let _ = super::tls::config();
            tracing::info!(x = %crate::bind::thing());
            tokio::select! { _ = crate::{health::a, framing::b}() => {} }
        }
        #[cfg(test)]
        mod tests {
            use crate::runtime::Shared;
        }
    };
    let mut v = Imports {
        depth: 1,
        ..Imports::default()
    };
    v.visit_file(&file);
    let names: BTreeSet<String> = v.found.into_iter().map(|(m, _)| m).collect();
    let want: BTreeSet<String> = [
        "pool", "error", "metrics", "balance", "routes", "trace", "tls", "bind", "health",
        "framing",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    assert!(v.hidden.is_empty(), "{:?}", v.hidden);

    // One level down, `super` is the parent module and `super::super` the root.
    let file: syn::File = syn::parse_quote! {
        use super::keyring::Keyring;
        use super::super::runtime::Shared;
    };
    let mut v = Imports {
        depth: 2,
        ..Imports::default()
    };
    v.visit_file(&file);
    let names: BTreeSet<String> = v.found.into_iter().map(|(m, _)| m).collect();
    assert_eq!(names, BTreeSet::from(["runtime".to_owned()]));

    // Naming the root under another name, or all of it, is refused.
    let file: syn::File = syn::parse_quote! {
        use crate as c;
        use crate::*;
        use super::{self as up};
        extern crate self as me;
    };
    let mut v = Imports {
        depth: 1,
        ..Imports::default()
    };
    v.visit_file(&file);
    assert_eq!(v.hidden.len(), 4, "{:?}", v.hidden);
}

/// `crate::Handle` is `runtime::Handle`: the root's re-exports count as their module.
#[test]
fn root_reexports_count_as_their_module() {
    let map = root_reexports();
    assert_eq!(map.get("Handle").map(String::as_str), Some("runtime"));
    assert_eq!(map.get("SourceError").map(String::as_str), Some("source"));
}
