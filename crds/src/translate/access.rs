//! Access control: client address ranges, rate limits and authentication, checked by
//! the proxy before it picks a server.

use crate::config::*;
use crate::v1alpha1::{Access, SourceRanges};

use super::FarmErrors;

/// The farm's access phase. Every range that does not parse is an error naming its
/// index.
pub(crate) fn access(access: Option<&Access>, errs: &mut FarmErrors<'_>) -> AccessConfig {
    let Some(access) = access else {
        return AccessConfig::default();
    };
    AccessConfig {
        source_ranges: access
            .source_ranges
            .as_ref()
            .map(|r| source_ranges(r, errs)),
    }
}

fn source_ranges(ranges: &SourceRanges, errs: &mut FarmErrors<'_>) -> SourceRangesConfig {
    let mut parse = |list: &[String], field: &str| -> Vec<IpRange> {
        list.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.trim()
                    .parse::<IpRange>()
                    .map_err(|m| errs.push(format!("spec.access.sourceRanges.{field}[{i}]"), m))
                    .ok()
            })
            .collect()
    };
    SourceRangesConfig {
        allow: parse(&ranges.allow, "allow"),
        deny: parse(&ranges.deny, "deny"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, problems};

    fn translate(spec: &str) -> (AccessConfig, Vec<(String, String)>) {
        let f = farm("a", spec);
        let mut errs = FarmErrors::new(&f);
        let a = access(f.spec.access.as_ref(), &mut errs);
        let p = problems(&errs.errors)
            .into_iter()
            .map(|(f, m)| (f.to_owned(), m.to_owned()))
            .collect();
        (a, p)
    }

    #[test]
    fn no_access_checks_nothing() {
        let (a, p) = translate("");
        assert!(p.is_empty());
        assert!(a.is_empty());
    }

    #[test]
    fn source_ranges_take_cidrs_and_single_addresses_of_both_families() {
        let (a, p) = translate(
            "access:\n  sourceRanges:\n    allow: [10.0.0.0/8, 192.0.2.7, '2001:db8::/32']\n    deny: ['::1']\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let r = a.source_ranges.unwrap();
        let shown: Vec<String> = r.allow.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(r.deny[0].to_string(), "::1/128");
    }

    #[test]
    fn an_invalid_range_is_refused_by_its_index() {
        let (_, p) = translate(
            "access:\n  sourceRanges:\n    allow: [10.0.0.0/8, 10.0.0.0/33]\n    deny: [example.com]\n",
        );
        assert_eq!(
            p,
            [
                (
                    "spec.access.sourceRanges.allow[1]".to_owned(),
                    "\"10.0.0.0/33\" has a prefix length that is not 0-32".to_owned()
                ),
                (
                    "spec.access.sourceRanges.deny[0]".to_owned(),
                    "\"example.com\" is not an address or CIDR range".to_owned()
                ),
            ]
        );
    }
}
