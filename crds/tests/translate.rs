//! The translation from resources to a dataplane config: routing precedence, endpoint
//! identity, error reporting, determinism, and the config document's own checks.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use portcullis_crds::config::{
    CONFIG_VERSION, ConfigError, DataplaneConfig, FarmConfig, MemberTarget,
};
use portcullis_crds::translate::{
    FarmOutcome, Resolutions, ServiceEndpoint, ServiceKey, TranslateError, Translation,
    keep_last_good, translate,
};
use portcullis_crds::v1alpha1::{GatewayArray, ServerFarm};

fn array(spec: &str) -> GatewayArray {
    let yaml = format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata:\n  name: edge\n  namespace: default\nspec:\n{}",
        indent(spec)
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn edge() -> GatewayArray {
    array("listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\n")
}

/// A farm of array `edge` in namespace `default`; `created` orders conflicts.
fn farm_at(name: &str, created: Option<&str>, spec: &str) -> ServerFarm {
    let created = created
        .map(|t| format!("  creationTimestamp: \"{t}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\nmetadata:\n  name: {name}\n  namespace: default\n{created}spec:\n  arrayRef:\n    name: edge\n{}",
        indent(spec)
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn farm(name: &str, spec: &str) -> ServerFarm {
    farm_at(name, None, spec)
}

/// A farm publishing `hosts` and `paths` with one address server.
fn site(name: &str, hosts: &[&str], paths: &[&str]) -> ServerFarm {
    farm(
        name,
        &format!(
            "publish:\n  hosts: {hosts:?}\n  paths: {paths:?}\nservers:\n- address: 10.0.0.1\n  port: 80\n"
        ),
    )
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn ok(t: Result<Translation, Vec<TranslateError>>) -> Translation {
    let t = t.unwrap_or_else(|e| panic!("array refused: {e:?}"));
    t.config.check().expect("the translation is consistent");
    t
}

fn rejected<'a>(t: &'a Translation, id: &str) -> &'a [TranslateError] {
    match &t.farms[id] {
        FarmOutcome::Rejected(errors) => errors,
        other => panic!("{id} was not rejected: {other:?}"),
    }
}

fn accepted(t: &Translation, id: &str) {
    match &t.farms[id] {
        FarmOutcome::Accepted { .. } => assert!(t.config.farms.contains_key(id)),
        other => panic!("{id} was not accepted: {other:?}"),
    }
}

fn identities(farm: &FarmConfig) -> Vec<String> {
    farm.members
        .iter()
        .flat_map(|m| match &m.target {
            MemberTarget::Endpoints { identities } => identities.clone(),
            MemberTarget::Dns { host, .. } => panic!("{} left {host} to DNS", farm.id),
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Routing precedence

#[test]
fn exact_host_beats_wildcard_and_longest_prefix_wins_on_segment_boundaries() {
    let farms = [
        site("a-root", &["A.Example.COM."], &["/"]),
        site("a-api", &["a.example.com"], &["/api/"]),
        site("wild", &["*.example.com"], &["/"]),
        site("wild-v2", &["*.example.com"], &["/api/v2"]),
        site("wild-b", &["*.b.example.com"], &["/"]),
    ];
    let t = ok(translate(&edge(), &farms, &Resolutions::default()));
    let c = &t.config;
    let route = |host: &str, path: &str| c.route(host, path).map(|r| r.farm.as_str());

    // Exact host, longest prefix, on segment boundaries.
    assert_eq!(route("a.example.com", "/api"), Some("default/a-api"));
    assert_eq!(route("a.example.com", "/api/orders"), Some("default/a-api"));
    assert_eq!(route("a.example.com", "/apix"), Some("default/a-root"));
    assert_eq!(route("a.example.com", "/"), Some("default/a-root"));
    // An exact host wins even over a wildcard route with a longer prefix.
    assert_eq!(route("a.example.com", "/api/v2/x"), Some("default/a-api"));
    // Wildcards: longest suffix first, then longest prefix; never the bare domain.
    assert_eq!(route("z.example.com", "/api/v2/x"), Some("default/wild-v2"));
    assert_eq!(route("z.example.com", "/api/v2x"), Some("default/wild"));
    assert_eq!(route("x.b.example.com", "/api/v2"), Some("default/wild-b"));
    assert_eq!(route("deep.x.b.example.com", "/"), Some("default/wild-b"));
    assert_eq!(route("b.example.com", "/"), Some("default/wild"));
    assert_eq!(route("example.com", "/"), None);
    assert_eq!(route("other.org", "/"), None);

    // The order itself: exact hosts first, wildcards by suffix length, then prefixes;
    // hosts lower-cased without the final dot, prefixes without a trailing slash.
    let order: Vec<(&str, &str)> = c
        .routes
        .iter()
        .map(|r| (r.host.as_str(), r.path_prefix.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("a.example.com", "/api"),
            ("a.example.com", "/"),
            ("*.b.example.com", "/"),
            ("*.example.com", "/api/v2"),
            ("*.example.com", "/"),
        ]
    );
}

#[test]
fn a_root_prefix_covers_everything_and_prefixes_match_whole_segments_only() {
    let t = ok(translate(
        &edge(),
        &[site(
            "docs",
            &["docs.example.com"],
            &["/v1", "/v1/internal"],
        )],
        &Resolutions::default(),
    ));
    let r = |p: &str| t.config.route("docs.example.com", p).is_some();
    assert!(r("/v1") && r("/v1/") && r("/v1/a/b") && r("/v1/internal/x"));
    assert!(!r("/v10") && !r("/") && !r("/v") && !r("/x/v1"));
}

// ---------------------------------------------------------------------------------------
// Endpoint identity

#[test]
fn two_names_for_one_address_are_one_endpoint_identity_shared_by_both_farms() {
    let admin = farm(
        "admin",
        "publish:\n  hosts: [admin.example.com]\nservers:\n- host: prod.admin.web1\n  port: 80\n",
    );
    let cms = farm(
        "cms",
        "publish:\n  hosts: [cms.example.com]\nservers:\n- host: prod.cms.web1\n  port: 80\n",
    );
    let direct = farm(
        "direct",
        "publish:\n  hosts: [direct.example.com]\nservers:\n- address: 172.16.0.1\n  port: 80\n",
    );
    let mut r = Resolutions::default();
    r.hosts
        .insert("prod.admin.web1".into(), vec![ip("172.16.0.1")]);
    // The same server, reported as an IPv4-mapped IPv6 address by the resolver.
    r.hosts
        .insert("prod.cms.web1".into(), vec![ip("::ffff:172.16.0.1")]);
    let t = ok(translate(&edge(), &[admin, cms, direct], &r));

    let key = "http1://172.16.0.1:80".to_owned();
    assert_eq!(
        t.config.endpoints.keys().collect::<Vec<_>>(),
        vec![&key],
        "one identity for three names"
    );
    for id in ["default/admin", "default/cms", "default/direct"] {
        assert_eq!(identities(&t.config.farms[id]), vec![key.clone()], "{id}");
    }
    // Status shows each farm which of its servers reached the shared identity.
    match &t.farms["default/cms"] {
        FarmOutcome::Accepted {
            endpoints,
            unresolved,
        } => {
            assert!(unresolved.is_empty());
            assert_eq!(endpoints.len(), 1);
            assert_eq!(endpoints[0].identity, key);
            assert_eq!(
                endpoints[0].servers,
                vec!["host prod.cms.web1:80".to_owned()]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn upstream_tls_parameters_and_protocol_separate_identities() {
    let tls_farm = |name: &str, upstream: &str| {
        farm(
            name,
            &format!(
                "publish:\n  hosts: [{name}.example.com]\nservers:\n- address: 10.0.0.5\n  port: 443\nupstream:\n{}",
                indent(upstream)
            ),
        )
    };
    let farms = [
        tls_farm("a", "tls:\n  sni: a.internal\n"),
        tls_farm("a2", "tls:\n  sni: A.internal\n"), // same SNI, other case
        tls_farm("b", "tls:\n  sni: b.internal\n"),
        tls_farm(
            "c",
            "tls:\n  sni: a.internal\n  caSecretName: upstream-ca\n",
        ),
        tls_farm("d", "tls:\n  sni: a.internal\nprotocol: HTTP2\n"),
        tls_farm("e", "protocol: HTTP1\n"),
    ];
    let t = ok(translate(&edge(), &farms, &Resolutions::default()));
    // The only Secret this config loads is farm c's upstream CA.
    assert_eq!(
        t.config
            .certificate_secrets()
            .into_iter()
            .collect::<Vec<_>>(),
        ["upstream-ca"]
    );
    let key = |id: &str| identities(&t.config.farms[&format!("default/{id}")]).remove(0);
    assert_eq!(
        key("a"),
        "http1+tls://10.0.0.5:443?sni=a.internal&trust=system"
    );
    assert_eq!(key("a"), key("a2"));
    assert_eq!(
        key("b"),
        "http1+tls://10.0.0.5:443?sni=b.internal&trust=system"
    );
    assert_eq!(
        key("c"),
        "http1+tls://10.0.0.5:443?sni=a.internal&trust=ca:upstream-ca"
    );
    assert_eq!(
        key("d"),
        "h2+tls://10.0.0.5:443?sni=a.internal&trust=system"
    );
    assert_eq!(key("e"), "http1://10.0.0.5:443");
    assert_eq!(t.config.endpoints.len(), 5);
}

#[test]
fn host_servers_over_tls_verify_their_own_name_unless_the_farm_fixes_sni() {
    let farms = [
        farm(
            "by-name",
            "publish:\n  hosts: [x.example.com]\nservers:\n- host: web1.internal\n  port: 443\n- host: web2.internal\n  port: 443\nupstream:\n  tls: {}\n",
        ),
        // An address server over TLS needs a name to verify: backendHost serves.
        farm(
            "by-address",
            "publish:\n  hosts: [y.example.com]\nbackendHost: site.internal\nservers:\n- address: 10.0.0.9\n  port: 443\nupstream:\n  tls: {}\n",
        ),
    ];
    let mut r = Resolutions::default();
    r.hosts.insert("web1.internal".into(), vec![ip("10.0.0.9")]);
    // web2.internal is not resolved here: the dataplane resolves it at run time.
    let t = ok(translate(&edge(), &farms, &r));
    let by_name = &t.config.farms["default/by-name"];
    assert_eq!(
        identities(&FarmConfig {
            members: by_name.members[..1].to_vec(),
            ..by_name.clone()
        }),
        vec!["http1+tls://10.0.0.9:443?sni=web1.internal&trust=system".to_owned()]
    );
    assert_eq!(
        by_name.members[1].target,
        MemberTarget::Dns {
            host: "web2.internal".into(),
            port: 443
        }
    );
    assert_eq!(
        identities(&t.config.farms["default/by-address"]),
        vec!["http1+tls://10.0.0.9:443?sni=site.internal&trust=system".to_owned()]
    );

    // Without backendHost or sni, an address server over TLS is refused, by field.
    let t = ok(translate(
        &edge(),
        &[farm(
            "no-name",
            "publish:\n  hosts: [z.example.com]\nservers:\n- address: 10.0.0.9\n  port: 443\nupstream:\n  tls: {}\n",
        )],
        &Resolutions::default(),
    ));
    assert_eq!(
        rejected(&t, "default/no-name")[0].field,
        "spec.servers[0].address"
    );
}

#[test]
fn service_endpoints_terminating_drain_and_starting_ones_wait() {
    let web = farm(
        "web",
        "publish:\n  hosts: [web.example.com]\nservers:\n- service:\n    name: web\n    port: 80\n- service:\n    name: missing\n    port: 80\n",
    );
    let ep = |a: &str, ready: bool, terminating: bool| ServiceEndpoint {
        address: a.parse::<SocketAddr>().unwrap(),
        ready,
        terminating,
    };
    let mut r = Resolutions::default();
    r.services.insert(
        ServiceKey {
            namespace: "default".into(),
            name: "web".into(),
            port: 80,
        },
        vec![
            ep("10.1.0.1:8080", true, false),
            ep("10.1.0.2:8080", false, true),
            ep("10.1.0.3:8080", false, false),
        ],
    );
    let t = ok(translate(&edge(), &[web], &r));
    let e = &t.config.endpoints;
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(!e["http1://10.1.0.1:8080"].draining);
    assert!(e["http1://10.1.0.2:8080"].draining);
    match &t.farms["default/web"] {
        FarmOutcome::Accepted {
            unresolved,
            endpoints,
        } => {
            assert_eq!(unresolved.len(), 1);
            assert!(unresolved[0].contains("missing"), "{unresolved:?}");
            let draining: Vec<_> = endpoints
                .iter()
                .filter(|s| s.health.as_deref() == Some("Draining"))
                .map(|s| s.identity.as_str())
                .collect();
            assert_eq!(draining, ["http1://10.1.0.2:8080"]);
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Error reporting

#[test]
fn a_bad_farm_is_rejected_by_field_and_the_others_are_still_published() {
    let good = site("good", &["good.example.com"], &["/"]);
    let bad = farm(
        "bad",
        "publish:\n  hosts: [bad.example.com]\nservers:\n- address: 10.9.9.9\n  port: 80\n- address: 300.1.1.1\n  port: 80\n",
    );
    let t = ok(translate(&edge(), &[bad, good], &Resolutions::default()));
    accepted(&t, "default/good");
    let errors = rejected(&t, "default/bad");
    assert_eq!(
        errors,
        [TranslateError {
            kind: "ServerFarm",
            namespace: "default".into(),
            name: "bad".into(),
            field: "spec.servers[1].address".into(),
            message: "\"300.1.1.1\" is not an IP address".into(),
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "ServerFarm default/bad: spec.servers[1].address: \"300.1.1.1\" is not an IP address"
    );
    assert_eq!(t.errors().count(), 1);
    // Nothing of the bad farm leaks into the config, not even its valid server.
    assert!(!t.config.farms.contains_key("default/bad"));
    assert!(t.config.routes.iter().all(|r| r.farm == "default/good"));
    assert!(!t.config.endpoints.keys().any(|k| k.contains("10.9.9.9")));
}

/// Issue 12, finding 2: a farm edit that fails validation keeps the farm's last good
/// version (routes, endpoints, certificate) instead of leaving the site to 404.
#[test]
fn a_refused_edit_keeps_the_last_good_version_of_that_farm_only() {
    let tls_edge = array(
        "listeners:\n- name: https\n  port: 8443\n  protocol: HTTPS\n  tls: {secretName: default-cert}\n",
    );
    let shop = |server: &str| {
        farm(
            "shop",
            &format!(
                "publish:\n  hosts: [shop.example.com]\n  paths: [/, /api]\n  tls: {{secretName: shop-cert}}\nservers:\n{server}"
            ),
        )
    };
    let good_shop = shop("- address: 10.0.0.7\n  port: 80\n");
    let blog = site("blog", &["blog.example.com"], &["/"]);
    let before = ok(translate(
        &tls_edge,
        &[good_shop, blog.clone()],
        &Resolutions::default(),
    ))
    .config;

    // The edit names a server by host and address at once; meanwhile the blog moved to a
    // new path and a new farm claimed one of the shop's old routes.
    let bad_shop = shop("- host: web\n  address: 10.0.0.8\n  port: 80\n");
    let blog = site("blog", &["blog.example.com"], &["/v2"]);
    let taker = site("taker", &["shop.example.com"], &["/api"]);
    let t = ok(translate(
        &tls_edge,
        &[bad_shop, blog, taker],
        &Resolutions::default(),
    ));
    rejected(&t, "default/shop");
    let mut config = t.config;
    assert!(keep_last_good(&mut config, &before, "default/shop"));
    config.check().expect("the merged config is consistent");

    let shop = &config.farms["default/shop"];
    assert_eq!(shop, &before.farms["default/shop"]);
    let keys = identities(shop);
    assert!(
        keys.iter().all(|k| config.endpoints.contains_key(k)),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains("10.0.0.7")));
    // Its route that nobody claims now comes back; the one the new farm took stays taken.
    assert_eq!(
        config.route("shop.example.com", "/").unwrap().farm,
        "default/shop"
    );
    assert_eq!(
        config.route("shop.example.com", "/api/x").unwrap().farm,
        "default/taker"
    );
    // The blog is the new version: only the refused farm is held back.
    assert!(config.route("blog.example.com", "/").is_none());
    assert_eq!(
        config.route("blog.example.com", "/v2").unwrap().farm,
        "default/blog"
    );
    // Its certificate is still served by SNI.
    let sni = &config.listeners[0].sni;
    assert!(
        sni.iter()
            .any(|s| s.host == "shop.example.com" && s.certificate.secret == "shop-cert")
    );
    // A farm that never had a good version has nothing to keep.
    assert!(!keep_last_good(&mut config, &before, "default/nobody"));
}

#[test]
fn every_problem_of_a_farm_is_reported_at_once() {
    let bad = farm(
        "bad",
        "publish:\n  hosts: ['*.com', ok.example.com]\n  paths: [/a, /a/]\nservers:\n- address: 10.0.0.1\n- host: web\n  address: 10.0.0.2\n  port: 80\n- address: 10.0.0.3\n  port: 80\n  weight: 5000\nconnectivityVerifier:\n  interval: 1s\n  timeout: 2s\n  expectedStatuses: ['2xx']\n",
    );
    let t = ok(translate(&edge(), &[bad], &Resolutions::default()));
    let fields: BTreeSet<&str> = rejected(&t, "default/bad")
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "spec.publish.hosts[0]",
        "spec.publish.paths[1]",
        "spec.servers[0].port",
        "spec.servers[1]",
        "spec.servers[2].weight",
        "spec.connectivityVerifier.timeout",
        "spec.connectivityVerifier.expectedStatuses[0]",
    ]
    .into();
    assert_eq!(fields, expected);
}

#[test]
fn a_conflicting_claim_rejects_the_newer_farm_naming_the_older() {
    let older = farm_at(
        "older",
        Some("2026-01-01T00:00:00Z"),
        "publish:\n  hosts: [shop.example.com]\n  paths: [/cart]\nservers:\n- address: 10.0.0.1\n  port: 80\n",
    );
    let newer = farm_at(
        "newer",
        Some("2026-02-01T00:00:00Z"),
        "publish:\n  hosts: [other.example.com, shop.example.com]\n  paths: [/cart/]\nservers:\n- address: 10.0.0.2\n  port: 80\n",
    );
    let neighbour = farm_at(
        "neighbour",
        Some("2026-03-01T00:00:00Z"),
        "publish:\n  hosts: [shop.example.com]\n  paths: [/checkout]\nservers:\n- address: 10.0.0.3\n  port: 80\n",
    );
    // Input order does not decide who wins; age does.
    let t = ok(translate(
        &edge(),
        &[newer, neighbour, older],
        &Resolutions::default(),
    ));
    accepted(&t, "default/older");
    accepted(&t, "default/neighbour");
    let errors = rejected(&t, "default/newer");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.publish.hosts[1]");
    assert!(
        errors[0].message.contains("ServerFarm default/older"),
        "{}",
        errors[0]
    );
    // The rejected farm keeps none of its claims, not even the uncontested host.
    assert!(t.config.route("other.example.com", "/cart").is_none());
}

#[test]
fn two_certificates_for_one_host_reject_the_newer_farm() {
    let a = farm_at(
        "a",
        Some("2026-01-01T00:00:00Z"),
        "publish:\n  hosts: [shop.example.com]\n  paths: [/a]\n  tls:\n    secretName: shop-tls\nservers:\n- address: 10.0.0.1\n  port: 80\n",
    );
    let b = farm_at(
        "b",
        Some("2026-01-02T00:00:00Z"),
        "publish:\n  hosts: [shop.example.com]\n  paths: [/b]\n  tls:\n    secretName: other-tls\nservers:\n- address: 10.0.0.1\n  port: 80\n",
    );
    let https = array(
        "listeners:\n- name: https\n  port: 8443\n  protocol: HTTPS\n  tls:\n    secretName: default-tls\n",
    );
    let t = ok(translate(&https, &[a, b], &Resolutions::default()));
    let errors = rejected(&t, "default/b");
    assert_eq!(errors[0].field, "spec.publish.tls.secretName");
    assert!(errors[0].message.contains("shop-tls") && errors[0].message.contains("default/a"));
    let l = &t.config.listeners[0];
    assert_eq!(
        l.default_certificate.as_ref().unwrap().secret,
        "default-tls"
    );
    assert_eq!(l.sni.len(), 1);
    assert_eq!(
        (l.sni[0].host.as_str(), l.sni[0].certificate.secret.as_str()),
        ("shop.example.com", "shop-tls")
    ); // What the config loads: the default and SNI certificates, not the rejected farm's.
    assert_eq!(
        t.config
            .certificate_secrets()
            .into_iter()
            .collect::<Vec<_>>(),
        ["default-tls", "shop-tls"]
    );
}

#[test]
fn array_level_errors_refuse_the_whole_array() {
    let bad = array(
        "listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\n- name: http\n  port: 8080\n  protocol: HTTP\n- name: https\n  port: 8443\n  protocol: HTTPS\nmaxSessionTime: 24h\nsessionKeys:\n  acceptRetiredFor: 1h\n",
    );
    let errors = translate(
        &bad,
        &[site("s", &["s.example.com"], &["/"])],
        &Resolutions::default(),
    )
    .unwrap_err();
    let fields: BTreeSet<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.listeners[1].name",
            "spec.listeners[1].port",
            "spec.listeners[2].tls",
            "spec.sessionKeys.acceptRetiredFor",
        ]
        .into()
    );
    assert!(
        errors
            .iter()
            .all(|e| e.kind == "GatewayArray" && e.name == "edge" && e.namespace == "default")
    );
}

#[test]
fn farms_of_other_arrays_and_namespaces_are_ignored() {
    let mut elsewhere = site("elsewhere", &["x.example.com"], &["/"]);
    elsewhere.metadata.namespace = Some("other".into());
    let mut other_array = site("other-array", &["y.example.com"], &["/"]);
    other_array.spec.array_ref.name = "core".into();
    let t = ok(translate(
        &edge(),
        &[elsewhere, other_array],
        &Resolutions::default(),
    ));
    assert!(t.farms.is_empty() && t.config.farms.is_empty() && t.config.routes.is_empty());
}

// ---------------------------------------------------------------------------------------
// Determinism and the config document

fn mixed_farms() -> Vec<ServerFarm> {
    vec![
        farm(
            "shop",
            "publish:\n  hosts: [shop.example.com, '*.shop.example.com']\n  paths: [/, /api]\nservers:\n- host: web1\n  port: 80\n- address: 10.0.0.2\n  port: 80\naffinity:\n  mode: Cookie\nconnectivityVerifier:\n  host: health.internal\n",
        ),
        farm(
            "admin",
            "publish:\n  hosts: [admin.example.com]\nservers:\n- host: web-admin\n  port: 80\n- service:\n    name: api\n    port: 80\nloadBalancing: LeastRequests\n",
        ),
        farm(
            "blog",
            "publish:\n  hosts: ['*.example.com']\nservers:\n- host: unresolved.internal\n  port: 8080\n",
        ),
    ]
}

fn mixed_resolutions() -> Resolutions {
    let mut r = Resolutions::default();
    r.hosts.insert("web1".into(), vec![ip("10.0.0.1")]);
    r.hosts
        .insert("web-admin".into(), vec![ip("10.0.0.1"), ip("10.0.0.3")]);
    r.services.insert(
        ServiceKey {
            namespace: "default".into(),
            name: "api".into(),
            port: 80,
        },
        vec![ServiceEndpoint {
            address: "10.2.0.1:9000".parse().unwrap(),
            ready: true,
            terminating: false,
        }],
    );
    r
}

#[test]
fn content_hash_is_stable_whatever_the_order_of_farms() {
    let farms = mixed_farms();
    let r = mixed_resolutions();
    let base = ok(translate(&edge(), &farms, &r));
    let hash = base.config.content_hash();
    assert!(
        hash.starts_with("sha256:") && hash.len() == 7 + 64,
        "{hash}"
    );
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let permuted: Vec<ServerFarm> = order.iter().map(|&i| farms[i].clone()).collect();
        let t = ok(translate(&edge(), &permuted, &r));
        assert_eq!(t.config.content_hash(), hash, "order {order:?}");
        assert_eq!(t, base);
    }
    // And any change shows in the hash.
    let mut changed = farms.clone();
    changed[2].spec.servers[0].weight = 2;
    assert_ne!(
        ok(translate(&edge(), &changed, &r)).config.content_hash(),
        hash
    );
}

#[test]
fn config_json_round_trips_and_refuses_what_it_cannot_serve() {
    let config = ok(translate(&edge(), &mixed_farms(), &mixed_resolutions())).config;
    let json = config.to_json();
    let back = DataplaneConfig::from_json(&json).unwrap();
    assert_eq!(back, config);
    assert_eq!(back.content_hash(), config.content_hash());

    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        f(&mut v);
        DataplaneConfig::from_json(&v.to_string())
    };

    let e = edit(&|v| v["version"] = (CONFIG_VERSION + 1).into()).unwrap_err();
    assert!(matches!(e, ConfigError::Version { found } if found == CONFIG_VERSION + 1));
    // A future version is refused by its version, before its unknown fields are read.
    let e = edit(&|v| {
        v["version"] = 2.into();
        v["somethingNew"] = true.into();
    })
    .unwrap_err();
    assert!(matches!(e, ConfigError::Version { found: 2 }), "{e}");

    let e = edit(&|v| {
        v["farms"].as_object_mut().unwrap().remove("default/admin");
    })
    .unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid(m) if m.contains("unknown farm default/admin")),
        "{e}"
    );

    let e = edit(&|v| {
        v["endpoints"]
            .as_object_mut()
            .unwrap()
            .remove("http1://10.0.0.3:80");
    })
    .unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid(m) if m.contains("unknown endpoint http1://10.0.0.3:80")),
        "{e}"
    );

    let e = edit(&|v| {
        let first = v["routes"][0].clone();
        v["routes"].as_array_mut().unwrap().push(first);
    })
    .unwrap_err();
    assert!(
        matches!(&e, ConfigError::Invalid(m) if m.contains("twice")),
        "{e}"
    );

    let e = edit(&|v| v["listeners"][0]["colour"] = "blue".into()).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)), "{e}");
    // Issue 17, finding 3: a duration with a non-ASCII character is an error naming
    // the field (it was a panic).
    for bad in ["é", "1sé"] {
        let e = edit(&|v| v["limits"]["headerReadTimeout"] = bad.into()).unwrap_err();
        assert!(matches!(e, ConfigError::Parse(_)), "{e}");
        assert!(e.to_string().contains("limits.headerReadTimeout"), "{e}");
        assert!(e.to_string().contains("failed to parse duration"), "{e}");
    }
    assert!(DataplaneConfig::from_json("not json").is_err());
}

#[test]
fn the_config_names_secrets_and_never_holds_them() {
    let shop = farm(
        "shop",
        "publish:\n  hosts: [shop.example.com]\n  tls:\n    secretName: shop-tls\nservers:\n- address: 10.0.0.1\n  port: 443\nupstream:\n  tls:\n    sni: shop.internal\n    caSecretName: shop-ca\naffinity:\n  mode: Cookie\ncookieProtection: Encrypt\n",
    );
    let https = array(
        "listeners:\n- name: https\n  port: 8443\n  protocol: HTTPS\n  tls:\n    secretName: edge-tls\nsessionKeys:\n  secretName: edge-keys\n",
    );
    let config = ok(translate(&https, &[shop], &Resolutions::default())).config;
    let json = config.to_json();
    for name in ["shop-tls", "shop-ca", "edge-tls", "edge-keys"] {
        assert!(
            json.contains(&format!("\"{name}\"")),
            "{name} is referenced"
        );
    }
    assert!(!json.contains("BEGIN"), "no PEM in the config");
    assert_eq!(config.session.keyring_secret, "edge-keys");
}

#[test]
fn a_farm_defined_twice_is_refused_whole_whatever_the_order() {
    // Only local mode can see this (two files, one name); neither copy may win by order.
    let first = site("twin", &["a.example.com"], &["/"]);
    let second = site("twin", &["b.example.com"], &["/"]);
    let other = site("other", &["c.example.com"], &["/"]);
    let t1 = ok(translate(
        &edge(),
        &[first.clone(), second.clone(), other.clone()],
        &Resolutions::default(),
    ));
    let t2 = ok(translate(
        &edge(),
        &[second, other, first],
        &Resolutions::default(),
    ));
    assert_eq!(t1, t2);
    let errors = rejected(&t1, "default/twin");
    assert_eq!(errors[0].field, "metadata.name");
    assert!(errors[0].message.contains("2 times"), "{}", errors[0]);
    accepted(&t1, "default/other");
    assert_eq!(t1.config.routes.len(), 1);
}

#[test]
fn listener_names_must_be_service_port_names() {
    let errors = translate(
        &array("listeners:\n- name: Public_HTTP\n  port: 8080\n  protocol: HTTP\n"),
        &[],
        &Resolutions::default(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "spec.listeners[0].name");
}

#[test]
fn a_probe_path_may_carry_a_query_but_not_a_fragment() {
    let with = |path: &str| {
        farm(
            "probe",
            &format!(
                "publish:\n  hosts: [p.example.com]\nservers:\n- address: 10.0.0.1\n  port: 80\nconnectivityVerifier:\n  path: {path:?}\n"
            ),
        )
    };
    let t = ok(translate(
        &edge(),
        &[with("/health?deep=1")],
        &Resolutions::default(),
    ));
    let v = t.config.farms["default/probe"].verifier.clone().unwrap();
    assert_eq!(v.path, "/health?deep=1");
    assert_eq!(v.host, "p.example.com", "defaults to the first exact host");
    let t = ok(translate(
        &edge(),
        &[with("/health#x")],
        &Resolutions::default(),
    ));
    assert_eq!(
        rejected(&t, "default/probe")[0].field,
        "spec.connectivityVerifier.path"
    );
}

/// Issue 12, finding 3: forwarding headers are believed only from configured proxies.
#[test]
fn trusted_proxies_are_ranges_and_a_bad_one_names_its_index() {
    use portcullis_crds::config::IpRange;
    let r: IpRange = "10.1.0.0/16".parse().unwrap();
    assert!(r.contains(ip("10.1.200.3")));
    assert!(!r.contains(ip("10.2.0.1")));
    assert!(
        r.contains(ip("::ffff:10.1.0.9")),
        "IPv4-mapped counts as IPv4"
    );
    let v6: IpRange = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains(ip("2001:db8:1::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    let one: IpRange = "192.0.2.7".parse().unwrap();
    assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
    let all: IpRange = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
    assert_eq!(serde_json::to_string(&r).unwrap(), "\"10.1.0.0/16\"");
    for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "::/129"] {
        assert!(bad.parse::<IpRange>().is_err(), "{bad} parsed");
    }

    let edge = array(
        "listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\ntrustedProxies: [10.0.0.0/8, 10.0.0.0/40]\n",
    );
    let errors = translate(&edge, &[], &Resolutions::default()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.trustedProxies[1]");
    let ok_edge = array(
        "listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\ntrustedProxies: [10.0.0.0/8]\nlimits: {maxConnectionsPerClient: 7}\n",
    );
    let t = ok(translate(&ok_edge, &[], &Resolutions::default()));
    assert_eq!(
        t.config.limits.trusted_proxies,
        ["10.0.0.0/8".parse::<IpRange>().unwrap()]
    );
    assert_eq!(t.config.limits.max_connections_per_client, 7);
    // Unset, one address has no cap of its own: members behind a load balancer that
    // SNATs see every client as a handful of node addresses.
    let t = ok(translate(
        &array("listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\n"),
        &[],
        &Resolutions::default(),
    ));
    assert_eq!(t.config.limits.max_connections_per_client, u32::MAX);
}

/// Issue 12, finding 3: only allowed upgrades are tunnelled, never h2c.
#[test]
fn allowed_upgrades_default_to_websocket_and_refuse_h2c() {
    let t = ok(translate(
        &edge(),
        &[site("s", &["s.example.com"], &["/"])],
        &Resolutions::default(),
    ));
    assert_eq!(t.config.farms["default/s"].allowed_upgrades, ["websocket"]);
    let f = farm(
        "u",
        "publish:\n  hosts: [u.example.com]\nservers:\n- address: 10.0.0.1\n  port: 80\nallowedUpgrades: [WebSocket, h2c, 'a,b']\n",
    );
    let t = ok(translate(&edge(), &[f], &Resolutions::default()));
    let fields: Vec<&str> = rejected(&t, "default/u")
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    assert_eq!(
        fields,
        ["spec.allowedUpgrades[1]", "spec.allowedUpgrades[2]"]
    );
}

// ---------------------------------------------------------------------------------------
// Canary farms

/// A farm publishing `shop.example.com` at `paths`, created at `created`, with `canary`
/// (a YAML flow mapping) when given.
fn shop(name: &str, created: &str, paths: &[&str], canary: Option<&str>) -> ServerFarm {
    let canary = canary.map(|c| format!("canary: {c}\n")).unwrap_or_default();
    farm_at(
        name,
        Some(created),
        &format!(
            "publish:\n  hosts: [shop.example.com]\n  paths: {paths:?}\nservers:\n- address: 10.0.0.1\n  port: 80\n{canary}"
        ),
    )
}

#[test]
fn a_canary_attaches_to_its_primarys_routes_whatever_its_age() {
    let canary = shop(
        "canary",
        "2026-01-01T00:00:00Z",
        &["/", "/api"],
        Some("{weight: 20, header: X-Canary, headerValue: yes, cookie: canary}"),
    );
    let primary = shop("primary", "2026-02-01T00:00:00Z", &["/", "/api"], None);
    let t = ok(translate(
        &edge(),
        &[canary, primary],
        &Resolutions::default(),
    ));
    accepted(&t, "default/primary");
    accepted(&t, "default/canary");
    assert_eq!(t.config.routes.len(), 2, "a canary claims no route");
    for r in &t.config.routes {
        assert_eq!(r.farm, "default/primary");
        let c = r.canary.as_ref().expect("the canary is attached");
        assert_eq!(c.farm, "default/canary");
        assert_eq!(c.weight, 20);
        assert_eq!(c.header.as_deref(), Some("x-canary"));
        assert_eq!(c.header_value.as_deref(), Some("yes"));
        assert_eq!(c.cookie.as_deref(), Some("canary"));
    }
    // The config document round-trips with the canary in it.
    let text = t.config.to_json();
    assert_eq!(DataplaneConfig::from_json(&text).unwrap(), t.config);
}

#[test]
fn a_canary_without_a_primary_is_refused() {
    let primary = shop("primary", "2026-01-01T00:00:00Z", &["/"], None);
    let canary = shop(
        "canary",
        "2026-02-01T00:00:00Z",
        &["/", "/beta"],
        Some("{weight: 50}"),
    );
    let t = ok(translate(
        &edge(),
        &[primary, canary],
        &Resolutions::default(),
    ));
    let errors = rejected(&t, "default/canary");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.publish.hosts[0]");
    assert!(
        errors[0]
            .message
            .starts_with("shop.example.com/beta has no primary"),
        "{}",
        errors[0]
    );
    // Refused whole: not even the route that has a primary gets it.
    assert!(t.config.routes.iter().all(|r| r.canary.is_none()));
    assert!(!t.config.farms.contains_key("default/canary"));
}

#[test]
fn a_canary_never_takes_another_namespaces_routes() {
    let primary = shop("primary", "2026-01-01T00:00:00Z", &["/"], None);
    let mut canary = shop(
        "thief",
        "2026-02-01T00:00:00Z",
        &["/"],
        Some("{weight: 100}"),
    );
    canary.metadata.namespace = Some("tenant-b".into());
    canary.spec.array_ref.namespace = Some("default".into());
    let t = ok(translate(
        &edge(),
        &[primary, canary],
        &Resolutions::default(),
    ));
    let errors = rejected(&t, "tenant-b/thief");
    assert!(
        errors[0].message.contains("of another namespace"),
        "{}",
        errors[0]
    );
    assert!(t.config.routes.iter().all(|r| r.canary.is_none()));
}

#[test]
fn a_route_has_one_canary_and_the_older_keeps_it() {
    let primary = shop("primary", "2026-01-01T00:00:00Z", &["/"], None);
    let first = shop(
        "first",
        "2026-02-01T00:00:00Z",
        &["/"],
        Some("{weight: 10}"),
    );
    let second = shop(
        "second",
        "2026-03-01T00:00:00Z",
        &["/"],
        Some("{weight: 90}"),
    );
    let t = ok(translate(
        &edge(),
        &[second, primary, first],
        &Resolutions::default(),
    ));
    accepted(&t, "default/first");
    let errors = rejected(&t, "default/second");
    assert_eq!(
        errors[0].message,
        "shop.example.com/ already has canary ServerFarm default/first"
    );
}

#[test]
fn bad_canary_rules_are_refused_naming_the_field() {
    let primary = shop("primary", "2026-01-01T00:00:00Z", &["/"], None);
    let canary = shop(
        "canary",
        "2026-02-01T00:00:00Z",
        &["/"],
        Some("{weight: 101, headerValue: x, cookie: 'a b'}"),
    );
    let t = ok(translate(
        &edge(),
        &[primary, canary],
        &Resolutions::default(),
    ));
    let fields: Vec<&str> = rejected(&t, "default/canary")
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.canary.weight",
            "spec.canary.cookie",
            "spec.canary.headerValue"
        ]
    );
}

#[test]
fn a_refused_canary_keeps_its_last_good_place_and_a_kept_primary_drops_a_gone_canary() {
    let primary = shop("primary", "2026-01-01T00:00:00Z", &["/"], None);
    let canary = shop(
        "canary",
        "2026-02-01T00:00:00Z",
        &["/"],
        Some("{weight: 10}"),
    );
    let before = ok(translate(
        &edge(),
        &[primary.clone(), canary],
        &Resolutions::default(),
    ))
    .config;

    // The canary's edit is refused: its last good version goes back on the route.
    let bad = shop(
        "canary",
        "2026-02-01T00:00:00Z",
        &["/"],
        Some("{weight: 101}"),
    );
    let t = ok(translate(
        &edge(),
        &[primary.clone(), bad],
        &Resolutions::default(),
    ));
    let mut config = t.config;
    assert!(config.routes[0].canary.is_none());
    assert!(keep_last_good(&mut config, &before, "default/canary"));
    config.check().unwrap();
    assert_eq!(
        config.routes[0].canary.as_ref().unwrap().farm,
        "default/canary"
    );

    // The primary's edit is refused and its canary is gone: the primary comes back
    // without it, so the config stays consistent.
    let bad_primary = farm_at(
        "primary",
        Some("2026-01-01T00:00:00Z"),
        "publish:\n  hosts: [shop.example.com]\nservers: []\n",
    );
    let t = ok(translate(&edge(), &[bad_primary], &Resolutions::default()));
    let mut config = t.config;
    assert!(keep_last_good(&mut config, &before, "default/primary"));
    config.check().unwrap();
    assert_eq!(config.routes[0].farm, "default/primary");
    assert!(config.routes[0].canary.is_none());
}
