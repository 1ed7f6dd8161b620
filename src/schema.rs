//! `se-compile schema`: a JSON Schema (draft 2020-12) of the YAML spec, for editors
//! (yaml-language-server) and validators.
//!
//! It is generated from the parsers themselves: every layer kind's parser (`Op::parse`), the
//! SE settings (`SeConfig::parse`) and the training recipe (`TrainConfig::from_args`) run in
//! schema mode (`Args::record_keys`), which notes each key they read with its type and range.
//! A key added to a parser is in the schema with no further edit.
//! (So it sits above the parsers it reads, `spec`, `expand` and `ir`, not in any of them.)
//!
//! Values may also be expressions of block parameters (`filters * 4`, `classes`), written as
//! strings; a layer entry may name a block template, whose names the schema cannot know, so
//! unknown layer kinds are left to `se-compile check`. Unknown keys of a known kind, of `se`,
//! of `train`, of a block definition and of the spec itself are schema errors.

use crate::ir::args::{Args, KeyType, RecordedKeys};
use crate::ir::ops::{Op, LAYER_KINDS};
use serde_json::{json, Map, Value};

fn expr() -> Value {
    json!({"$ref": "#/$defs/expr"})
}

fn value_schema(t: &KeyType) -> Value {
    match t {
        KeyType::Int { min } => json!({"anyOf": [{"type": "integer", "minimum": min}, expr()]}),
        KeyType::Float { lo, hi } => {
            json!({"anyOf": [{"type": "number", "minimum": lo, "maximum": hi}, expr()]})
        }
        KeyType::Bool => json!({"anyOf": [{"type": "boolean"}, expr()]}),
        KeyType::Word(ws) => json!({"enum": ws}),
        KeyType::Pair { min } => json!({"anyOf": [
            {"type": "integer", "minimum": min},
            {"type": "array", "minItems": 2, "maxItems": 2,
             "items": {"anyOf": [{"type": "integer", "minimum": min}, expr()]}},
            expr()
        ]}),
        KeyType::Any => json!({}),
    }
}

/// The keys a parser read, as an object schema that allows no other key.
fn object_of(r: &RecordedKeys) -> Value {
    let mut props = Map::new();
    for (k, t) in &r.keys {
        props.insert(k.to_string(), value_schema(t));
    }
    let mut s = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !r.required.is_empty() {
        s["required"] = json!(r.required);
    }
    s
}

/// A layer kind's arguments: a mapping of its keys, or positional values (`conv2d: [64, 3]`,
/// `dense: 10`, `relu` alone).
fn args_schema(kind: &str) -> Value {
    let r = Args::record_keys(kind, |a| Op::parse(kind, a).expect("a known kind"));
    let mut s = json!({"anyOf": [
        object_of(&r),
        {"type": "array"},
        {"type": ["string", "number", "integer", "boolean", "null"]}
    ]});
    if !r.positional.is_empty() {
        s["description"] = json!(format!("positional order: {}", r.positional.join(", ")));
    }
    s
}

/// The schema, as JSON.
pub fn schema() -> Value {
    let mut defs = Map::new();
    defs.insert(
        "expr".into(),
        json!({"type": "string", "description": "an expression of block parameters and `classes`, e.g. `filters * 4`"}),
    );
    let mut kinds = Map::new();
    for k in LAYER_KINDS {
        defs.insert(format!("kind_{k}"), args_schema(k));
        kinds.insert(k.to_string(), json!({"$ref": format!("#/$defs/kind_{k}")}));
    }
    let se = Args::record_keys("se", crate::expand::se::SeConfig::read);
    defs.insert("se_args".into(), object_of(&se));
    let items = json!({"type": "array", "items": {"$ref": "#/$defs/item"}});
    defs.insert("items".into(), items.clone());
    kinds.insert(
        "se".into(),
        json!({"anyOf": [{"$ref": "#/$defs/se_args"}, {"type": "null"}, {"type": "array"}]}),
    );
    kinds.insert(
        "residual".into(),
        json!({"type": "object", "required": ["branch"], "additionalProperties": false,
               "properties": {"shortcut": {"$ref": "#/$defs/items"}, "branch": {"$ref": "#/$defs/items"}}}),
    );
    kinds.insert(
        "parallel".into(),
        json!({"type": "array", "items": {"$ref": "#/$defs/items"}}),
    );
    // `stage`: a block template repeated; the template's own parameters come on top.
    kinds.insert(
        "stage".into(),
        json!({"type": "object", "required": ["block", "repeat"],
               "properties": {
                   "block": {"type": "string"},
                   "repeat": {"anyOf": [{"type": "integer", "minimum": 1}, expr()]},
                   "stride": {"anyOf": [{"type": "integer", "minimum": 1}, expr()]},
                   "se": {"anyOf": [{"type": ["boolean", "integer", "string"]}, {"$ref": "#/$defs/se_args"}]}
               }}),
    );
    for (k, v) in [
        ("name", json!({"type": "string"})),
        ("id", json!({"type": "string"})),
        (
            "from",
            json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
        ),
        ("when", json!({"type": ["string", "boolean"]})),
    ] {
        kinds.insert(k.into(), v);
    }
    defs.insert(
        "item".into(),
        json!({"anyOf": [
            {"type": "string", "description": "a layer kind or block template without arguments"},
            {"type": "object", "minProperties": 1, "properties": kinds,
             "description": "one layer kind (or block template) as the key, plus name, id, from, when"}
        ]}),
    );
    let train = Args::record_keys("train", crate::spec::recipe::TrainConfig::from_args);
    // A kind's defaults: its keys, none of them required (the layer gives the rest).
    let mut defaults = Map::new();
    for k in LAYER_KINDS {
        let mut d = defs[&format!("kind_{k}")]["anyOf"][0].clone();
        d.as_object_mut()
            .expect("an object schema")
            .remove("required");
        defaults.insert(k.to_string(), d);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://se-compile.dev/spec.schema.json",
        "title": "se-compile spec",
        "description": format!("A se-compile network spec (YAML), generated by se-compile {} from its parsers.", env!("CARGO_PKG_VERSION")),
        "type": "object",
        "required": ["layers"],
        "additionalProperties": false,
        "properties": {
            "model": {"type": "string"},
            "input": {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "integer", "minimum": 1}, expr()]}},
            "classes": {"anyOf": [{"type": "integer", "minimum": 1}, expr()]},
            "se": {"anyOf": [{"$ref": "#/$defs/se_args"}, {"type": ["boolean", "string", "integer", "null"]}]},
            "defaults": {"type": "object", "properties": defaults, "additionalProperties": false},
            "blocks": {"type": "object", "additionalProperties": {
                "type": "object", "additionalProperties": false,
                "properties": {
                    "params": {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "string"}}]},
                    "body": {"$ref": "#/$defs/items"},
                    "layers": {"$ref": "#/$defs/items"}
                }}},
            "layers": {"$ref": "#/$defs/items"},
            "train": object_of(&train)
        },
        "$defs": defs
    })
}
