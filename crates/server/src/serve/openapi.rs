//! The OpenAPI 3.1 document of the API, generated from the route table ([`ROUTES`]) that also
//! builds the router, so every documented operation exists and every route is documented, and
//! from the types the handlers and `fedsyn client` serialise (`protocol::messages`,
//! `secure_aggregation`'s messages): each body's schema is derived from its type (schemars),
//! so the document and the wire cannot disagree.

use protocol::messages::{
    EnrolRequest, Enrolment, Health, NextTask, PrivacyReport, Problem, Receipt, RunStatus,
    ScoresRequest, SecAggReceipt, Tokens, TokensRequest,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use secure_aggregation::{ClientMessage, SessionView};
use serde_json::{json, Map, Value};

use crate::serve::http::{Access, Endpoint, ROUTES};

/// The document.
pub fn document() -> Value {
    let mut schemas = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        let mut responses = Map::new();
        responses.insert(
            route.success.to_string(),
            success(route.endpoint, &mut schemas),
        );
        if route.endpoint == Endpoint::Scores {
            let content = json_content::<Receipt>(&mut schemas);
            responses.insert(
                "200".into(),
                json!({"description": "An identical retry: the first receipt", "content": content}),
            );
        }
        if route.endpoint == Endpoint::SecAggMessage {
            let content = json_content::<SecAggReceipt>(&mut schemas);
            responses.insert(
                "200".into(),
                json!({"description": "An identical retry", "content": content}),
            );
        }
        for status in route.errors {
            responses.insert(
                status.to_string(),
                json!({"$ref": "#/components/responses/Problem"}),
            );
        }
        let mut operation = json!({
            "operationId": format!("{:?}", route.endpoint),
            "summary": route.summary,
            "responses": responses,
            "security": security(route.access),
        });
        let parameters: Vec<Value> = ["round", "session"]
            .iter()
            .filter(|name| route.path.contains(&format!("{{{name}}}")))
            .map(|name| {
                json!({
                    "name": name, "in": "path", "required": true,
                    "schema": {"type": "integer", "minimum": 0}
                })
            })
            .collect();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = request_body(route.endpoint, &mut schemas) {
            operation["requestBody"] = body;
        }
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    let problem = schemas.subschema_for::<Problem>();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fedsyn serve",
            "version": "1",
            "description": "POPri rounds with remote clients: enrol, fetch the round's candidate \
                            embeddings, submit a clipped score vector. Errors are \
                            application/problem+json."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "The admin token"},
                "client": {"type": "http", "scheme": "bearer", "description": "A client token from POST /v1/enrol"}
            },
            "responses": {
                "Problem": {
                    "description": "An error (RFC 9457)",
                    "content": {"application/problem+json": {"schema": problem}}
                }
            },
            "schemas": schemas.take_definitions(true),
        }
    })
}

fn security(access: Access) -> Value {
    match access {
        Access::Public | Access::Enrolment => json!([]),
        Access::Client => json!([{"client": []}]),
        Access::Admin => json!([{"admin": []}]),
        Access::AdminOrClient => json!([{"admin": []}, {"client": []}]),
    }
}

/// A JSON body of type `T`: a reference to its schema, which `schemas` keeps.
fn json_content<T: JsonSchema>(schemas: &mut SchemaGenerator) -> Value {
    json!({"application/json": {"schema": schemas.subschema_for::<T>()}})
}

fn success(endpoint: Endpoint, schemas: &mut SchemaGenerator) -> Value {
    let (description, content) = match endpoint {
        Endpoint::Health => ("The run's state", json_content::<Health>(schemas)),
        Endpoint::OpenApi => ("This document", json!({"application/json": {"schema": {"type": "object"}}})),
        Endpoint::Metrics => ("Prometheus text", json!({"text/plain": {"schema": {"type": "string"}}})),
        Endpoint::Enrol => ("The client's id and bearer token (shown once)", json_content::<Enrolment>(schemas)),
        Endpoint::NextTask => ("A task, wait, or finished", json_content::<NextTask>(schemas)),
        Endpoint::Candidates => (
            "FSCAND01 wire format: header, SHA-256 of the values, f16/f32 values (deflated when flagged)",
            json!({"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}),
        ),
        Endpoint::Scores => ("Stored", json_content::<Receipt>(schemas)),
        Endpoint::SecAggView => ("The session as this client sees it", json_content::<SessionView>(schemas)),
        Endpoint::SecAggMessage => ("Stored", json_content::<SecAggReceipt>(schemas)),
        Endpoint::Privacy => ("Budget report and per-round ledger", json_content::<PrivacyReport>(schemas)),
        Endpoint::EnrolmentTokens => ("The tokens (shown once)", json_content::<Tokens>(schemas)),
        Endpoint::RunStatus | Endpoint::Pause | Endpoint::Resume | Endpoint::Stop => {
            ("The run's status", json_content::<RunStatus>(schemas))
        }
    };
    json!({"description": description, "content": content})
}

fn request_body(endpoint: Endpoint, schemas: &mut SchemaGenerator) -> Option<Value> {
    let content = match endpoint {
        Endpoint::Enrol => json_content::<EnrolRequest>(schemas),
        Endpoint::Scores => json_content::<ScoresRequest>(schemas),
        Endpoint::SecAggMessage => json_content::<ClientMessage>(schemas),
        Endpoint::EnrolmentTokens => json_content::<TokensRequest>(schemas),
        _ => return None,
    };
    Some(json!({"required": true, "content": content}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published base64 patterns accept every encoding the wire format writes and refuse
    /// what its decoder refuses (a request the schema admits must not be refused as malformed;
    /// schemathesis found non-canonical padding bits that the schema allowed).
    #[test]
    fn base64_patterns_match_the_wire_format() {
        let schemas = document()["components"]["schemas"].clone();
        let pattern =
            |name: &str| regex::Regex::new(schemas[name]["pattern"].as_str().unwrap()).unwrap();
        let (bytes32, base64, words64) =
            (pattern("Bytes32"), pattern("Base64"), pattern("Words64"));
        let wire = |packet: &secure_aggregation::Packet| {
            serde_json::to_value(packet).unwrap()["ciphertext"]
                .as_str()
                .unwrap()
                .to_string()
        };
        for length in 0..40u8 {
            let bytes: Vec<u8> = (0..length).map(|i| i.wrapping_mul(97) ^ 0xA5).collect();
            let packet = secure_aggregation::Packet {
                from: 0,
                to: 1,
                ciphertext: bytes.clone(),
            };
            let encoded = wire(&packet);
            assert!(base64.is_match(&encoded), "{encoded}");
            assert_eq!(bytes32.is_match(&encoded), length == 32, "{encoded}");
            assert_eq!(words64.is_match(&encoded), length % 8 == 0, "{encoded}");
            let decoded: secure_aggregation::Packet = serde_json::from_value(
                serde_json::json!({"from": 0, "to": 1, "ciphertext": encoded}),
            )
            .unwrap();
            assert_eq!(decoded.ciphertext, bytes);
        }
        // Participant indices are u32 on the wire.
        assert_eq!(schemas["Index"]["maximum"], u64::from(u32::MAX));
        assert_eq!(schemas["Index"]["minimum"], 0);
        let packet = |from: serde_json::Value| {
            serde_json::from_value::<secure_aggregation::Packet>(
                serde_json::json!({"from": from, "to": 1, "ciphertext": ""}),
            )
        };
        for refused in [json!(-1), json!(u64::from(u32::MAX) + 1), json!(2.5)] {
            assert!(packet(refused.clone()).is_err(), "{refused}");
        }
        // JSON Schema's `integer` admits a float without a fraction, and so does the server.
        assert_eq!(packet(json!(3_628_799.0)).unwrap().from, 3_628_799);
        // The masked input as the client sends it: any number of words.
        for words in 0..7u64 {
            let masked =
                secure_aggregation::ClientMessage::Masked(secure_aggregation::MaskedInput {
                    masked: (0..words)
                        .map(|w| w.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                        .collect(),
                });
            let value = serde_json::to_value(&masked).unwrap();
            let encoded = value["masked"].as_str().unwrap();
            assert!(words64.is_match(encoded), "{value}");
        }
        // Non-zero unused bits: valid-looking base64 that the decoder refuses.
        for bad in [
            "QR==",
            "QUJ=",
            "VwXEQpi4VA/iW3aqoAIONIr5TBcPHwsrT2Q5GT5X+cn=",
        ] {
            let refused = serde_json::from_value::<secure_aggregation::Packet>(
                serde_json::json!({"from": 0, "to": 1, "ciphertext": bad}),
            );
            assert!(refused.is_err(), "{bad}");
            assert!(!base64.is_match(bad) && !bytes32.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn every_route_is_documented_once_with_its_method() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().unwrap();
        let documented: usize = paths
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, ROUTES.len());
        for route in ROUTES {
            let method = route.method.as_str().to_ascii_lowercase();
            let operation = &paths[route.path][&method];
            assert!(operation["responses"][route.success.to_string()].is_object());
        }
    }

    /// Every `$ref` of the document names a schema or response it defines, and the derived
    /// schemas keep the wire's rules (bounds, closed request bodies, the tagged messages).
    #[test]
    fn derived_schemas_resolve_and_keep_the_wire_rules() {
        fn refs(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        found.push(target.clone());
                    }
                    map.values().for_each(|v| refs(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let document = document();
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for target in &found {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} is not defined"
            );
        }
        let schemas = &document["components"]["schemas"];
        let tokens = &schemas["TokensRequest"];
        assert_eq!(tokens["additionalProperties"], false);
        assert_eq!(tokens["properties"]["count"]["minimum"], 1);
        assert_eq!(
            tokens["properties"]["count"]["maximum"],
            protocol::messages::MAX_ENROLMENT_TOKENS
        );
        assert_eq!(
            schemas["ScoresRequest"]["properties"]["scores"]["minItems"],
            1
        );
        assert_eq!(
            variant_tags(&schemas["ClientMessage"], "step"),
            ["keys", "shares", "masked", "unmask"]
        );
        assert_eq!(
            variant_tags(&schemas["NextTask"], "state"),
            ["task", "wait", "finished"]
        );
    }

    /// The constant of the property `tag` in each variant of the tagged union `schema`.
    fn variant_tags<'a>(schema: &'a Value, tag: &str) -> Vec<&'a Value> {
        schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variant| &variant["properties"][tag]["const"])
            .collect()
    }
}
