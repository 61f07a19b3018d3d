//! Every route, declared once with the capability it needs.

pub(crate) mod audit;
pub(crate) mod events;
pub(crate) mod experiments;
pub(crate) mod growthbook;
pub(crate) mod keys;
pub(crate) mod live;
pub(crate) mod ofrep;
pub(crate) mod ops;
pub(crate) mod paging;
pub(crate) mod results;
pub(crate) mod schemas;
pub(crate) mod segments;
pub(crate) mod serving;
pub(crate) mod users;

use crate::auth::authorize;
use crate::{metrics, openapi, ApiError, AppState};
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use stratify_core::access::Capability::{self, *};
use stratify_core::time::{format_rfc3339, Millis};

/// One row of the route table.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// `None`: public (health, metrics, docs).
    pub capability: Option<Capability>,
    /// Ingest routes take the larger body limit.
    pub ingest: bool,
    handler: MethodRouter<AppState>,
}

fn r(
    method: Method,
    path: &'static str,
    capability: Capability,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        capability: Some(capability),
        ingest: false,
        handler,
    }
}

fn ingest(mut route: Route) -> Route {
    route.ingest = true;
    route
}

/// The route table: the single source of truth for paths and access.
pub fn table() -> Vec<Route> {
    vec![
        Route {
            method: Method::GET,
            path: "/health",
            capability: None,
            ingest: false,
            handler: get(ops::health),
        },
        Route {
            method: Method::GET,
            path: "/metrics",
            capability: None,
            ingest: false,
            handler: get(metrics::render),
        },
        // GrowthBook SDKs: the client key in the path is an sdk key, checked
        // by the handler.
        Route {
            method: Method::GET,
            path: "/api/features/{client_key}",
            capability: None,
            ingest: false,
            handler: get(growthbook::features),
        },
        Route {
            method: Method::GET,
            path: "/sub/{client_key}",
            capability: None,
            ingest: false,
            handler: get(growthbook::stream),
        },
        r(
            Method::GET,
            "/v1/users/{id}/sdk-attributes",
            Evaluate,
            get(growthbook::sdk_attributes),
        ),
        r(Method::POST, "/v1/api-keys", ManageKeys, post(keys::create)),
        r(Method::GET, "/v1/api-keys", ManageKeys, get(keys::list)),
        r(Method::GET, "/v1/audit", ReadAudit, get(audit::list)),
        r(
            Method::DELETE,
            "/v1/api-keys/{id}",
            ManageKeys,
            delete(keys::revoke),
        ),
        r(Method::POST, "/v1/users", WriteUsers, post(users::create)),
        r(
            Method::POST,
            "/v1/identify",
            WriteUsers,
            post(users::identify),
        ),
        r(Method::GET, "/v1/users/{id}", Read, get(users::get_one)),
        r(
            Method::PUT,
            "/v1/users/{id}",
            WriteUsers,
            put(users::replace),
        ),
        r(
            Method::PATCH,
            "/v1/users/{id}",
            WriteUsers,
            patch(users::merge),
        ),
        r(
            Method::DELETE,
            "/v1/users/{id}",
            WriteUsers,
            delete(users::erase),
        ),
        ingest(r(
            Method::POST,
            "/v1/events",
            WriteEvents,
            post(events::ingest),
        )),
        r(Method::GET, "/v1/events", Read, get(events::list)),
        ingest(r(
            Method::POST,
            "/v1/orders",
            WriteEvents,
            post(events::order),
        )),
        r(
            Method::POST,
            "/v1/event-types",
            ManageSchemas,
            post(schemas::create_event_type),
        ),
        r(
            Method::GET,
            "/v1/event-types",
            ReadSchemas,
            get(schemas::list_event_types),
        ),
        r(
            Method::GET,
            "/v1/event-types/{name}",
            ReadSchemas,
            get(schemas::get_event_type),
        ),
        r(
            Method::PUT,
            "/v1/event-types/{name}",
            ManageSchemas,
            put(schemas::replace_event_type),
        ),
        r(
            Method::DELETE,
            "/v1/event-types/{name}",
            ManageSchemas,
            delete(schemas::delete_event_type),
        ),
        r(
            Method::GET,
            "/v1/attributes/schema",
            ReadSchemas,
            get(schemas::get_attribute_schema),
        ),
        r(
            Method::PUT,
            "/v1/attributes/schema",
            ManageSchemas,
            put(schemas::put_attribute_schema),
        ),
        r(
            Method::POST,
            "/v1/segments",
            EditConfig,
            post(segments::create),
        ),
        r(Method::GET, "/v1/segments", Read, get(segments::list)),
        r(
            Method::GET,
            "/v1/segments/examples",
            Read,
            get(segments::examples),
        ),
        r(
            Method::POST,
            "/v1/segments/query",
            Read,
            post(segments::query),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}",
            Read,
            get(segments::get_one),
        ),
        r(
            Method::PUT,
            "/v1/segments/{id}",
            EditConfig,
            put(segments::replace),
        ),
        r(
            Method::PATCH,
            "/v1/segments/{id}",
            EditConfig,
            patch(segments::patch),
        ),
        r(
            Method::DELETE,
            "/v1/segments/{id}",
            EditConfig,
            delete(segments::remove),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}/versions",
            Read,
            get(segments::versions),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}/members",
            Read,
            get(segments::members),
        ),
        r(
            Method::POST,
            "/v1/segments/{id}/members",
            EditConfig,
            post(segments::add_members),
        ),
        r(
            Method::DELETE,
            "/v1/segments/{id}/members",
            EditConfig,
            delete(segments::remove_members),
        ),
        r(
            Method::PUT,
            "/v1/segments/{id}/members",
            EditConfig,
            put(segments::upload_members),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}/sql",
            Read,
            get(segments::sql),
        ),
        r(
            Method::GET,
            "/v1/users/{id}/segments/{segment_id}/explain",
            Read,
            get(segments::explain),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}/changes",
            Read,
            get(live::segment_changes),
        ),
        r(
            Method::GET,
            "/v1/segments/{id}/size-history",
            Read,
            get(live::size_history),
        ),
        r(Method::GET, "/v1/changes/stream", Read, get(live::stream)),
        r(Method::GET, "/v1/changes/ws", Read, get(live::websocket)),
        r(
            Method::GET,
            "/v1/users/{id}/assignments",
            Read,
            get(users::assignments),
        ),
        r(
            Method::GET,
            "/v1/users/{id}/memberships",
            Read,
            get(live::memberships),
        ),
        r(
            Method::POST,
            "/v1/webhooks",
            EditConfig,
            post(live::create_webhook),
        ),
        r(
            Method::GET,
            "/v1/webhooks",
            EditConfig,
            get(live::list_webhooks),
        ),
        r(
            Method::DELETE,
            "/v1/webhooks/{id}",
            EditConfig,
            delete(live::delete_webhook),
        ),
        r(
            Method::POST,
            "/v1/experiments",
            EditConfig,
            post(experiments::create),
        ),
        r(Method::GET, "/v1/experiments", Read, get(experiments::list)),
        r(
            Method::GET,
            "/v1/experiments/{id}",
            Read,
            get(experiments::get_one),
        ),
        r(
            Method::PATCH,
            "/v1/experiments/{id}",
            EditConfig,
            patch(experiments::patch),
        ),
        r(
            Method::POST,
            "/v1/experiments/{id}/{action}",
            EditConfig,
            post(experiments::transition),
        ),
        r(
            Method::POST,
            "/v1/experiments/{id}/segments",
            EditConfig,
            post(experiments::attach_segment),
        ),
        r(
            Method::DELETE,
            "/v1/experiments/{id}/segments/{segment_id}",
            EditConfig,
            delete(experiments::detach_segment),
        ),
        r(
            Method::POST,
            "/v1/segments/assign-experiment",
            EditConfig,
            post(experiments::assign_experiment),
        ),
        r(
            Method::DELETE,
            "/v1/segments/unassign-experiment",
            EditConfig,
            delete(experiments::unassign_experiment),
        ),
        r(
            Method::POST,
            "/v1/metrics",
            EditConfig,
            post(results::create_metric),
        ),
        r(Method::GET, "/v1/metrics", Read, get(results::list_metrics)),
        r(
            Method::GET,
            "/v1/metrics/{key}",
            Read,
            get(results::get_metric),
        ),
        r(
            Method::DELETE,
            "/v1/metrics/{key}",
            EditConfig,
            delete(results::delete_metric),
        ),
        r(
            Method::GET,
            "/v1/experiments/{id}/results",
            Read,
            get(results::results),
        ),
        r(
            Method::POST,
            "/v1/experiments/{id}/results",
            Read,
            post(results::results_seed),
        ),
        r(
            Method::POST,
            "/v1/stats/compare",
            Read,
            post(results::compare),
        ),
        r(Method::POST, "/v1/stats/srm", Read, post(results::srm)),
        r(
            Method::POST,
            "/v1/stats/sample-size",
            Read,
            post(results::sample_size),
        ),
        r(
            Method::POST,
            "/v1/experiments/check-eligibility",
            Evaluate,
            post(serving::check_eligibility),
        ),
        r(
            Method::GET,
            "/v1/users/{id}/experiments",
            Evaluate,
            get(serving::user_experiments),
        ),
        r(
            Method::GET,
            "/v1/users/{id}/banner_mixture",
            Evaluate,
            get(serving::banner_mixture),
        ),
        r(
            Method::DELETE,
            "/v1/users/{id}/cache",
            EditConfig,
            delete(serving::clear_cache),
        ),
        r(
            Method::POST,
            "/ofrep/v1/evaluate/flags/{key}",
            Evaluate,
            post(ofrep::evaluate_flag),
        ),
        r(
            Method::POST,
            "/ofrep/v1/evaluate/flags",
            Evaluate,
            post(ofrep::evaluate_flags),
        ),
        r(
            Method::GET,
            "/v1/ingest/status",
            ReadIngest,
            get(ops::ingest_status),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in table() {
        let limit = if route.ingest {
            state.config.max_ingest_body_bytes
        } else {
            state.config.max_body_bytes
        };
        let mut handler = route.handler.layer(DefaultBodyLimit::max(limit));
        // Merges are audited too: one cannot be undone.
        if matches!(
            route.capability,
            Some(EditConfig | ManageKeys | ManageSchemas)
        ) || route.path == "/v1/identify"
        {
            // Inside authorization: the key is known when the change is recorded.
            let (st, template) = (state.clone(), route.path);
            handler = handler.route_layer(axum::middleware::from_fn(move |req, next| {
                audit::record(st.clone(), template, req, next)
            }));
        }
        if let Some(capability) = route.capability {
            let st = state.clone();
            handler = handler.route_layer(axum::middleware::from_fn(move |req, next| {
                authorize(st.clone(), capability, req, next)
            }));
        }
        router = router.route(route.path, handler);
    }
    router
        .merge(openapi::docs())
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.request_timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// Gives every error response the JSON error shape, including the ones axum
/// produces itself (405, path rejections) that carry plain text.
async fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    // JSON errors and the dashboard's HTML pages (sign-in refusals) keep
    // their bodies.
    let own_body = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/html"));
    if (status.is_client_error() || status.is_server_error()) && !own_body {
        let mut replaced = ApiError::for_status(status).into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            replaced.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return replaced;
    }
    response
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "a request handler panicked");
    ApiError::internal().into_response()
}

/// RFC 3339 with milliseconds, the wire form of every instant.
pub(crate) fn instant(ms: Millis) -> String {
    format_rfc3339(ms)
}
