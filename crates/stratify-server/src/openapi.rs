//! The OpenAPI document, generated from the handlers' annotations, and the
//! interactive docs at `/docs` (Swagger UI, its assets compiled into the binary
//! through the `vendored` feature: no network needed).

use crate::routes;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Stratify", description = "User segmentation and experimentation. Every /v1 route needs an API key."),
    paths(
        routes::ops::health, routes::ops::ingest_status,
        routes::keys::create, routes::keys::list, routes::keys::revoke,
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
