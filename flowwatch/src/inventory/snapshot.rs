//! Loading an [`super::Inventory`] from `kubectl get ... -o yaml|json` output.
//!
//! Accepted shapes: a `kind: List` (or `PodList`, ...) with `items`, multi-document YAML, a
//! single object, or the same as JSON. Objects of kinds flowwatch does not use are ignored.
//! An object that does not decode, or YAML that has no JSON equivalent (a custom tag, a key
//! that is not a scalar), is reported (kind, namespace/name, field path) and left out; a
//! NetworkPolicy is kept as a placeholder so the engine reports it as skipped (see
//! [`super::UNDECODABLE_POLICY_ANNOTATION`]). Only text that is not YAML/JSON at all, or an
//! unreadable file, fails the whole snapshot.

use std::path::Path;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_json::Value;

use super::policy_types::DeclaredTypes;
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
        let text =
            super::limits::read_to_string_bounded(path).map_err(|source| SnapshotError::Io {
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

/// Adds the objects of one snapshot text to `inventory`. Returns how many Kubernetes documents
/// (objects or lists with a `kind`) the text held, used or not: zero means it was not a
/// cluster dump at all (see `super::snapshot_reload`).
pub fn add_text(
    inventory: &mut Inventory,
    errors: &mut Vec<ObjectError>,
    text: &str,
    origin: &str,
) -> Result<usize, SnapshotError> {
    let syntax = |message: String| SnapshotError::Syntax {
        origin: origin.to_string(),
        message,
    };
    // Depth and number bounds, in linear time, before any parser (see `super::limits`).
    let bounded = super::limits::bound(text).map_err(syntax)?;
    let text: &str = &bounded;
    // Parse into a scratch inventory: a syntax error half-way must not leave half a file.
    let mut sink = Sink {
        inventory: Inventory::default(),
        errors: Vec::new(),
        origin,
        documents: 0,
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let parsed = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one value, or several concatenated (`kubectl get -o json` per file, cat'ed).
        // YAML flow style (`{kind: List, ...}`) starts the same way: fall back to YAML, and
        // report the JSON error only if that fails too.
        json_documents(trimmed, &mut sink).or_else(|json_error| {
            sink.inventory = Inventory::default();
            sink.errors.clear();
            sink.documents = 0;
            yaml_documents(text, &mut sink).map_err(|yaml_error| {
                super::limits::syntax_error(trimmed, &json_error, &yaml_error)
            })
        })
    } else {
        yaml_documents(text, &mut sink)
    };
    parsed.map_err(syntax)?;
    let Sink {
        inventory: parsed,
        errors: parse_errors,
        documents,
        ..
    } = sink;
    inventory.namespaces.extend(parsed.namespaces);
    inventory.nodes.extend(parsed.nodes);
    inventory.pods.extend(parsed.pods);
    inventory.services.extend(parsed.services);
    inventory.endpoint_slices.extend(parsed.endpoint_slices);
    inventory.network_policies.extend(parsed.network_policies);
    inventory.cluster_policies.extend(parsed.cluster_policies);
    inventory.workloads.extend(parsed.workloads);
    errors.extend(parse_errors);
    Ok(documents)
}

/// Where decoded objects go, one at a time: the items of a list are decoded one by one
/// straight from the parser, so the whole file never exists as a document tree (a full
/// `kubectl get pods -A -o yaml` of a large cluster is hundreds of megabytes as a tree).
struct Sink<'a> {
    inventory: Inventory,
    errors: Vec<ObjectError>,
    origin: &'a str,
    /// Objects and lists with a `kind` seen.
    documents: usize,
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
        // Items of a list whose `kind` was not read yet and that lack their own `kind`:
        // sorted output (`jq -S`, PyYAML) prints `items` before `kind: PodList`.
        let mut held = Vec::new();
        let mut not_json = None;
        while let Some(key) = map.next_key_seed(Lenient)? {
            let key = match key.and_then(into_key) {
                Ok(key) => key,
                Err(e) => {
                    map.next_value::<IgnoredAny>()?;
                    not_json.get_or_insert(e);
                    continue;
                }
            };
            let kind = fields.get("kind").and_then(Value::as_str);
            // `items` of a list (kubectl prints `items` before `kind`; the API server after).
            if key == "items" && kind.is_none_or(|k| k.ends_with("List")) {
                was_list = true;
                held = map.next_value_seed(ItemsSeed {
                    sink: &mut *self.sink,
                    item_kind: kind.and_then(list_item_kind).map(str::to_string),
                    hold_kindless: kind.is_none(),
                })?;
            } else {
                let value = map.next_value_seed(Lenient)?;
                keep_field(&mut fields, key, value, &mut not_json);
            }
        }
        if fields.get("kind").is_some_and(Value::is_string) {
            self.sink.documents += 1;
        }
        let origin = self.sink.origin.to_string();
        let item_kind = fields
            .get("kind")
            .and_then(Value::as_str)
            .and_then(list_item_kind)
            .map(str::to_string);
        match not_json {
            Some(mut e) => {
                e.partial = Some(fields);
                self.sink.not_json(e, None, &origin);
            }
            None if !was_list => self.sink.add_object(Value::Object(fields), None, &origin),
            None => {}
        }
        for (position, item) in held {
            self.sink.add_object(item, item_kind.as_deref(), &position);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        ItemsSeed {
            sink: self.sink,
            item_kind: None,
            hold_kindless: false,
        }
        .visit_seq(seq)
        .map(|_| ())
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

/// The kind a typed list (`PodList`) gives the items that omit theirs.
fn list_item_kind(list_kind: &str) -> Option<&str> {
    list_kind.strip_suffix("List").filter(|k| !k.is_empty())
}

/// Items held for later: (position, item).
type Held = Vec<(String, Value)>;

/// The `items` of a list, decoded and added one at a time; with `hold_kindless`, items
/// without a `kind` are returned instead, to be added once the list's kind is known.
struct ItemsSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
    item_kind: Option<String>,
    hold_kindless: bool,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = Held;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Held, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = Held;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Held, A::Error> {
        let mut held = Vec::new();
        let mut i = 0usize;
        while let Some(item) = seq.next_element_seed(Lenient)? {
            let position = format!("{} item {i}", self.sink.origin);
            i += 1;
            match item {
                Ok(item)
                    if self.hold_kindless && item.get("kind").is_none() && item.is_object() =>
                {
                    held.push((position, item));
                }
                Ok(item) => self
                    .sink
                    .add_object(item, self.item_kind.as_deref(), &position),
                Err(e) => self.sink.not_json(e, self.item_kind.as_deref(), &position),
            }
        }
        Ok(held)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Held, E> {
        Ok(Vec::new()) // `items: null`, an empty list as some tools print it
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Held, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Held, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.sink.items_not_a_list("an object"))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Held, E> {
        Ok(self.sink.items_not_a_list("a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Held, E> {
        Ok(self.sink.items_not_a_list("a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Held, E> {
        Ok(self.sink.items_not_a_list("a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Held, E> {
        Ok(self.sink.items_not_a_list("a number"))
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Held, E> {
        Ok(self.sink.items_not_a_list("a string"))
    }
}

/// Why a YAML value has no JSON equivalent, and where in its object.
struct NotJson {
    /// Field path segments, innermost first (`key` or `[index]`).
    path: Vec<String>,
    message: String,
    /// The fields of the object it is in that did decode (to name the object).
    partial: Option<serde_json::Map<String, Value>>,
}

impl NotJson {
    fn new(message: String) -> NotJson {
        NotJson {
            path: Vec::new(),
            message,
            partial: None,
        }
    }

    fn within(mut self, key: &str) -> NotJson {
        self.path.push(key.to_string());
        self
    }

    fn into_error(self, object: String) -> ObjectError {
        let mut field = String::new();
        for segment in self.path.iter().rev() {
            if !field.is_empty() && !segment.starts_with('[') {
                field.push('.');
            }
            field.push_str(segment);
        }
        ObjectError {
            object,
            field: (!field.is_empty()).then_some(field),
            message: self.message,
        }
    }
}

fn into_key(key: Value) -> Result<String, NotJson> {
    match key {
        Value::String(s) => Ok(s),
        Value::Bool(_) | Value::Number(_) => Ok(key.to_string()),
        other => Err(NotJson::new(format!(
            "a key must be a string, found {}",
            type_name(&other)
        ))),
    }
}

/// Decodes a JSON value like `serde_json::Value` does, but YAML that has no JSON equivalent
/// (a custom tag, a key that is a list or a map) becomes a `NotJson` for the object holding
/// it after being read through: the parser stays in step, so only that object is lost, not
/// the whole file.
struct Lenient;

type Decoded = Result<Value, NotJson>;

/// Puts a decoded field into `fields`; for one that did not decode, keeps what did of it (a
/// nested object's `metadata` still names the object) and records the first problem, with its
/// path, in `bad`.
fn keep_field(
    fields: &mut serde_json::Map<String, Value>,
    key: String,
    value: Decoded,
    bad: &mut Option<NotJson>,
) {
    match value {
        Ok(value) => {
            fields.insert(key, value);
        }
        Err(mut e) => {
            if let Some(partial) = e.partial.take() {
                fields.insert(key.clone(), Value::Object(partial));
            }
            bad.get_or_insert(e.within(&key));
        }
    }
}

impl<'de> DeserializeSeed<'de> for Lenient {
    type Value = Decoded;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Lenient {
    type Value = Decoded;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Decoded, E> {
        Ok(Ok(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Decoded, E> {
        Ok(Ok(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Decoded, E> {
        Ok(Ok(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Decoded, E> {
        Ok(Ok(Value::from(v))) // NaN and infinities become null, as in serde_json
    }

    fn visit_str<E>(self, v: &str) -> Result<Decoded, E> {
        if let Some(reason) = super::limits::marker_reason(v) {
            return Ok(Err(NotJson::new(reason.to_string())));
        }
        Ok(Ok(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Decoded, E> {
        if let Some(reason) = super::limits::marker_reason(&v) {
            return Ok(Err(NotJson::new(reason.to_string())));
        }
        Ok(Ok(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Decoded, E> {
        Ok(Ok(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Decoded, E> {
        Ok(Ok(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        Lenient.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decoded, A::Error> {
        let mut items = Vec::new();
        let mut bad = None;
        while let Some(item) = seq.next_element_seed(Lenient)? {
            match item {
                Ok(v) => items.push(v),
                Err(mut e) => {
                    e.partial = None; // names what is inside the list, not its holder
                    bad.get_or_insert(e.within(&format!("[{}]", items.len())));
                }
            }
        }
        Ok(bad.map_or(Ok(Value::Array(items)), Err))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
        let mut fields = serde_json::Map::new();
        let mut bad = None;
        while let Some(key) = map.next_key_seed(Lenient)? {
            match key.and_then(into_key) {
                Ok(key) => {
                    let value = map.next_value_seed(Lenient)?;
                    keep_field(&mut fields, key, value, &mut bad);
                }
                Err(e) => {
                    map.next_value::<IgnoredAny>()?;
                    bad.get_or_insert(e);
                }
            }
        }
        Ok(match bad {
            None => Ok(Value::Object(fields)),
            Some(mut e) => {
                e.partial = Some(fields);
                Err(e)
            }
        })
    }

    /// A YAML tag (`!foo x`): serde_yaml presents it as an enum variant.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Decoded, A::Error> {
        let (tag, content) = data.variant::<String>()?;
        content.newtype_variant::<IgnoredAny>()?;
        Ok(Err(NotJson::new(format!(
            "YAML tag !{} is not supported",
            tag.trim_start_matches('!')
        ))))
    }
}

impl Sink<'_> {
    fn add_object(&mut self, item: Value, default_kind: Option<&str>, position: &str) {
        if default_kind.is_some() || item.get("kind").is_some_and(Value::is_string) {
            self.documents += 1;
        }
        add_object(
            &mut self.inventory,
            &mut self.errors,
            item,
            default_kind,
            position,
        );
    }

    /// Reports an object that is not JSON, named by what of it decoded. A NetworkPolicy is
    /// kept as a placeholder, as when it does not decode (see [`undecodable_policy`]).
    fn not_json(&mut self, mut e: NotJson, default_kind: Option<&str>, position: &str) {
        let fields = e.partial.take().unwrap_or_default();
        let kind = fields.get("kind").and_then(Value::as_str).or(default_kind);
        let object = match kind {
            Some(kind) => object_name(kind, &fields, position),
            None => position.to_string(),
        };
        if kind == Some("NetworkPolicy") {
            let mut placeholder = undecodable_policy(&fields);
            // What did not decode may be its policy types: count both directions.
            placeholder.spec = Some(NetworkPolicySpec {
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..Default::default()
            });
            self.inventory.network_policies.push(placeholder);
        }
        if let Some(kind) = kind.filter(|k| super::cluster_policy::is_cluster_policy_kind(k, None))
        {
            let name = fields.get("metadata").and_then(|m| m.get("name"));
            let name = name.and_then(Value::as_str).unwrap_or_default();
            let undecodable = (kind.to_string(), name.to_string());
            self.inventory
                .cluster_policies
                .undecodable
                .push(undecodable);
        }
        self.errors.push(e.into_error(object));
    }

    fn not_an_object(&mut self, found: &str) {
        self.errors.push(ObjectError {
            object: format!("document in {}", self.origin),
            field: None,
            message: format!("expected an object, found {found}"),
        });
    }

    fn items_not_a_list(&mut self, found: &str) -> Held {
        self.errors.push(ObjectError {
            object: format!("List in {}", self.origin),
            field: Some("items".into()),
            message: format!("expected a list, found {found}"),
        });
        Vec::new()
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
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    if let Some(api_version) = api_version
        .filter(|v| super::cluster_policy::cni_policy_kind(&kind, Some(v)).is_some())
        .map(str::to_string)
    {
        // A CNI's own kind (Calico's and Antrea's share the name NetworkPolicy): counted only.
        let cni = &mut inventory.cluster_policies;
        return super::cluster_policy::add_cni_object(cni, &kind, &api_version, &item);
    }
    if let Err((field, message)) = super::label_rules::check_object(&kind, map) {
        if kind == "NetworkPolicy" {
            inventory.network_policies.push(undecodable_policy(map));
        }
        errors.push(ObjectError {
            object,
            field: Some(field),
            message,
        });
        return;
    }
    match kind.as_str() {
        "Namespace" => _ = push(&mut inventory.namespaces, item, object, errors),
        "Node" => _ = push(&mut inventory.nodes, item, object, errors),
        "Pod" => _ = push(&mut inventory.pods, item, object, errors),
        "Service" => _ = push(&mut inventory.services, item, object, errors),
        "EndpointSlice" => _ = push(&mut inventory.endpoint_slices, item, object, errors),
        "NetworkPolicy" => {
            // Read before `item` is consumed: what the engine needs to report it as skipped.
            let placeholder = undecodable_policy(map);
            if !push(&mut inventory.network_policies, item, object, errors) {
                inventory.network_policies.push(placeholder);
            }
        }
        kind if super::cluster_policy::is_cluster_policy_kind(
            kind,
            map.get("apiVersion").and_then(Value::as_str),
        ) =>
        {
            super::cluster_policy::add_object(
                &mut inventory.cluster_policies,
                kind,
                item,
                object,
                errors,
            );
        }
        kind if super::workloads::is_workload_kind(kind) => {
            match super::workloads::stand_in(kind, map) {
                Ok(pod) => inventory.workloads.push(pod),
                Err(e) => errors.push(e),
            }
        }
        _ => {} // other kinds are not used
    }
}

/// `Kind namespace/name`, `Kind name`, or `Kind at <position>` when it has no name.
fn object_name(kind: &str, map: &serde_json::Map<String, Value>, position: &str) -> String {
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match field("name") {
        Some(name) => super::object_name(kind, field("namespace"), name),
        None => format!("{kind} at {position}"),
    }
}

/// Decodes `item` into `into`, or reports it; false when it did not decode.
fn push<T: DeserializeOwned>(
    into: &mut Vec<T>,
    item: Value,
    object: String,
    errors: &mut Vec<ObjectError>,
) -> bool {
    match ObjectError::decode(|| object, item) {
        Ok(obj) => {
            into.push(obj);
            true
        }
        Err(e) => {
            errors.push(e);
            false
        }
    }
}

/// The placeholder of a NetworkPolicy that does not decode (see
/// [`super::UNDECODABLE_POLICY_ANNOTATION`]): its namespace, name and the directions it
/// declares, read leniently from the raw object. Directions that cannot be read count as
/// declared, so a verdict it might have changed is flagged rather than silently trusted.
fn undecodable_policy(map: &serde_json::Map<String, Value>) -> NetworkPolicy {
    let meta = |f: &str| {
        map.get("metadata")
            .and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let spec = map.get("spec").filter(|s| !s.is_null());
    let non_empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true, // unreadable
    };
    // Read leniently (see `policy_types`): what cannot be read counts as both directions.
    let (ingress, egress) = match spec {
        None => (true, false),
        Some(Value::Object(spec)) => match spec.get("policyTypes") {
            None | Some(Value::Null) => {
                DeclaredTypes::of(None::<[Option<&str>; 0]>, non_empty(spec.get("egress")))
                    .lenient()
            }
            Some(Value::Array(types)) => DeclaredTypes::of(
                Some(types.iter().map(Value::as_str)),
                non_empty(spec.get("egress")),
            )
            .lenient(),
            Some(_) => (true, true),
        },
        Some(_) => (true, true),
    };
    let types = [("Ingress", ingress), ("Egress", egress)]
        .into_iter()
        .filter(|(_, declared)| *declared)
        .map(|(t, _)| t.to_string())
        .collect();
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: meta("namespace"),
            name: meta("name"),
            annotations: Some(
                [(
                    super::UNDECODABLE_POLICY_ANNOTATION.to_string(),
                    String::new(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            policy_types: Some(types),
            ..Default::default()
        }),
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

    const LIST: &str = r"
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
  metadata: {namespace: x, name: web}
  spec: {template: {metadata: {labels: {app: web}}}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {namespace: x, name: ignored}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {namespace: x, name: deny}
  spec: {podSelector: {}}
";

    #[test]
    fn reads_a_kubectl_list_and_ignores_other_kinds() {
        let (inv, errors) = parse(LIST, "t.yaml").unwrap();
        assert_eq!(errors, vec![]);
        assert_eq!(inv.namespaces.len(), 1);
        assert_eq!(inv.pods.len(), 1);
        // A workload is kept apart, as the pod that stands for its replicas.
        assert_eq!(inv.workloads.len(), 1);
        assert_eq!(
            inv.workloads[0].metadata.name.as_deref(),
            Some("deployment/web")
        );
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
        // Kept only as a placeholder, so the engine can report it as skipped.
        assert_eq!(inv.network_policies.len(), 1);
        assert!(crate::inventory::is_undecodable_policy(
            &inv.network_policies[0]
        ));
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
    fn typed_lists_with_sorted_keys_keep_their_items() {
        // `jq -S` and PyYAML sort keys: `items` comes before `kind`.
        let json = r#"{"apiVersion":"v1","items":[{"metadata":{"name":"a","namespace":"x"}},{"kind":"Namespace","metadata":{"name":"x"}}],"kind":"PodList"}"#;
        let yaml = "apiVersion: v1\nitems:\n- metadata: {name: a, namespace: x}\n- kind: Namespace\n  metadata: {name: x}\nkind: PodList\n";
        for (text, origin) in [(json, "sorted.json"), (yaml, "sorted.yaml")] {
            let (inv, errors) = parse(text, origin).unwrap();
            assert!(errors.is_empty(), "{origin}: {errors:?}");
            assert_eq!(inv.pods.len(), 1, "{origin}");
            assert_eq!(inv.namespaces.len(), 1, "{origin}");
        }
        // Without any kind, an item is still reported as such.
        let (inv, errors) = parse(r#"{"items":[{"metadata":{"name":"a"}}]}"#, "k.json").unwrap();
        assert!(inv.pods.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "k.json item 0");
        assert_eq!(errors[0].field.as_deref(), Some("kind"));
    }

    #[test]
    fn yaml_that_is_not_json_fails_only_its_object() {
        let text = r"
kind: List
items:
- kind: Pod
  apiVersion: v1
  metadata: {namespace: x, name: tagged, labels: {a: !foo x}}
- kind: Pod
  apiVersion: v1
  metadata: {namespace: x, name: odd-key, labels: {[a, b]: c}}
- kind: Pod
  apiVersion: v1
  metadata: {namespace: x, name: good}
";
        let (inv, errors) = parse(text, "t.yaml").unwrap();
        let names: Vec<_> = inv.pods.iter().map(|p| p.metadata.name.clone()).collect();
        assert_eq!(names, vec![Some("good".to_string())]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].object, "Pod x/tagged");
        assert_eq!(errors[0].field.as_deref(), Some("metadata.labels.a"));
        assert!(errors[0].message.contains("!foo"), "{errors:?}");
        assert_eq!(errors[1].object, "Pod x/odd-key");
        assert_eq!(errors[1].field.as_deref(), Some("metadata.labels"));
        // A whole document that is one such object.
        let (inv, errors) = parse(
            "kind: Namespace\nmetadata: {name: !foo x}\n---\nkind: Namespace\nmetadata: {name: y}\n",
            "d.yaml",
        )
        .unwrap();
        assert_eq!(inv.namespaces.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "Namespace at d.yaml");
        assert_eq!(errors[0].field.as_deref(), Some("metadata.name"));
        // A policy that is not JSON is kept as a placeholder, like one that does not decode.
        let (inv, errors) = parse(
            "kind: NetworkPolicy\nmetadata: {namespace: x, name: p}\nspec: {podSelector: !foo {}}\n",
            "np.yaml",
        )
        .unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "NetworkPolicy x/p");
        assert_eq!(errors[0].field.as_deref(), Some("spec.podSelector"));
        assert_eq!(inv.network_policies.len(), 1);
        assert!(crate::inventory::is_undecodable_policy(
            &inv.network_policies[0]
        ));
    }

    #[test]
    fn an_undecodable_policy_is_kept_as_a_placeholder() {
        let text = r#"
kind: List
items:
- kind: NetworkPolicy
  apiVersion: networking.k8s.io/v1
  metadata: {namespace: x, name: out}
  spec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 80, endPort: "high"}]}]}
- kind: NetworkPolicy
  apiVersion: networking.k8s.io/v1
  metadata: {namespace: x, name: no-types}
  spec: {podSelector: {}, ingress: "oops"}
"#;
        let (inv, errors) = parse(text, "p.yaml").unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let directions: Vec<_> = inv
            .network_policies
            .iter()
            .map(|p| {
                assert!(crate::inventory::is_undecodable_policy(p));
                (
                    p.metadata.name.clone().unwrap(),
                    p.spec.as_ref().and_then(|s| s.policy_types.clone()),
                )
            })
            .collect();
        assert_eq!(
            directions,
            vec![
                ("out".to_string(), Some(vec!["Egress".to_string()])),
                ("no-types".to_string(), Some(vec!["Ingress".to_string()])),
            ]
        );
    }

    #[test]
    fn empty_input_is_an_empty_inventory() {
        let (inv, errors) = parse("", "e").unwrap();
        assert!(errors.is_empty());
        assert!(inv.pods.is_empty());
    }
}
