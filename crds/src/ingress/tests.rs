use super::*;

fn ingress(yaml: &str) -> Ingress {
    serde_yaml::from_str(yaml).unwrap()
}

fn class(yaml: &str) -> IngressClass {
    serde_yaml::from_str(yaml).unwrap()
}

fn edge() -> ArrayTarget {
    ArrayTarget {
        namespace: "edge".into(),
        name: "public".into(),
    }
}

const OURS: &str = "
metadata: {name: portcullis}
spec:
  controller: portcullis.io/ingress-controller
  parameters: {apiGroup: portcullis.io, kind: GatewayArray, scope: Namespace, namespace: edge, name: public}
";

const SHOP: &str = "
metadata:
  name: shop
  namespace: web
  uid: u-1
  creationTimestamp: '2026-01-02T03:04:05Z'
spec:
  ingressClassName: portcullis
  tls:
  - hosts: [shop.example.com]
    secretName: shop-cert
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
  - http:
      paths:
      - {path: /, pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 80}}}}
";

fn ports() -> ServicePorts {
    BTreeMap::from([(("api".to_owned(), "http".to_owned()), 8080)])
}

#[test]
fn classes_select_the_array() {
    let classes = vec![
        class(OURS),
        class("metadata: {name: other}\nspec: {controller: example.com/x}\n"),
    ];
    let none = Migration::default();
    let named = ingress("metadata: {name: a}\nspec: {ingressClassName: portcullis}\n");
    assert_eq!(
        target(&named, &classes, &none),
        Some(("portcullis".into(), edge()))
    );
    let legacy = ingress(
        "metadata: {name: a, annotations: {kubernetes.io/ingress.class: portcullis}}\nspec: {}\n",
    );
    assert_eq!(
        target(&legacy, &classes, &none).map(|t| t.0),
        Some("portcullis".into())
    );
    let other = ingress("metadata: {name: a}\nspec: {ingressClassName: other}\n");
    assert_eq!(target(&other, &classes, &none), None);
    // No class: only a default class of ours takes it.
    let classless = ingress("metadata: {name: a}\nspec: {}\n");
    assert_eq!(target(&classless, &classes, &none), None);
    let mut default = class(OURS);
    default.metadata.annotations = Some(BTreeMap::from([(
        DEFAULT_CLASS_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    assert_eq!(
        target(&classless, &[default], &none),
        Some(("portcullis".into(), edge()))
    );
    // The migration switch serves ingress-nginx's class.
    let nginx = ingress("metadata: {name: a}\nspec: {ingressClassName: nginx}\n");
    assert_eq!(target(&nginx, &classes, &none), None);
    let migration = Migration {
        classes: vec!["nginx".into()],
        array: Some(edge()),
    };
    assert_eq!(
        target(&nginx, &classes, &migration),
        Some(("nginx".into(), edge()))
    );
}

#[test]
fn a_class_without_usable_parameters_is_explained() {
    let broken =
        class("metadata: {name: p}\nspec: {controller: portcullis.io/ingress-controller}\n");
    assert_eq!(class_array(&broken), None);
    assert!(class_problem(&broken).unwrap().contains("spec.parameters"));
    assert_eq!(class_problem(&class(OURS)), None);
}

#[test]
fn rules_become_one_farm_per_host_and_backend() {
    let t = translate(&ingress(SHOP), &edge(), &ports());
    let summary: Vec<(String, Vec<String>, Vec<String>, String)> = t
        .farms
        .iter()
        .map(|f| {
            let s = f.spec.servers[0].service.as_ref().unwrap();
            (
                f.spec.publish.hosts.join(","),
                f.spec.publish.paths.clone(),
                f.spec
                    .publish
                    .tls
                    .iter()
                    .map(|t| t.secret_name.clone())
                    .collect(),
                format!("{}:{}", s.name, s.port),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        summary,
        [
            ("*".into(), vec!["/".into()], vec![], "web:80".into()),
            (
                "shop.example.com".into(),
                vec!["/".into()],
                vec!["shop-cert".into()],
                "web:80".into()
            ),
            (
                "shop.example.com".into(),
                vec!["/api".into()],
                vec!["shop-cert".into()],
                "api:8080".into()
            ),
        ]
    );
    // The duplicate /api path is reported, not served twice.
    assert_eq!(t.findings.len(), 1, "{:?}", t.findings);
    assert_eq!(t.findings[0].subject, "spec.rules[0].http.paths[2]");
    assert!(
        t.findings[0]
            .message
            .contains("already routed by spec.rules[0].http.paths[1]")
    );
    for f in &t.farms {
        assert_eq!(f.namespace().as_deref(), Some("web"));
        assert_eq!(f.spec.array_ref.name, "public");
        assert_eq!(f.spec.array_ref.namespace.as_deref(), Some("edge"));
        assert_eq!(f.labels()[INGRESS_LABEL], "shop");
        let owner = &f.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Ingress", "u-1", Some(true))
        );
        assert_eq!(
            f.annotations()[SOURCE_CREATED_ANNOTATION],
            "2026-01-02T03:04:05Z"
        );
        assert!(f.name_any().starts_with("shop-") && f.name_any().len() <= 63);
        assert!(crate::translate::controlling_ingress(f).is_some());
    }
    // Names are stable across translations.
    let again = translate(&ingress(SHOP), &edge(), &ports());
    assert_eq!(again.farms, t.farms);
}

#[test]
fn https_redirect_follows_tls_hosts_only() {
    let t = translate(&ingress(SHOP), &edge(), &ports());
    for f in &t.farms {
        let redirect = serde_json::to_value(&f.spec).unwrap()["filters"]["httpsRedirect"].clone();
        let tls_host = f.spec.publish.hosts[0] == "shop.example.com";
        assert_eq!(!redirect.is_null(), tls_host, "{}", f.name_any());
    }
}

#[test]
fn unresolvable_backends_are_findings_not_failures() {
    let t = translate(&ingress(SHOP), &edge(), &ServicePorts::new());
    assert!(
        t.findings
            .iter()
            .any(|f| f.subject == "spec.rules[0].http.paths[1]"
                && f.message.contains("no port named \"http\""))
    );
    // The other paths are still served.
    assert_eq!(t.farms.len(), 2);
    let resource = ingress(
        "metadata: {name: r, namespace: web}\nspec:\n  defaultBackend: {resource: {kind: Bucket, name: b}}\n",
    );
    let t = translate(&resource, &edge(), &ServicePorts::new());
    assert!(t.farms.is_empty());
    assert!(t.findings[0].message.contains("resource backend"));
}

#[test]
fn the_default_backend_answers_what_the_rules_leave() {
    let ing = ingress(
        "metadata: {name: d, namespace: web}\nspec:\n  defaultBackend: {service: {name: fallback, port: {number: 8080}}}\n  rules:\n  - host: a.example.com\n    http:\n      paths:\n      - {path: /api, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n  - host: b.example.com\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
    );
    let t = translate(&ing, &edge(), &ServicePorts::new());
    assert_eq!(t.findings, []);
    let fallback: Vec<(Vec<String>, Vec<String>)> = t
        .farms
        .iter()
        .filter(|f| f.spec.servers[0].service.as_ref().unwrap().name == "fallback")
        .map(|f| (f.spec.publish.hosts.clone(), f.spec.publish.paths.clone()))
        .collect();
    // Only a.example.com leaves / unrouted; no catch-all host is claimed.
    assert_eq!(
        fallback,
        [(vec!["a.example.com".to_owned()], vec!["/".to_owned()])]
    );
    // An Ingress without rules: its default backend catches every host.
    let bare = ingress(
        "metadata: {name: e, namespace: web}\nspec:\n  defaultBackend: {service: {name: fallback, port: {number: 8080}}}\n",
    );
    let t = translate(&bare, &edge(), &ServicePorts::new());
    assert_eq!(t.farms.len(), 1);
    assert_eq!(t.farms[0].spec.publish.hosts, ["*"]);
}

#[test]
fn exact_and_regex_paths_keep_their_kind() {
    let ing = ingress(
        "metadata: {name: k, namespace: web}\nspec:\n  rules:\n  - host: a.example.com\n    http:\n      paths:\n      - {path: /foo, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: /foo, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n",
    );
    let t = translate(&ing, &edge(), &ServicePorts::new());
    assert_eq!(t.findings, []);
    let p = &t.farms[0].spec.publish;
    assert_eq!(p.exact_paths, ["/foo"]);
    assert_eq!(p.paths, ["/foo"]);
    assert!(p.regex_paths.is_empty());

    let mut regex = ingress(
        "metadata: {name: r, namespace: web}\nspec:\n  rules:\n  - host: a.example.com\n    http:\n      paths:\n      - {path: '/api(/|$)(.*)', pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 80}}}}\n",
    );
    regex.metadata.annotations = Some(BTreeMap::from([(
        "nginx.ingress.kubernetes.io/rewrite-target".to_owned(),
        "/$2".to_owned(),
    )]));
    let t = translate(&regex, &edge(), &ServicePorts::new());
    assert_eq!(t.findings, []);
    let f = &t.farms[0];
    assert_eq!(f.spec.publish.regex_paths, ["/api(/|$)(.*)"]);
    assert!(f.spec.publish.paths.is_empty() && f.spec.publish.exact_paths.is_empty());
    let spec = serde_json::to_value(&f.spec).unwrap();
    assert_eq!(spec["filters"]["rewrite"], json!({"pathTemplate": "/$2"}));
}

#[test]
fn a_canary_ingress_becomes_a_canary_farm() {
    let mut ing = ingress(SHOP);
    ing.metadata.annotations = Some(BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/canary".to_owned(),
            "true".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/canary-weight".to_owned(),
            "25".to_owned(),
        ),
    ]));
    let t = translate(&ing, &edge(), &ports());
    for f in &t.farms {
        let spec = serde_json::to_value(&f.spec).unwrap();
        assert_eq!(spec["canary"]["weight"], 25, "{spec}");
    }
}

#[test]
fn protection_that_cannot_be_given_fails_closed() {
    let mut ing = ingress(SHOP);
    ing.metadata.annotations = Some(BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/auth-type".to_owned(),
            "digest".to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/auth-secret".to_owned(),
            "users".to_owned(),
        ),
    ]));
    let t = translate(&ing, &edge(), &ports());
    assert!(t.farms.is_empty(), "served without its authentication");
    assert!(
        t.findings
            .iter()
            .any(|f| f.message.contains("not served at all"))
    );
}

#[test]
fn long_names_make_valid_labels_and_distinct_farm_names() {
    let long = "a".repeat(60);
    let one = ingress(&format!(
        "metadata: {{name: {long}x1, namespace: web}}\nspec:\n  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}\n"
    ));
    let two = ingress(&format!(
        "metadata: {{name: {long}x2, namespace: web}}\nspec:\n  defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}\n"
    ));
    let (a, b) = (
        translate(&one, &edge(), &ServicePorts::new()),
        translate(&two, &edge(), &ServicePorts::new()),
    );
    let (fa, fb) = (&a.farms[0], &b.farms[0]);
    assert_ne!(
        fa.name_any(),
        fb.name_any(),
        "same host and backend, other Ingress"
    );
    for f in [fa, fb] {
        assert!(f.name_any().len() <= 63);
        assert!(f.labels()[INGRESS_LABEL].len() <= 63);
    }
    assert_ne!(fa.labels()[INGRESS_LABEL], fb.labels()[INGRESS_LABEL]);
}
