//! Session affinity: the cookie that keeps a client on one server, and how long it lasts.

use crate::Duration;
use crate::config::*;
use crate::v1alpha1::Affinity;

use super::names::http_token;
use super::{DEFAULT_COOKIE_NAME, FarmErrors};

/// The farm's affinity with its defaults. A cookie name that is not a token, a session
/// longer than the array's `max_session_time` and zero durations are errors.
pub(crate) fn affinity(
    aff: Option<&Affinity>,
    max_session_time: Duration,
    errs: &mut FarmErrors<'_>,
) -> AffinityConfig {
    let affinity = AffinityConfig {
        mode: aff.map_or(AffinityMode::None, |a| a.mode),
        cookie_name: aff
            .and_then(|a| a.cookie_name.clone())
            .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned()),
        max_session_time: aff
            .and_then(|a| a.max_session_time)
            .unwrap_or(max_session_time),
        idle_timeout: aff
            .and_then(|a| a.idle_timeout)
            .unwrap_or(DEFAULT_AFFINITY_IDLE_TIMEOUT),
        same_site: aff.map_or(SameSite::Lax, |a| a.same_site),
    };
    if http_token(&affinity.cookie_name).is_err() {
        errs.push(
            "spec.affinity.cookieName",
            format!("{:?} is not a valid cookie name", affinity.cookie_name),
        );
    }
    if affinity.max_session_time > max_session_time {
        errs.push(
            "spec.affinity.maxSessionTime",
            format!(
                "{} exceeds the array's maxSessionTime {}",
                affinity.max_session_time, max_session_time
            ),
        );
    }
    if affinity.max_session_time.is_zero() || affinity.idle_timeout.is_zero() {
        errs.push(
            "spec.affinity",
            "maxSessionTime and idleTimeout must be longer than 0s",
        );
    }
    affinity
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, problems};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn no_affinity_gets_the_defaults() {
        let f = farm("a", "");
        let mut errs = FarmErrors::new(&f);
        let a = affinity(None, DAY, &mut errs);
        assert!(errs.errors.is_empty());
        assert_eq!(a.mode, AffinityMode::None);
        assert_eq!(a.cookie_name, DEFAULT_COOKIE_NAME);
        assert_eq!(a.max_session_time, DAY);
        assert_eq!(a.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(a.same_site, SameSite::Lax);
    }

    #[test]
    fn a_session_may_not_outlast_the_arrays() {
        let f = farm(
            "a",
            "affinity:\n  mode: Cookie\n  cookieName: 'bad name'\n  maxSessionTime: 48h\n  idleTimeout: 0s\n",
        );
        let mut errs = FarmErrors::new(&f);
        let a = affinity(f.spec.affinity.as_ref(), DAY, &mut errs);
        assert_eq!(a.max_session_time, Duration::from_secs(48 * 3600));
        assert_eq!(
            problems(&errs.errors),
            [
                (
                    "spec.affinity.cookieName",
                    "\"bad name\" is not a valid cookie name"
                ),
                (
                    "spec.affinity.maxSessionTime",
                    "48h exceeds the array's maxSessionTime 24h"
                ),
                (
                    "spec.affinity",
                    "maxSessionTime and idleTimeout must be longer than 0s"
                ),
            ]
        );
    }
}
