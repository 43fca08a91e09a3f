//! Loading an [`super::Inventory`] from `kubectl get ... -o yaml|json` output.
//!
//! Accepted shapes: a `kind: List` (or `PodList`, ...) with `items`, multi-document YAML, a
//! single object, or the same as JSON. Objects of kinds flowwatch does not use are ignored.
//! An object that does not decode is reported (kind, namespace/name, field path) and left out;
//! only text that is not YAML/JSON at all, or an unreadable file, fails the whole snapshot.

use std::path::Path;

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Inventory, ObjectError};

/// The snapshot as a whole could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid YAML or JSON: {message}")]
    Syntax { origin: String, message: String },
}

/// Reads and merges several snapshot files (e.g. one per `kubectl get`).
pub fn load_files<P: AsRef<Path>>(
    paths: &[P],
) -> Result<(Inventory, Vec<ObjectError>), SnapshotError> {
    let mut inventory = Inventory::default();
    let mut errors = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        })?;
        add_text(
            &mut inventory,
            &mut errors,
            &text,
            &path.display().to_string(),
        )?;
    }
    Ok((inventory, errors))
}

/// Parses one snapshot text. `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<(Inventory, Vec<ObjectError>), SnapshotError> {
    let mut inventory = Inventory::default();
    let mut errors = Vec::new();
    add_text(&mut inventory, &mut errors, text, origin)?;
    Ok((inventory, errors))
}

/// Adds the objects of one snapshot text to `inventory`.
pub fn add_text(
    inventory: &mut Inventory,
    errors: &mut Vec<ObjectError>,
    text: &str,
    origin: &str,
) -> Result<(), SnapshotError> {
    let syntax = |message: String| SnapshotError::Syntax {
        origin: origin.to_string(),
        message,
    };
    // Parse into a scratch inventory: a syntax error half-way must not leave half a file.
    let mut sink = Sink {
        inventory: Inventory::default(),
        errors: Vec::new(),
        origin,
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let parsed = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one value, or several concatenated (`kubectl get -o json` per file, cat'ed).
        // YAML flow style (`{kind: List, ...}`) starts the same way: fall back to YAML, and
        // report the JSON error only if that fails too.
        json_documents(trimmed, &mut sink).or_else(|json_error| {
            sink.inventory = Inventory::default();
            sink.errors.clear();
            yaml_documents(text, &mut sink).map_err(|_| json_error)
        })
    } else {
        yaml_documents(text, &mut sink)
    };
    parsed.map_err(syntax)?;
    let Sink {
        inventory: parsed,
        errors: parse_errors,
        ..
    } = sink;
    inventory.namespaces.extend(parsed.namespaces);
    inventory.nodes.extend(parsed.nodes);
    inventory.pods.extend(parsed.pods);
    inventory.services.extend(parsed.services);
    inventory.endpoint_slices.extend(parsed.endpoint_slices);
    inventory.network_policies.extend(parsed.network_policies);
    errors.extend(parse_errors);
    Ok(())
}

/// Where decoded objects go, one at a time: the items of a list are decoded one by one
/// straight from the parser, so the whole file never exists as a document tree (a full
/// `kubectl get pods -A -o yaml` of a large cluster is hundreds of megabytes as a tree).
struct Sink<'a> {
    inventory: Inventory,
    errors: Vec<ObjectError>,
    origin: &'a str,
}

fn json_documents(text: &str, sink: &mut Sink) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    loop {
        DocumentSeed { sink: &mut *sink }
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        // `end` succeeds at the end of input; otherwise another value follows.
        if de.end().is_ok() {
            return Ok(());
        }
    }
}

fn yaml_documents(text: &str, sink: &mut Sink) -> Result<(), String> {
    for doc in serde_yaml::Deserializer::from_str(text) {
        DocumentSeed { sink: &mut *sink }
            .deserialize(doc)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One YAML document or JSON value: a list (`items`), an array of objects, or one object.
struct DocumentSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object or list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut fields = serde_json::Map::new();
        let mut was_list = false;
        while let Some(key) = map.next_key::<String>()? {
            let kind = fields.get("kind").and_then(Value::as_str);
            // `items` of a list (kubectl prints `items` before `kind`; the API server after).
            if key == "items" && kind.is_none_or(|k| k.ends_with("List")) {
                was_list = true;
                // A typed list (`PodList`) names the kind its items may omit.
                let item_kind = kind
                    .and_then(|k| k.strip_suffix("List"))
                    .filter(|k| !k.is_empty())
                    .map(str::to_string);
                map.next_value_seed(ItemsSeed {
                    sink: &mut *self.sink,
                    item_kind,
                })?;
            } else {
                let value = map.next_value::<Value>()?;
                fields.insert(key, value);
            }
        }
        if !was_list {
            let origin = self.sink.origin.to_string();
            self.sink.add_object(Value::Object(fields), None, &origin);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        ItemsSeed {
            sink: self.sink,
            item_kind: None,
        }
        .visit_seq(seq)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(()) // an empty document
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.sink.not_an_object("a boolean");
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.sink.not_an_object("a number");
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.sink.not_an_object("a number");
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.sink.not_an_object("a number");
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.sink.not_an_object("a string");
        Ok(())
    }
}

/// The `items` of a list, decoded and added one at a time.
struct ItemsSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
    item_kind: Option<String>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(item) = seq.next_element::<Value>()? {
            let position = format!("{} item {i}", self.sink.origin);
            self.sink
                .add_object(item, self.item_kind.as_deref(), &position);
            i += 1;
        }
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(()) // `items: null`, an empty list as some tools print it
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        self.sink.items_not_a_list("an object");
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.sink.items_not_a_list("a boolean");
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.sink.items_not_a_list("a number");
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.sink.items_not_a_list("a number");
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.sink.items_not_a_list("a number");
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.sink.items_not_a_list("a string");
        Ok(())
    }
}

impl Sink<'_> {
    fn add_object(&mut self, item: Value, default_kind: Option<&str>, position: &str) {
        add_object(
            &mut self.inventory,
            &mut self.errors,
            item,
            default_kind,
            position,
        );
    }

    fn not_an_object(&mut self, found: &str) {
        self.errors.push(ObjectError {
            object: format!("document in {}", self.origin),
            field: None,
            message: format!("expected an object, found {found}"),
        });
    }

    fn items_not_a_list(&mut self, found: &str) {
        self.errors.push(ObjectError {
            object: format!("List in {}", self.origin),
            field: Some("items".into()),
            message: format!("expected a list, found {found}"),
        });
    }
}

fn add_object(
    inventory: &mut Inventory,
    errors: &mut Vec<ObjectError>,
    mut item: Value,
    default_kind: Option<&str>,
    position: &str,
) {
    let Value::Object(map) = &mut item else {
        errors.push(ObjectError {
            object: position.to_string(),
            field: None,
            message: format!("expected an object, found {}", type_name(&item)),
        });
        return;
    };
    let kind = match (map.get("kind"), default_kind) {
        (Some(Value::String(k)), _) => k.clone(),
        (None, Some(k)) => {
            map.insert("kind".into(), Value::String(k.to_string()));
            k.to_string()
        }
        (Some(other), _) => {
            errors.push(ObjectError {
                object: position.to_string(),
                field: Some("kind".into()),
                message: format!("expected a string, found {}", type_name(other)),
            });
            return;
        }
        (None, None) => {
            errors.push(ObjectError {
                object: position.to_string(),
                field: Some("kind".into()),
                message: "missing".into(),
            });
            return;
        }
    };
    let object = object_name(&kind, map, position);
    match kind.as_str() {
        "Namespace" => push(&mut inventory.namespaces, item, object, errors),
        "Node" => push(&mut inventory.nodes, item, object, errors),
        "Pod" => push(&mut inventory.pods, item, object, errors),
        "Service" => push(&mut inventory.services, item, object, errors),
        "EndpointSlice" => push(&mut inventory.endpoint_slices, item, object, errors),
        "NetworkPolicy" => push(&mut inventory.network_policies, item, object, errors),
        _ => {} // other kinds are not used
    }
}

/// `Kind namespace/name`, `Kind name`, or `Kind at <position>` when it has no name.
fn object_name(kind: &str, map: &serde_json::Map<String, Value>, position: &str) -> String {
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} at {position}"),
    }
}

fn push<T: DeserializeOwned>(
    into: &mut Vec<T>,
    item: Value,
    object: String,
    errors: &mut Vec<ObjectError>,
) {
    match serde_path_to_error::deserialize::<_, T>(item) {
        Ok(obj) => into.push(obj),
        Err(e) => {
            let path = e.path().to_string();
            errors.push(ObjectError {
                object,
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            });
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: x, labels: {team: a}}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: x, name: a, labels: {pod: a}}
  spec:
    nodeName: n1
    containers:
    - name: c
      ports: [{name: serve-80, containerPort: 80}]
  status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {namespace: x, name: ignored}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {namespace: x, name: deny}
  spec: {podSelector: {}}
"#;

    #[test]
    fn reads_a_kubectl_list_and_ignores_other_kinds() {
        let (inv, errors) = parse(LIST, "t.yaml").unwrap();
        assert_eq!(errors, vec![]);
        assert_eq!(inv.namespaces.len(), 1);
        assert_eq!(inv.pods.len(), 1);
        assert_eq!(inv.network_policies.len(), 1);
        let pod = &inv.pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some("a"));
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn multi_document_yaml_and_json_give_the_same_inventory() {
        let multi = "kind: Namespace\napiVersion: v1\nmetadata: {name: x}\n---\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\n";
        let json = r#"{"kind":"List","items":[{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}},{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"x"}}]}"#;
        let (a, ea) = parse(multi, "m").unwrap();
        let (b, eb) = parse(json, "j").unwrap();
        assert!(ea.is_empty() && eb.is_empty(), "{ea:?} {eb:?}");
        assert_eq!(a.namespaces, b.namespaces);
        assert_eq!(a.pods, b.pods);
        assert_eq!(a.pods.len(), 1);
    }

    #[test]
    fn typed_lists_give_their_items_a_kind() {
        let text = r#"{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"a","namespace":"x"}}]}"#;
        let (inv, errors) = parse(text, "p").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(inv.pods.len(), 1);
    }

    #[test]
    fn a_bad_object_is_reported_with_its_field_and_the_rest_is_kept() {
        let text = r#"
kind: List
items:
- kind: NetworkPolicy
  apiVersion: networking.k8s.io/v1
  metadata: {namespace: x, name: bad}
  spec:
    podSelector: {}
    ingress:
    - ports: [{port: 80, endPort: "high"}]
- kind: Pod
  apiVersion: v1
  metadata: {namespace: x, name: a}
- 42
- metadata: {name: nokind}
"#;
        let (inv, errors) = parse(text, "s.yaml").unwrap();
        assert_eq!(inv.pods.len(), 1);
        assert!(inv.network_policies.is_empty());
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].object, "NetworkPolicy x/bad");
        assert_eq!(
            errors[0].field.as_deref(),
            Some("spec.ingress[0].ports[0].endPort")
        );
        assert_eq!(errors[1].object, "s.yaml item 2");
        assert_eq!(errors[2].field.as_deref(), Some("kind"));
    }

    #[test]
    fn text_that_is_not_yaml_fails_the_snapshot() {
        assert!(matches!(
            parse("kind: [unclosed", "bad.yaml"),
            Err(SnapshotError::Syntax { .. })
        ));
        assert!(matches!(
            parse("{\"kind\": ", "bad.json"),
            Err(SnapshotError::Syntax { .. })
        ));
        let missing = load_files(&["/nonexistent/flowwatch-snapshot.yaml"]);
        assert!(matches!(missing, Err(SnapshotError::Io { .. })));
    }

    #[test]
    fn yaml_flow_style_is_not_mistaken_for_json() {
        let (inv, errors) = parse(
            "{kind: List, items: [{kind: Namespace, apiVersion: v1, metadata: {name: x}}]}",
            "flow.yaml",
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(inv.namespaces.len(), 1);
    }

    #[test]
    fn concatenated_json_values_are_all_read() {
        let text = r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}
{"kind":"List","items":[{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"y"}}]}"#;
        let (inv, errors) = parse(text, "c.json").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = inv
            .namespaces
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["x", "y"]);
    }

    #[test]
    fn a_syntax_error_adds_nothing_from_the_file() {
        let mut inv = Inventory::default();
        let mut errors = Vec::new();
        let text = r#"{"kind":"List","items":[{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}, oops"#;
        assert!(add_text(&mut inv, &mut errors, text, "broken.json").is_err());
        assert!(inv.namespaces.is_empty() && errors.is_empty());
    }

    #[test]
    fn items_that_are_not_a_list_are_reported() {
        let (inv, errors) = parse("kind: List\nitems: {a: 1}\n", "odd.yaml").unwrap();
        assert!(inv.pods.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field.as_deref(), Some("items"));
    }

    #[test]
    fn empty_input_is_an_empty_inventory() {
        let (inv, errors) = parse("", "e").unwrap();
        assert!(errors.is_empty());
        assert!(inv.pods.is_empty());
    }
}
