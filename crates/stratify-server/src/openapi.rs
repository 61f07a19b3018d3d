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
        routes::users::create, routes::users::get_one, routes::users::replace, routes::users::merge, routes::users::erase, routes::users::assignments,
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
    modifiers(&Security, &Errors)
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

/// Every error answer's body and the table of its codes: the components
/// `Error` and `ErrorCode` (one row per code of [`ErrorCode::ALL`], with its
/// status and meaning), and every 4xx/5xx response of every operation
/// points at `Error`, so generated clients get a typed error.
struct Errors;

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Ok(mut doc) = serde_json::to_value(&*openapi) else {
            return;
        };
        add_errors(&mut doc);
        if let Ok(done) = serde_json::from_value(doc) {
            *openapi = done;
        }
    }
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
    let error_body =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let failure = status.starts_with('4') || status.starts_with('5');
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
                    response.insert("content".into(), error_body.clone());
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
        .url("/openapi.json", ApiDoc::openapi())
        .config(config)
        .into()
}
