//! Route features (`spec.filters`): checked, into the farm's [`FiltersConfig`].

use crate::config::*;
use crate::v1alpha1::{Filters, Rewrite};

use super::FarmErrors;

/// The farm's route features; every bad field is reported.
pub(crate) fn filters(filters: Option<&Filters>, errs: &mut FarmErrors<'_>) -> FiltersConfig {
    let Some(f) = filters else {
        return FiltersConfig::default();
    };
    FiltersConfig {
        rewrite: f.rewrite.as_ref().and_then(|r| rewrite(r, errs)),
    }
}

fn rewrite(r: &Rewrite, errs: &mut FarmErrors<'_>) -> Option<RewriteConfig> {
    const FIELD: &str = "spec.filters.rewrite";
    match (&r.replace_prefix_match, &r.path_template) {
        (Some(with), None) => origin_path(with, &format!("{FIELD}.replacePrefixMatch"), errs)
            .then(|| RewriteConfig::ReplacePrefixMatch { with: with.clone() }),
        (None, Some(template)) => origin_path(template, &format!("{FIELD}.pathTemplate"), errs)
            .then(|| RewriteConfig::PathTemplate {
                template: template.clone(),
            }),
        _ => {
            errs.push(
                FIELD,
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            );
            None
        }
    }
}

/// Whether `path` can start the path of an origin-form request target: a `/`, then
/// only characters a URI path may hold (RFC 3986 `pchar`, `%` for escapes), so no
/// query, fragment, space or control character.
pub(crate) fn origin_path(path: &str, field: &str, errs: &mut FarmErrors<'_>) -> bool {
    if !path.starts_with('/') {
        errs.push(field, format!("{path:?} must start with /"));
        return false;
    }
    let pchar = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if let Some(bad) = path.bytes().find(|b| !pchar(*b)) {
        errs.push(
            field,
            format!(
                "{path:?} may hold only characters of a URI path, not {:?}",
                char::from(bad)
            ),
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, problems};

    fn translated(spec: &str) -> (FiltersConfig, Vec<(String, String)>) {
        let f = farm("a", spec);
        let mut errs = FarmErrors::new(&f);
        let out = filters(f.spec.filters.as_ref(), &mut errs);
        let problems = problems(&errs.errors)
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        (out, problems)
    }

    #[test]
    fn no_filters_is_empty() {
        let (out, problems) = translated("");
        assert!(out.is_empty() && problems.is_empty());
    }

    #[test]
    fn a_rewrite_is_one_of_two_kinds() {
        let (out, problems) = translated("filters:\n  rewrite:\n    pathTemplate: /$2\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            out.rewrite,
            Some(RewriteConfig::PathTemplate {
                template: "/$2".into()
            })
        );
        let (out, _) = translated("filters:\n  rewrite:\n    replacePrefixMatch: /v2\n");
        assert_eq!(
            out.rewrite,
            Some(RewriteConfig::ReplacePrefixMatch { with: "/v2".into() })
        );
    }

    #[test]
    fn a_bad_rewrite_is_refused_naming_the_field() {
        for (spec, field, message) in [
            (
                "rewrite: {}",
                "spec.filters.rewrite",
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            ),
            (
                "rewrite: {replacePrefixMatch: /a, pathTemplate: /b}",
                "spec.filters.rewrite",
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            ),
            (
                "rewrite: {replacePrefixMatch: v2}",
                "spec.filters.rewrite.replacePrefixMatch",
                "\"v2\" must start with /",
            ),
            (
                "rewrite: {pathTemplate: '/$1?x=1'}",
                "spec.filters.rewrite.pathTemplate",
                "\"/$1?x=1\" may hold only characters of a URI path, not '?'",
            ),
            (
                "rewrite: {pathTemplate: '/a b'}",
                "spec.filters.rewrite.pathTemplate",
                "\"/a b\" may hold only characters of a URI path, not ' '",
            ),
        ] {
            let (out, problems) = translated(&format!("filters:\n  {spec}\n"));
            assert_eq!(out.rewrite, None, "{spec}");
            assert_eq!(problems, [(field.to_owned(), message.to_owned())], "{spec}");
        }
    }
}
