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
            "properties": {"scores": {"type": "array", "items": {"type": "number"}}}
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
            "properties": {"cipher": {"type": "string", "contentEncoding": "base64"}, "mask": {"type": "string", "contentEncoding": "base64"}, "self_mask_commitment": {"type": "string", "contentEncoding": "base64"}}
        },
        "Packet": {
            "type": "object", "required": ["from", "to", "ciphertext"], "additionalProperties": false,
            "properties": {"from": {"type": "integer"}, "to": {"type": "integer"}, "ciphertext": {"type": "string", "contentEncoding": "base64"}}
        },
        "SecAggMessage": {
            "description": "The client's message for the current step, tagged by `step`",
            "oneOf": [
                {"type": "object", "required": ["step", "cipher", "mask", "self_mask_commitment"], "additionalProperties": false,
                 "properties": {"step": {"const": "keys"}, "cipher": {"type": "string"}, "mask": {"type": "string"}, "self_mask_commitment": {"type": "string"}}},
                {"type": "object", "required": ["step", "packets"], "additionalProperties": false,
                 "properties": {"step": {"const": "shares"}, "packets": {"type": "array", "items": {"$ref": "#/components/schemas/Packet"}}}},
                {"type": "object", "required": ["step", "masked"], "additionalProperties": false,
                 "description": "masked: the base64 of the masked vector's little-endian 64-bit words",
                 "properties": {"step": {"const": "masked"}, "masked": {"type": "string", "contentEncoding": "base64"}}},
                {"type": "object", "required": ["step", "shares"], "additionalProperties": false,
                 "properties": {"step": {"const": "unmask"}, "shares": {"type": "array", "items": {
                     "type": "object", "required": ["owner", "secret", "share"], "additionalProperties": false,
                     "properties": {"owner": {"type": "integer"}, "secret": {"enum": ["self_mask", "mask_key"]}, "share": {"type": "string", "contentEncoding": "base64"}}
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
