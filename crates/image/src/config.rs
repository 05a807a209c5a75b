//! The image config (OCI plus Docker's extensions) and its history entries, with ordered maps.
//!
//! Field names and omission rules follow what Docker/BuildKit write (`omitempty` fields are left out
//! when empty; Go maps — `ExposedPorts`, `Volumes`, `Labels` — come out with sorted keys, which a
//! `BTreeMap` reproduces). Unknown fields are kept, at the top level and inside `config` and each
//! history entry.
//!
//! A config read from JSON remembers its *shape*: the order of its keys and the empty values
//! (`null`, `""`, `[]`, `{}`) it spelled out. Serialising it again follows that shape, so a base
//! image's config comes back byte-identical from [`ImageConfig::to_docker_json`] whatever tool
//! wrote it, while changed fields follow Docker's rules. That serialiser also escapes `<`, `>` and
//! `&` as `\u003c`, `\u003e`, `\u0026`, as Go's `encoding/json` does.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid image config JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The `{}` value of `ExposedPorts` and `Volumes` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Key order and spelled-out empty values of a JSON object as it was read.
#[derive(Debug, Clone, Default, PartialEq)]
struct JsonShape {
    /// Empty when the object was built in code rather than read: our own order applies.
    order: Vec<String>,
    empties: Map<String, Value>,
}

impl JsonShape {
    fn capture(object: &Map<String, Value>) -> JsonShape {
        JsonShape {
            order: object.keys().cloned().collect(),
            empties: object
                .iter()
                .filter(|(_, value)| is_empty_value(value))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }

    /// Reorders `generated` (what the typed fields serialise to) after the captured shape: known
    /// keys in their original position, empty values that were spelled out restored, empty values
    /// the original did not have dropped, new keys last.
    fn apply(&self, mut generated: Map<String, Value>) -> Map<String, Value> {
        if self.order.is_empty() {
            return generated;
        }
        let mut out = Map::new();
        for key in &self.order {
            let original_empty = self.empties.get(key);
            match (generated.remove(key), original_empty) {
                // Still empty: spelled as the original did (`null` stays `null`, `[]` stays `[]`).
                (Some(value), Some(empty)) if is_empty_value(&value) => {
                    out.insert(key.clone(), empty.clone());
                }
                (Some(value), _) => {
                    out.insert(key.clone(), value);
                }
                (None, Some(empty)) => {
                    out.insert(key.clone(), empty.clone());
                }
                (None, None) => {}
            }
        }
        for (key, value) in generated {
            if !is_empty_value(&value) {
                out.insert(key, value);
            }
        }
        out
    }
}

fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Serialises a `remote = "Self"` derived type through its shape.
macro_rules! shaped_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let generated = <$ty>::serialize(self, serde_json::value::Serializer)
                    .map_err(serde::ser::Error::custom)?;
                match generated {
                    Value::Object(object) => self.shape.apply(object).serialize(serializer),
                    other => other.serialize(serializer),
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let object = Map::<String, Value>::deserialize(deserializer)?;
                let shape = JsonShape::capture(&object);
                let mut parsed =
                    <$ty>::deserialize(Value::Object(object)).map_err(serde::de::Error::custom)?;
                parsed.shape = shape;
                Ok(parsed)
            }
        }
    };
}

/// An image config as Docker writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ImageConfig {
    /// RFC 3339 time the image was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields kiln does not model (`moby.buildkit.buildinfo.v1`, `container_config`, …), in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    shape: JsonShape,
}

shaped_serde!(ImageConfig);

/// The runtime defaults of containers made from the image (`config` in the image config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ContainerConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `KEY=value` entries in order.
    #[serde(
        rename = "Env",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `None` (unset) and `Some([])` (`CMD []`) differ to the builder, though both are left out of
    /// the JSON as Docker does.
    #[serde(rename = "Cmd", default, skip_serializing_if = "option_vec_is_empty")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "Volumes",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub args_escaped: bool,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        rename = "OnBuild",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(rename = "Shell", default, skip_serializing_if = "option_vec_is_empty")]
    pub shell: Option<Vec<String>>,
    /// Fields kiln does not model (`Hostname`, `Image`, `StopTimeout`, …), in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    shape: JsonShape,
}

shaped_serde!(ContainerConfig);

/// Docker's HEALTHCHECK settings; durations are nanoseconds, zero meaning "inherit the default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `[]` inherit, `["NONE"]` disable, `["CMD", args…]` or `["CMD-SHELL", command]`.
    #[serde(
        rename = "Test",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// The layers of the image by uncompressed digest (`diff_ids`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    shape: JsonShape,
}

shaped_serde!(RootFs);

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
            extra: Map::new(),
            shape: JsonShape::default(),
        }
    }
}

/// One history entry; `empty_layer` entries have no layer in `rootfs.diff_ids`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    shape: JsonShape,
}

shaped_serde!(History);

impl History {
    /// A history entry for `created_by`; `empty_layer` for instructions that change only the config.
    pub fn new(created_by: impl Into<String>, empty_layer: bool) -> History {
        History {
            created_by: created_by.into(),
            empty_layer,
            ..History::default()
        }
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn option_vec_is_empty(value: &Option<Vec<String>>) -> bool {
    value.as_ref().is_none_or(Vec::is_empty)
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

impl ImageConfig {
    /// An empty config for `os`/`architecture` (the config of `scratch`, or of an unresolved base
    /// image when building offline).
    pub fn empty(os: &str, architecture: &str, variant: Option<&str>) -> ImageConfig {
        ImageConfig {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.unwrap_or_default().to_string(),
            ..ImageConfig::default()
        }
    }

    /// Parses a config blob.
    ///
    /// # Errors
    /// [`ConfigError::Json`] when `bytes` is not a JSON object of the config's shape.
    pub fn from_json(bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The config as Docker writes it: compact JSON with Go's HTML-safe escaping. A parsed config
    /// that was not changed comes back byte-identical.
    pub fn to_docker_json(&self) -> Vec<u8> {
        to_go_json(self)
    }

    /// Forgets the key order and spelled-out empty values read from JSON, so serialisation follows
    /// kiln's own (OCI) order; used for configs of newly built images.
    pub fn clear_shape(&mut self) {
        self.shape = JsonShape::default();
        self.config.shape = JsonShape::default();
        self.rootfs.shape = JsonShape::default();
        for entry in &mut self.history {
            entry.shape = JsonShape::default();
        }
    }
}

impl ContainerConfig {
    /// The value of environment variable `key`, the last entry winning as in Docker.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find_map(|entry| match entry.split_once('=') {
                Some((name, value)) if name == key => Some(value),
                None if entry == key => Some(""),
                _ => None,
            })
    }

    /// Sets `key=value`, replacing an existing entry in place (keeping its position) or appending.
    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter()
            .position(|existing| env_key(existing) == key)
        {
            Some(position) => {
                self.env[position] = entry;
                // Drop later duplicates so the replaced value is the one in effect.
                let mut index = position + 1;
                while index < self.env.len() {
                    if env_key(&self.env[index]) == key {
                        self.env.remove(index);
                    } else {
                        index += 1;
                    }
                }
            }
            None => self.env.push(entry),
        }
    }

    /// `(key, value)` pairs of the environment in order.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .map(|entry| entry.split_once('=').unwrap_or((entry.as_str(), "")))
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// JSON the way Go's `encoding/json` writes it: compact, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Our types serialise infallibly into memory: string keys only, no failing serialisers.
    value
        .serialize(&mut serializer)
        .expect("image config types always serialise to JSON");
    out
}

struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, ch) in fragment.char_indices() {
            let escape = match ch {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..index])?;
            writer.write_all(escape.as_bytes())?;
            start = index + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as BuildKit writes it (sorted top-level keys from its map-based patching), with
    /// fields kiln does not model and Go's HTML escaping.
    const BUILDKIT_CONFIG: &str = concat!(
        r#"{"architecture":"amd64","config":{"User":"app","ExposedPorts":{"443/tcp":{},"80/tcp":{}},"#,
        r#""Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","NGINX_VERSION=1.27.0"],"#,
        r#""Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],"#,
        r#""Volumes":{"/data":{}},"WorkingDir":"/app","Labels":{"a.b":"1","maintainer":"NGINX \u003cdocker@nginx.com\u003e"},"#,
        r#""StopSignal":"SIGQUIT","ArgsEscaped":true,"#,
        r#""Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/ || exit 1"],"Interval":30000000000,"Retries":3},"#,
        r#""OnBuild":null,"Shell":["/bin/bash","-c"],"FutureField":{"x":1}},"#,
        r#""created":"2024-06-01T10:00:00.123456789Z","#,
        r#""history":[{"created":"2024-05-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:abc in / "},"#,
        r#"{"created":"2024-05-01T00:00:00Z","created_by":"/bin/sh -c #(nop)  CMD [\"sh\"]","empty_layer":true},"#,
        r#"{"created":"2024-06-01T10:00:00Z","created_by":"RUN /bin/sh -c apt-get update \u0026\u0026 rm -rf /var/lib/apt # buildkit","comment":"buildkit.dockerfile.v0"}],"#,
        r#""moby.buildkit.buildinfo.v1":"eyJmcm9udGVuZCI6ImRvY2tlcmZpbGUudjAifQ==","#,
        r#""os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111","#,
        r#""sha256:2222222222222222222222222222222222222222222222222222222222222222"]},"variant":"v8"}"#
    );

    /// A config as the classic Docker builder wrote it, with spelled-out empty values.
    const LEGACY_CONFIG: &str = concat!(
        r#"{"architecture":"amd64","config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"#,
        r#""Tty":false,"Env":["PATH=/bin"],"Cmd":["sh"],"Image":"sha256:abcd","Volumes":null,"WorkingDir":"","#,
        r#""Entrypoint":null,"OnBuild":null,"Labels":{}},"container":"c0ffee","#,
        r#""created":"2021-01-01T00:00:00Z","docker_version":"20.10.7","#,
        r#""history":[{"created":"2021-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:x in / "}],"#,
        r#""os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:3333333333333333333333333333333333333333333333333333333333333333"]}}"#
    );

    #[test]
    fn buildkit_config_round_trips_byte_identically() {
        let config = ImageConfig::from_json(BUILDKIT_CONFIG.as_bytes()).unwrap();
        assert_eq!(config.config.user, "app");
        assert_eq!(config.config.cmd.as_deref().unwrap()[0], "nginx");
        assert_eq!(
            config.config.labels["maintainer"],
            "NGINX <docker@nginx.com>"
        );
        assert_eq!(
            config.config.healthcheck.as_ref().unwrap().interval,
            30_000_000_000
        );
        assert_eq!(config.config.extra["FutureField"]["x"], 1);
        assert!(config.extra.contains_key("moby.buildkit.buildinfo.v1"));
        assert_eq!(config.variant, "v8");
        assert!(config.history[1].empty_layer);
        assert_eq!(config.rootfs.diff_ids.len(), 2);
        assert_eq!(
            String::from_utf8(config.to_docker_json()).unwrap(),
            BUILDKIT_CONFIG
        );
    }

    #[test]
    fn legacy_config_keeps_its_empty_values_and_order() {
        let config = ImageConfig::from_json(LEGACY_CONFIG.as_bytes()).unwrap();
        assert_eq!(config.config.entrypoint, None);
        assert_eq!(config.config.extra["Image"], "sha256:abcd");
        assert_eq!(
            String::from_utf8(config.to_docker_json()).unwrap(),
            LEGACY_CONFIG
        );
    }

    #[test]
    fn changed_fields_follow_docker_rules_in_a_parsed_config() {
        let mut config = ImageConfig::from_json(LEGACY_CONFIG.as_bytes()).unwrap();
        config.config.cmd = None;
        config.config.working_dir = "/srv".to_string();
        config.config.entrypoint = Some(vec!["/entry".to_string()]);
        config
            .config
            .labels
            .insert("z".to_string(), "1".to_string());
        config
            .config
            .labels
            .insert("a".to_string(), "2".to_string());
        let json = String::from_utf8(config.to_docker_json()).unwrap();
        assert!(!json.contains("\"Cmd\""), "{json}");
        assert!(
            json.contains(r#""WorkingDir":"/srv","Entrypoint":["/entry"]"#),
            "{json}"
        );
        assert!(json.contains(r#""Labels":{"a":"2","z":"1"}"#), "{json}");
    }

    #[test]
    fn fresh_config_uses_oci_order_and_omits_empty_fields() {
        let mut config = ImageConfig::empty("linux", "arm64", Some("v8"));
        config.config.env_set("PATH", "/bin");
        config.config.cmd = Some(Vec::new());
        config.history.push(History::new("ENV PATH=/bin", true));
        assert_eq!(
            String::from_utf8(config.to_docker_json()).unwrap(),
            concat!(
                r#"{"architecture":"arm64","os":"linux","variant":"v8","config":{"Env":["PATH=/bin"]},"#,
                r#""rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"ENV PATH=/bin","empty_layer":true}]}"#
            )
        );
    }

    #[test]
    fn env_set_replaces_in_place_and_get_reads_the_last_entry() {
        let mut config = ContainerConfig::default();
        config.env_set("A", "1");
        config.env_set("B", "2");
        config.env_set("A", "3");
        assert_eq!(config.env, vec!["A=3", "B=2"]);
        assert_eq!(config.env_get("A"), Some("3"));
        assert_eq!(config.env_get("C"), None);
        config.env.push("A=4".to_string());
        assert_eq!(config.env_get("A"), Some("4"));
        config.env_set("A", "5");
        assert_eq!(config.env, vec!["A=5", "B=2"]);
        assert_eq!(
            config.env_pairs().collect::<Vec<_>>(),
            vec![("A", "5"), ("B", "2")]
        );
    }

    #[test]
    fn go_escaping_matches_encoding_json() {
        let text = "a<b>&c\u{2028}\"\n";
        assert_eq!(
            String::from_utf8(to_go_json(text)).unwrap(),
            r#""a\u003cb\u003e\u0026c\u2028\"\n""#
        );
    }

    #[test]
    fn sparse_configs_round_trip_without_invented_fields() {
        for json in [
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":null}}"#,
            r#"{"architecture":"amd64","os":"linux","config":{"Healthcheck":{"Test":["NONE"]}},"rootfs":{"type":"layers"}}"#,
            r#"{"os":"linux","rootfs":{"diff_ids":[],"type":"layers"},"history":[{"empty_layer":false,"created_by":"x"}]}"#,
        ] {
            let config = ImageConfig::from_json(json.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(config.to_docker_json()).unwrap(), json);
        }
    }

    #[test]
    fn invalid_config_is_an_error() {
        let error = ImageConfig::from_json(br#"{"config":{"Env":"not a list"}}"#).unwrap_err();
        assert!(error.to_string().contains("invalid image config JSON"));
    }
}
