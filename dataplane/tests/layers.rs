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
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .expect("a module directory")
                .map(|e| e.expect("an entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect();
            files.sort();
            out.insert(name, files);
        } else if path.extension().is_some_and(|e| e == "rs") && !ROOTS.contains(&name.as_str()) {
            out.insert(name, vec![path]);
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

/// The `crate::<name>` paths one file names outside `#[cfg(test)]` items.
#[derive(Default)]
struct Imports {
    found: BTreeSet<(String, String)>,
}

impl Imports {
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, t) in trees.iter().enumerate() {
            match t {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" => {
                    // `crate` `:` `:` `name`
                    if let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(next)) =
                        (trees.get(i + 1), trees.get(i + 2), trees.get(i + 3))
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        match next {
                            TokenTree::Ident(name) => {
                                self.add(&name.to_string(), &format!("crate::{name}"))
                            }
                            TokenTree::Group(g) => self.use_group(g.stream()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `crate::{a, b::c}` inside a macro: the first name of each branch.
    fn use_group(&mut self, tokens: TokenStream) {
        let mut first = true;
        for t in tokens {
            match &t {
                TokenTree::Ident(name) if first => {
                    self.add(&name.to_string(), &format!("crate::{{{name}..}}"));
                    first = false;
                }
                TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                _ => {}
            }
        }
    }

    fn add(&mut self, module: &str, path: &str) {
        if module != "self" {
            self.found.insert((module.to_owned(), path.to_owned()));
        }
    }

    fn use_tree(&mut self, tree: &syn::UseTree, under_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if !under_crate => self.use_tree(&p.tree, p.ident == "crate"),
            syn::UseTree::Path(p) => self.add(&p.ident.to_string(), &format!("crate::{}", p.ident)),
            syn::UseTree::Name(n) if under_crate => {
                self.add(&n.ident.to_string(), &format!("crate::{}", n.ident))
            }
            syn::UseTree::Rename(r) if under_crate => {
                self.add(&r.ident.to_string(), &format!("crate::{}", r.ident))
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, under_crate);
                }
            }
            _ => {}
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
        self.use_tree(&u.tree, false);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut segs = p.segments.iter();
        if let (Some(first), Some(second)) = (segs.next(), segs.next())
            && first.ident == "crate"
        {
            self.add(
                &second.ident.to_string(),
                &format!("crate::{}", second.ident),
            );
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

fn imports_of(files: &[PathBuf]) -> BTreeSet<(String, String)> {
    let mut v = Imports::default();
    for f in files {
        let text = std::fs::read_to_string(f).expect("a readable source file");
        let file = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
        v.visit_file(&file);
    }
    v.found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let modules = modules();
    let mut wrong = Vec::new();
    for (module, files) in &modules {
        let Some(own) = layer_of(module) else {
            wrong.push(format!(
                "{module}: a module with no layer; add it to LAYERS"
            ));
            continue;
        };
        for (target, path) in imports_of(files) {
            if target == *module || !modules.contains_key(&target) {
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
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            modules.contains_key(*name),
            "LAYERS names {name}, which is no module"
        );
    }
}

/// The reader itself: it must see each kind of path this crate uses, or the first test
/// would pass by reading nothing.
#[test]
fn the_reader_finds_uses_paths_and_macro_paths() {
    let file: syn::File = syn::parse_quote! {
        use crate::pool::Endpoint;
        use crate::{error::ProxyError, metrics};
        fn f() {
            let _ = crate::trace::Tracer::start();
            tracing::info!(x = %crate::bind::thing());
            tokio::select! { _ = crate::{health::a, framing::b}() => {} }
        }
        #[cfg(test)]
        mod tests {
            use crate::runtime::Shared;
        }
    };
    let mut v = Imports::default();
    v.visit_file(&file);
    let names: BTreeSet<String> = v.found.into_iter().map(|(m, _)| m).collect();
    let want: BTreeSet<String> = [
        "pool", "error", "metrics", "trace", "bind", "health", "framing",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
}
