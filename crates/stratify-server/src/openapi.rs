//! The OpenAPI document, generated from the handlers' annotations, and the
//! interactive docs at `/docs` (Swagger UI, its assets compiled into the binary
//! through the `vendored` feature: no network needed).

use crate::routes;
use serde_json::{json, Value};
use stratify_core::ErrorCode;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Stratify", description = "User segmentation and experimentation. Every /v1 route needs an API key."),
    paths(
        routes::ops::health, routes::ops::ingest_status,
        routes::keys::create, routes::keys::list, routes::keys::revoke, routes::audit::list, routes::growthbook::features, routes::growthbook::stream, routes::growthbook::sdk_attributes,
        routes::users::create, routes::users::get_one, routes::users::replace, routes::users::merge, routes::users::erase, routes::users::assignments, routes::users::identify,
        routes::events::ingest, routes::events::order, routes::events::list,
        routes::schemas::create_event_type, routes::schemas::list_event_types, routes::schemas::get_event_type,
        routes::schemas::replace_event_type, routes::schemas::delete_event_type,
        routes::schemas::get_attribute_schema, routes::schemas::put_attribute_schema,
        routes::segments::create, routes::segments::list, routes::segments::examples, routes::segments::query,
        routes::segments::get_one, routes::segments::replace, routes::segments::patch, routes::segments::remove,
        routes::segments::versions, routes::segments::members, routes::segments::add_members,
        routes::segments::remove_members, routes::segments::upload_members, routes::segments::sql,
        routes::segments::explain,
        routes::live::segment_changes, routes::live::stream, routes::live::websocket, routes::live::memberships,
        routes::live::size_history, routes::live::create_webhook, routes::live::list_webhooks,
        routes::live::delete_webhook,
        routes::experiments::create, routes::experiments::list, routes::experiments::get_one,
        routes::experiments::patch, routes::experiments::transition,
        routes::experiments::attach_segment, routes::experiments::detach_segment,
        routes::experiments::assign_experiment, routes::experiments::unassign_experiment,
        routes::serving::user_experiments, routes::serving::check_eligibility,
        routes::serving::banner_mixture, routes::serving::clear_cache,
        routes::ofrep::evaluate_flag, routes::ofrep::evaluate_flags,
        routes::results::create_metric, routes::results::list_metrics, routes::results::get_metric,
        routes::results::delete_metric, routes::results::results, routes::results::results_seed,
        routes::results::compare, routes::results::srm, routes::results::sample_size,
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document served at `/openapi.json`: the annotations, then every
/// error answer's body and the table of its codes (the components `Error`
/// and `ErrorCode`, one row per code of [`ErrorCode::ALL`] with its status
/// and meaning), the security each operation takes and the error statuses
/// it may answer, so generated clients get a typed error. Edited as JSON
/// (utoipa's own types do not read every document back).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    add_errors(&mut doc);
    doc
}

fn add_errors(doc: &mut Value) {
    let mut table = String::from(
        "Every error is answered as `Error`; its `code` is one of these (stable: a code never \
         changes its meaning or its status). `segment_not_found`, `experiment_not_found` and \
         `malformed_json` are answered 422 when they point inside a request body.\n\n\
         | code | status | meaning |\n|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            code.as_str(),
            code.status(),
            code.doc()
        ));
    }
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let schemas = &mut doc["components"]["schemas"];
    if !schemas.is_object() {
        *schemas = json!({});
    }
    schemas["ErrorCode"] = json!({"type": "string", "enum": codes, "description": table});
    schemas["Error"] = json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"$ref": "#/components/schemas/ErrorCode"},
                "message": {"type": "string", "description": "For people; may change."},
                "field": {"type": "string", "description": "A JSON pointer to the field at fault, when there is one."}
            }
        }}
    });
    schemas["OfrepError"] = json!({
        "type": "object",
        "required": ["errorCode"],
        "description": "OFREP's error body (openfeature.dev/specification/appendix-c).",
        "properties": {
            "key": {"type": "string"},
            "errorCode": {"type": "string"},
            "errorDetails": {"type": "string"}
        }
    });
    let error_body =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let ofrep_body =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/OfrepError"}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        // OFREP answers its own errors in its own shape (authorisation
        // failures and server errors keep ours).
        let ofrep = path.starts_with("/ofrep/");
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            // An operation with a key takes it either way (bearer or
            // X-API-Key) and may be refused (401, 403) or limited (429).
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            if secured {
                operation["security"] = json!([{"api_key": []}, {"x_api_key": []}]);
            }
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if secured {
                for status in ["401", "403", "429"] {
                    responses.entry(status).or_insert_with(|| json!({}));
                }
            }
            // Any route may refuse its input (400, 413, 415, 422), time out
            // (408) or fail (500, 503): every such answer is an `Error`.
            responses.entry("4XX").or_insert_with(|| json!({}));
            responses.entry("5XX").or_insert_with(|| json!({}));
            for (status, response) in responses.iter_mut() {
                let failure = status.starts_with('4') || status.starts_with('5');
                if !failure {
                    continue;
                }
                let Some(response) = response.as_object_mut() else {
                    continue;
                };
                if failure && !response.contains_key("content") {
                    if response.get("description").is_none_or(|d| d == "") {
                        response.insert(
                            "description".into(),
                            json!("See the `Error` schema's code table."),
                        );
                    }
                    let own = ofrep && !matches!(status.as_str(), "401" | "403" | "429" | "5XX");
                    response.insert(
                        "content".into(),
                        if own {
                            ofrep_body.clone()
                        } else {
                            error_body.clone()
                        },
                    );
                }
            }
        }
    }
}

pub fn docs() -> axum::Router<crate::AppState> {
    // validator "none": Swagger UI's default badge calls an online validator.
    let config = Config::from("/openapi.json")
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(true);
    SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", document())
        .config(config)
        .into()
}
