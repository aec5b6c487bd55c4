//! The OpenAPI 3.1 document of the API, generated from the route table ([`ROUTES`]) that also
//! builds the router: every documented operation exists and every route is documented.

use serde_json::{json, Map, Value};

use crate::serve::http::{Access, Endpoint, ROUTES};

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        let mut responses = Map::new();
        responses.insert(route.success.to_string(), success(route.endpoint));
        if route.endpoint == Endpoint::Scores {
            responses.insert("200".into(), json!({"description": "An identical retry: the first receipt", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}}));
        }
        if route.endpoint == Endpoint::SecAggMessage {
            responses.insert("200".into(), json!({"description": "An identical retry", "content": json_content("SecAggReceipt")}));
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
        if let Some(body) = request_body(route.endpoint) {
            operation["requestBody"] = body;
        }
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
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
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }
            },
            "schemas": schemas(),
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

fn json_content(schema: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
}

fn success(endpoint: Endpoint) -> Value {
    let (description, content) = match endpoint {
        Endpoint::Health => ("The run's state", json_content("Health")),
        Endpoint::OpenApi => ("This document", json!({"application/json": {"schema": {"type": "object"}}})),
        Endpoint::Metrics => ("Prometheus text", json!({"text/plain": {"schema": {"type": "string"}}})),
        Endpoint::Enrol => ("The client's id and bearer token (shown once)", json_content("Enrolment")),
        Endpoint::NextTask => ("A task, wait, or finished", json_content("NextTask")),
        Endpoint::Candidates => (
            "FSCAND01 wire format: header, SHA-256 of the values, f16/f32 values (deflated when flagged)",
            json!({"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}),
        ),
        Endpoint::Scores => ("Stored", json_content("Receipt")),
        Endpoint::SecAggView => ("The session as this client sees it", json_content("SessionView")),
        Endpoint::SecAggMessage => ("Stored", json_content("SecAggReceipt")),
        Endpoint::Privacy => ("Budget report and per-round ledger", json_content("Privacy")),
        Endpoint::EnrolmentTokens => ("The tokens (shown once)", json_content("Tokens")),
        Endpoint::RunStatus | Endpoint::Pause | Endpoint::Resume | Endpoint::Stop => {
            ("The run's status", json_content("RunStatus"))
        }
    };
    json!({"description": description, "content": content})
}

fn request_body(endpoint: Endpoint) -> Option<Value> {
    let schema = match endpoint {
        Endpoint::Enrol => "EnrolRequest",
        Endpoint::Scores => "ScoresRequest",
        Endpoint::SecAggMessage => "SecAggMessage",
        Endpoint::EnrolmentTokens => "TokensRequest",
        _ => return None,
    };
    Some(json!({"required": true, "content": json_content(schema)}))
}

fn schemas() -> Value {
    json!({
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"}
            }
        },
        "Health": {
            "type": "object",
            "required": ["status", "state", "round"],
            "properties": {
                "status": {"const": "ok"},
                "state": {"enum": ["waiting_for_clients", "running", "paused", "finished"]},
                "round": {"type": ["integer", "null"]}
            }
        },
        "EnrolRequest": {
            "type": "object", "required": ["enrolment_token"],
            "properties": {"enrolment_token": {"type": "string"}}, "additionalProperties": false
        },
        "Enrolment": {
            "type": "object", "required": ["client_id", "token"],
            "properties": {"client_id": {"type": "string"}, "token": {"type": "string"}}
        },
        "NextTask": {
            "type": "object", "required": ["state"],
            "properties": {
                "state": {"enum": ["task", "wait", "finished"]},
                "round": {"type": "integer"}, "attempt": {"type": "integer"},
                "clip": {"type": "number"}, "candidates": {"type": "integer"},
                "dim": {"type": "integer"}, "dtype": {"enum": ["f16", "f32"]},
                "deadline_unix_ms": {"type": "integer"}, "candidates_url": {"type": "string"},
                "aggregation": {"enum": ["plain", "secagg+"]},
                "retry_after_ms": {"type": "integer"}
            }
        },
        "ScoresRequest": {
            "type": "object", "required": ["scores"], "additionalProperties": false,
            "properties": {"scores": {
                "type": "array", "items": {"type": "number"}, "minItems": 1,
                "description": "One score per candidate of the round, in candidate order: as many as the task's `candidates` (a vector of another length is answered 422)"
            }}
        },
        "SessionView": {
            "type": "object",
            "required": ["round", "session", "step", "dim", "participant", "received"],
            "properties": {
                "round": {"type": "integer"}, "session": {"type": "integer"},
                "step": {"$ref": "#/components/schemas/SecAggStep"}, "dim": {"type": "integer"},
                "participant": {"type": "boolean"}, "received": {"type": "boolean"},
                "roster": {
                    "type": "object", "required": ["index", "threshold", "neighbours"],
                    "properties": {
                        "index": {"type": "integer"}, "threshold": {"type": "integer"},
                        "neighbours": {"type": "array", "items": {
                            "type": "object", "required": ["index", "keys"],
                            "properties": {"index": {"type": "integer"}, "keys": {"$ref": "#/components/schemas/PublicKeys"}}
                        }}
                    }
                },
                "inbox": {"type": "object", "required": ["packets"], "properties": {"packets": {"type": "array", "items": {"$ref": "#/components/schemas/Packet"}}}},
                "survivors": {"type": "object", "required": ["survivors"], "properties": {"survivors": {"type": "array", "items": {"type": "integer"}}}}
            }
        },
        "SecAggStep": {"enum": ["keys", "shares", "masked", "unmask", "done"]},
        "PublicKeys": {
            "type": "object", "required": ["cipher", "mask", "self_mask_commitment"], "additionalProperties": false,
            "description": "X25519 public keys and the SHA-256 of the self-mask seed (standard base64, 32 bytes each)",
            "properties": {"cipher": {"$ref": "#/components/schemas/Bytes32"}, "mask": {"$ref": "#/components/schemas/Bytes32"}, "self_mask_commitment": {"$ref": "#/components/schemas/Bytes32"}}
        },
        "Bytes32": {
            "type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
            "description": "32 bytes in canonical standard base64 (44 characters; unused bits zero)"
        },
        "Index": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "A participant's index in the session (32-bit unsigned)"},
        "Words64": {
            "type": "string", "contentEncoding": "base64",
            "pattern": "^(?:[A-Za-z0-9+/]{32})*(?:[A-Za-z0-9+/]{10}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/]{21}[AQgw]==)?$",
            "description": "Unsigned 64-bit words, little-endian, in canonical standard base64 (a whole number of 8-byte words)"
        },
        "Base64": {
            "type": "string", "contentEncoding": "base64",
            "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
            "description": "Bytes in canonical standard base64 (padded; unused bits zero)"
        },
        "Packet": {
            "type": "object", "required": ["from", "to", "ciphertext"], "additionalProperties": false,
            "properties": {"from": {"$ref": "#/components/schemas/Index"}, "to": {"$ref": "#/components/schemas/Index"}, "ciphertext": {"$ref": "#/components/schemas/Base64"}}
        },
        "SecAggMessage": {
            "description": "The client's message for the current step, tagged by `step`",
            "oneOf": [
                {"type": "object", "required": ["step", "cipher", "mask", "self_mask_commitment"], "additionalProperties": false,
                 "properties": {"step": {"const": "keys"}, "cipher": {"$ref": "#/components/schemas/Bytes32"}, "mask": {"$ref": "#/components/schemas/Bytes32"}, "self_mask_commitment": {"$ref": "#/components/schemas/Bytes32"}}},
                {"type": "object", "required": ["step", "packets"], "additionalProperties": false,
                 "properties": {"step": {"const": "shares"}, "packets": {"type": "array", "items": {"$ref": "#/components/schemas/Packet"}}}},
                {"type": "object", "required": ["step", "masked"], "additionalProperties": false,
                 "description": "masked: the base64 of the masked vector's little-endian 64-bit words",
                 "properties": {"step": {"const": "masked"}, "masked": {"$ref": "#/components/schemas/Words64"}}},
                {"type": "object", "required": ["step", "shares"], "additionalProperties": false,
                 "properties": {"step": {"const": "unmask"}, "shares": {"type": "array", "items": {
                     "type": "object", "required": ["owner", "secret", "share"], "additionalProperties": false,
                     "properties": {"owner": {"$ref": "#/components/schemas/Index"}, "secret": {"enum": ["self_mask", "mask_key"]}, "share": {"$ref": "#/components/schemas/Base64"}}
                 }}}}
            ]
        },
        "SecAggReceipt": {
            "type": "object", "required": ["round", "session", "step"],
            "properties": {"round": {"type": "integer"}, "session": {"type": "integer"}, "step": {"$ref": "#/components/schemas/SecAggStep"}}
        },
        "Receipt": {
            "type": "object", "required": ["round", "receipt"],
            "properties": {"round": {"type": "integer"}, "receipt": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
        },
        "Privacy": {
            "type": "object", "required": ["target_epsilon", "delta", "accountants", "rounds"],
            "properties": {
                "target_epsilon": {"type": "number"}, "delta": {"type": "number"},
                "accountants": {"type": "object", "properties": {"rdp": {"type": "number"}, "pld": {"type": "number"}}},
                "rounds": {"type": "array", "items": {"type": "object"}}
            }
        },
        "TokensRequest": {
            "type": "object", "required": ["count"], "additionalProperties": false,
            "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 10000}}
        },
        "Tokens": {
            "type": "object", "required": ["tokens"],
            "properties": {"tokens": {"type": "array", "items": {"type": "string"}}}
        },
        "RunStatus": {"type": "object", "required": ["state"], "properties": {"state": {"type": "string"}}}
    })
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
}
