//! Canary farms (`spec.canary`): instead of claiming routes, a canary attaches to the
//! routes its primary claimed, and takes a share of their requests.

use crate::config::*;
use crate::v1alpha1::{Canary, ServerFarm};

use super::names::http_token;
use super::routes::describe;
use super::{ArrayDefaults, FarmErrors, FarmOutcome, Resolutions, build_farm, farm_id, publish};

/// Adds canary `farm` to `config`, whose primaries are all in already: every host and
/// path it publishes must be a route of another farm with no canary yet.
pub(super) fn add_canary(
    config: &mut DataplaneConfig,
    farm: &ServerFarm,
    array: &ArrayDefaults,
    resolutions: &Resolutions,
) -> FarmOutcome {
    let built = match build_farm(farm, array, resolutions) {
        Ok(b) => b,
        Err(errors) => return FarmOutcome::Rejected(errors),
    };
    let id = farm_id(farm);
    let mut errs = FarmErrors::new(farm);
    let canary = farm
        .spec
        .canary
        .as_ref()
        .and_then(|c| canary_config(c, &id, &mut errs));
    let mut targets = Vec::new();
    for (hi, host) in built.hosts.iter().enumerate() {
        for path in &built.paths {
            let at = config
                .routes
                .iter()
                .position(|r| &r.host == host && r.path_match == path.0 && r.path_prefix == path.1);
            let field = format!("spec.publish.hosts[{hi}]");
            match at.map(|i| (i, &config.routes[i])) {
                None => errs.push(
                    field,
                    format!(
                        "{} has no primary: a canary needs a farm of its array that publishes the same hosts and paths",
                        describe(host, path)
                    ),
                ),
                Some((_, r)) if r.farm == id => {}
                // A canary takes traffic from its own namespace's farms only: a tenant
                // may not divert another namespace's site to its own servers.
                Some((_, r)) if namespace_of(&r.farm) != namespace_of(&id) => errs.push(
                    field,
                    format!(
                        "{} is published by ServerFarm {} of another namespace; a canary only takes a share of its own namespace's routes",
                        describe(host, path),
                        r.farm
                    ),
                ),
                Some((_, r)) if r.canary.is_some() => errs.push(
                    field,
                    format!(
                        "{} already has canary ServerFarm {}",
                        describe(host, path),
                        r.canary.as_ref().map_or("", |c| c.farm.as_str())
                    ),
                ),
                Some((i, _)) => targets.push(i),
            }
        }
    }
    let Some(canary) = canary.filter(|_| errs.errors.is_empty()) else {
        return FarmOutcome::Rejected(errs.errors);
    };
    for i in targets {
        config.routes[i].canary = Some(canary.clone());
    }
    publish(config, id, built)
}

/// The namespace part of a farm id (`namespace/name`).
fn namespace_of(id: &str) -> &str {
    id.split_once('/').map_or("", |(ns, _)| ns)
}

/// The checked canary rules of farm `id`.
fn canary_config(c: &Canary, id: &str, errs: &mut FarmErrors<'_>) -> Option<CanaryConfig> {
    let before = errs.errors.len();
    if c.weight > 100 {
        errs.push(
            "spec.canary.weight",
            format!("{} is not a percentage (0 to 100)", c.weight),
        );
    }
    for (field, name) in [("header", &c.header), ("cookie", &c.cookie)] {
        if let Some(n) = name
            && http_token(n).is_err()
        {
            errs.push(
                format!("spec.canary.{field}"),
                format!("{n:?} is not a {field} name (an HTTP token)"),
            );
        }
    }
    match (&c.header, &c.header_value) {
        (None, Some(_)) => errs.push("spec.canary.headerValue", "headerValue needs header"),
        (_, Some(v)) if !v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) => errs.push(
            "spec.canary.headerValue",
            format!("{v:?} is not a header value: printable ASCII, spaces and tabs"),
        ),
        _ => {}
    }
    (errs.errors.len() == before).then(|| CanaryConfig {
        farm: id.to_owned(),
        weight: c.weight,
        header: c.header.as_ref().map(|h| h.to_ascii_lowercase()),
        header_value: c.header_value.clone(),
        cookie: c.cookie.clone(),
    })
}
