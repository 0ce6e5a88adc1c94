//! Test support shared by the crds, dataplane and e2e tests.
//!
//! - Typed builders for the `portcullis.io/v1alpha1` kinds ([`FarmBuilder`],
//!   [`ArrayBuilder`]) and their manifest text ([`to_yaml`], [`manifests`]): a renamed
//!   field breaks the build, not a YAML string at run time.
//! - [`session`]: the dataplane's session fixtures (a `FarmConfig`, keyring files), for
//!   the session tests and the cookie bench.
//! - [`api_server`]: what the API server would say about an object, offline.
//!
//! Tests that mean to write an invalid or malformed manifest keep it as raw text: these
//! builders only make objects the types can hold.

pub mod api_server;
pub mod session;

use std::net::SocketAddr;

use portcullis_crds::v1alpha1::{
    ArrayRef, ClientLimits, GatewayArray, GatewayArraySpec, Listener, ListenerProtocol,
    ListenerTls, Publish, Server, ServerFarm, ServerFarmSpec, ServiceRef,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value with every field as a manifest that omits it would have: the serde defaults
/// (`weight: 1`, a verifier's `path: /`...), which are not always `Default::default()`.
/// Use it for the rest of a struct literal: `Affinity { mode: Cookie, ..defaults() }`.
///
/// Panics when `T` has a required field, even one the literal sets (`..base` builds the
/// whole base first): there, use `..Default::default()` where the type has it.
pub fn defaults<T: DeserializeOwned>() -> T {
    serde_json::from_value(serde_json::json!({}))
        .unwrap_or_else(|e| panic!("{} has required fields: {e}", std::any::type_name::<T>()))
}

/// A duration as the manifests write it (`"100ms"`, `"1h"`).
pub fn duration(text: &str) -> portcullis_crds::Duration {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .unwrap_or_else(|e| panic!("{text:?} is not a duration: {e}"))
}

/// One document of manifest text: `apiVersion`, `kind`, `metadata`, `spec`.
pub fn to_yaml<T: Serialize>(object: &T) -> String {
    serde_yaml::to_string(object).expect("an API object serializes to YAML")
}

/// Several documents of one manifest file, separated by `---`, as the dataplane's local
/// mode reads them.
pub fn manifests<T: Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A server at an IP address and port.
pub fn address_server(addr: SocketAddr) -> Server {
    Server {
        address: Some(addr.ip().to_string()),
        port: Some(addr.port()),
        ..defaults()
    }
}

/// The ready endpoints of the Service `name` (in the farm's namespace), port `port`.
pub fn service_server(name: &str, port: u16) -> Server {
    Server {
        service: Some(ServiceRef {
            name: name.to_owned(),
            port,
        }),
        ..defaults()
    }
}

/// A server by DNS name and port.
pub fn host_server(host: &str, port: u16) -> Server {
    Server {
        host: Some(host.to_owned()),
        port: Some(port),
        ..defaults()
    }
}

/// What both builders share: the namespace, the escape hatch into the typed spec, and
/// the object or its text. Each serializes as the object it builds, so [`manifests`]
/// takes builders too.
macro_rules! builder_plumbing {
    ($builder:ident, $field:ident, $kind:ident, $spec:ident) => {
        impl $builder {
            /// The namespace (`default` unless set).
            pub fn namespace(mut self, namespace: &str) -> Self {
                self.$field.metadata.namespace = Some(namespace.to_owned());
                self
            }

            /// No namespace: the object goes to the namespace of the client that
            /// creates it.
            pub fn any_namespace(mut self) -> Self {
                self.$field.metadata.namespace = None;
                self
            }

            /// Changes anything else in the spec.
            pub fn with(mut self, edit: impl FnOnce(&mut $spec)) -> Self {
                edit(&mut self.$field.spec);
                self
            }

            /// The object.
            pub fn build(self) -> $kind {
                self.$field
            }

            /// The object's manifest text.
            pub fn yaml(&self) -> String {
                to_yaml(&self.$field)
            }
        }

        impl Serialize for $builder {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.$field.serialize(serializer)
            }
        }

        impl From<$builder> for $kind {
            fn from(b: $builder) -> $kind {
                b.build()
            }
        }
    };
}

builder_plumbing!(FarmBuilder, farm, ServerFarm, ServerFarmSpec);
builder_plumbing!(ArrayBuilder, array, GatewayArray, GatewayArraySpec);

/// A ServerFarm in namespace `default` published by the array `edge`, with no hosts,
/// paths or servers until they are added.
#[derive(Clone, Debug)]
#[must_use]
pub struct FarmBuilder {
    farm: ServerFarm,
}

impl FarmBuilder {
    /// The farm `name`.
    pub fn new(name: &str) -> FarmBuilder {
        let spec = ServerFarmSpec {
            array_ref: ArrayRef {
                name: "edge".to_owned(),
                namespace: None,
            },
            publish: Publish::default(),
            servers: Vec::new(),
            ..defaults_without_required()
        };
        let mut farm = ServerFarm::new(name, spec);
        farm.metadata.namespace = Some("default".to_owned());
        FarmBuilder { farm }
    }

    /// The GatewayArray that publishes the farm (`edge` unless set).
    pub fn array(mut self, name: &str) -> Self {
        self.farm.spec.array_ref.name = name.to_owned();
        self
    }

    /// Adds published host names.
    pub fn hosts<S: Into<String>>(self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.publish(|p| &mut p.hosts, hosts)
    }

    /// Adds published path prefixes.
    pub fn paths<S: Into<String>>(self, paths: impl IntoIterator<Item = S>) -> Self {
        self.publish(|p| &mut p.paths, paths)
    }

    /// Adds exact paths.
    pub fn exact_paths<S: Into<String>>(self, paths: impl IntoIterator<Item = S>) -> Self {
        self.publish(|p| &mut p.exact_paths, paths)
    }

    /// Adds regex paths.
    pub fn regex_paths<S: Into<String>>(self, paths: impl IntoIterator<Item = S>) -> Self {
        self.publish(|p| &mut p.regex_paths, paths)
    }

    fn publish<S: Into<String>>(
        mut self,
        list: fn(&mut Publish) -> &mut Vec<String>,
        items: impl IntoIterator<Item = S>,
    ) -> Self {
        list(&mut self.farm.spec.publish).extend(items.into_iter().map(Into::into));
        self
    }

    /// Adds a server.
    pub fn server(mut self, server: Server) -> Self {
        self.farm.spec.servers.push(server);
        self
    }

    /// Adds servers.
    pub fn servers(mut self, servers: impl IntoIterator<Item = Server>) -> Self {
        self.farm.spec.servers.extend(servers);
        self
    }
}

/// A ServerFarmSpec's optional fields at their serde defaults; the caller fills in the
/// required ones (`arrayRef`, `publish`, `servers`).
fn defaults_without_required() -> ServerFarmSpec {
    serde_json::from_value(serde_json::json!({
        "arrayRef": {"name": "edge"},
        "publish": {"hosts": []},
        "servers": [],
    }))
    .expect("a ServerFarmSpec with its required fields")
}

/// A GatewayArray in namespace `default` with no listeners until they are added.
#[derive(Clone, Debug)]
#[must_use]
pub struct ArrayBuilder {
    array: GatewayArray,
}

impl ArrayBuilder {
    /// The array `name`.
    pub fn new(name: &str) -> ArrayBuilder {
        let spec: GatewayArraySpec = serde_json::from_value(serde_json::json!({"listeners": []}))
            .expect("a GatewayArraySpec with its required fields");
        let mut array = GatewayArray::new(name, spec);
        array.metadata.namespace = Some("default".to_owned());
        ArrayBuilder { array }
    }

    /// Adds a plain HTTP listener.
    pub fn http(self, name: &str, port: u16) -> Self {
        self.listener(name, port, ListenerProtocol::Http, None)
    }

    /// Adds an HTTPS listener whose default certificate is the Secret `secret`.
    pub fn https(self, name: &str, port: u16, secret: &str) -> Self {
        self.listener(name, port, ListenerProtocol::Https, Some(secret))
    }

    /// Adds a listener; `secret` names its TLS Secret.
    pub fn listener(
        mut self,
        name: &str,
        port: u16,
        protocol: ListenerProtocol,
        secret: Option<&str>,
    ) -> Self {
        self.array.spec.listeners.push(Listener {
            name: name.to_owned(),
            port,
            protocol,
            tls: secret.map(|s| ListenerTls {
                secret_name: s.to_owned(),
            }),
        });
        self
    }

    /// Sets the client limits.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.array.spec.limits = Some(limits);
        self
    }
}

#[cfg(test)]
mod tests {
    use portcullis_crds::v1alpha1::{Affinity, AffinityMode};

    use super::*;

    #[test]
    fn a_farm_reads_back_as_the_manifest_it_replaces() {
        let farm = FarmBuilder::new("shop")
            .hosts(["a.test"])
            .paths(["/"])
            .server(address_server("127.0.0.1:8080".parse().unwrap()))
            .with(|s| {
                s.affinity = Some(Affinity {
                    mode: AffinityMode::Cookie,
                    ..defaults()
                })
            })
            .build();
        let written: ServerFarm = serde_yaml::from_str(
            "apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\nmetadata: {name: shop, namespace: default}\nspec:\n  arrayRef: {name: edge}\n  publish: {hosts: [\"a.test\"], paths: [\"/\"]}\n  servers:\n  - {address: \"127.0.0.1\", port: 8080}\n  affinity: {mode: Cookie}\n",
        )
        .unwrap();
        assert_eq!(farm, written);
        let text = to_yaml(&farm);
        assert_eq!(serde_yaml::from_str::<ServerFarm>(&text).unwrap(), written);
        assert!(text.starts_with("apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\n"));
    }

    #[test]
    fn an_array_reads_back_as_the_manifest_it_replaces() {
        let array = ArrayBuilder::new("edge")
            .http("web", 8080)
            .https("tls", 8443, "cert-a")
            .limits(ClientLimits {
                header_read_timeout: Some(duration("1s")),
                ..defaults()
            })
            .with(|s| s.drain_timeout = Some(duration("10s")))
            .build();
        let written: GatewayArray = serde_yaml::from_str(
            "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata: {name: edge, namespace: default}\nspec:\n  drainTimeout: 10s\n  limits: {headerReadTimeout: 1s}\n  listeners:\n  - name: web\n    port: 8080\n    protocol: HTTP\n  - name: tls\n    port: 8443\n    protocol: HTTPS\n    tls: {secretName: cert-a}\n",
        )
        .unwrap();
        assert_eq!(array, written);
        let docs = manifests(&[array.clone(), array]);
        let read: Vec<GatewayArray> = serde_yaml::Deserializer::from_str(&docs)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(read, vec![written.clone(), written]);
    }

    #[test]
    #[should_panic(expected = "required fields")]
    fn defaults_refuses_a_type_with_required_fields() {
        let _: ArrayRef = defaults();
    }
}
