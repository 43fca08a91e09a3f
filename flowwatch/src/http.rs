//! HTTP edge: `/metrics` (Prometheus text 0.0.4 or OpenMetrics 1.0, by `Accept` header),
//! `/healthz` (the process serves requests) and `/readyz` (the agent says it is ready).
//!
//! Wiring (the lead's agent):
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use flowwatch::{http, metrics};
//! let (metrics, registry) = metrics::Metrics::new(&metrics::MetricsConfig::default()).unwrap();
//! let readiness = http::Readiness::new(); // not ready ("starting") until set_ready()
//! let state = http::HttpState::new(Arc::new(registry), metrics.clone(), readiness.clone());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9090").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(http::serve(listener, state, shutdown.clone()));
//! readiness.set_ready(); // once programs are attached and the watches have synced
//! # Ok(()) }
//! ```
//!
//! `/metrics?format=openmetrics` or `?format=prometheus` overrides the negotiation (useful for
//! scrapers that cannot set `Accept`, and for testing both formats with one Prometheus).

use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::metrics::exposition::{
    encode_openmetrics, encode_prometheus_text, OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_TEXT_CONTENT_TYPE,
};
use crate::metrics::Metrics;

/// The agent's readiness, shared between the agent (which sets it) and `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Not ready, with reason "starting".
    pub fn new() -> Readiness {
        Readiness(Arc::new(RwLock::new(Some("starting".into()))))
    }
    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
    /// Not ready, saying why (shown in the `/readyz` body).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }
    /// `Ok(())` when ready, else the reason.
    pub fn status(&self) -> Result<(), String> {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

/// Scrapes encoded at once, at most. Each encodes the whole registry on a blocking thread; a
/// Prometheus pair needs two; beyond a few, a client hammering the port would take the node's
/// CPU and memory, so it is turned away (503) instead.
pub const CONCURRENT_SCRAPES: usize = 4;

/// What the HTTP edge serves.
#[derive(Clone)]
pub struct HttpState {
    registry: Arc<Registry>,
    metrics: Metrics,
    readiness: Readiness,
    scrapes: Arc<tokio::sync::Semaphore>,
}

impl HttpState {
    pub fn new(registry: Arc<Registry>, metrics: Metrics, readiness: Readiness) -> HttpState {
        HttpState {
            registry,
            metrics,
            readiness,
            scrapes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SCRAPES)),
        }
    }
}

/// The exposition format a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

/// Picks the format: `?format=` wins; else the `Accept` media type with the highest q-value
/// (OpenMetrics on a tie); Prometheus text when nothing matches or the header is absent.
pub fn negotiate(accept: Option<&str>, query: Option<&str>) -> Format {
    for pair in query.unwrap_or("").split('&') {
        match pair {
            "format=openmetrics" => return Format::OpenMetrics,
            "format=prometheus" | "format=text" => return Format::PrometheusText,
            _ => {}
        }
    }
    let Some(accept) = accept else {
        return Format::PrometheusText;
    };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    }
}

async fn metrics_handler(State(state): State<HttpState>, uri: Uri, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let format = negotiate(accept.as_deref(), uri.query());
    let Ok(permit) = state.scrapes.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many scrapes at once (at most {CONCURRENT_SCRAPES})\n"),
        )
            .into_response();
    };
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let start = Instant::now();
        let body = match format {
            Format::OpenMetrics => encode_openmetrics(&state.registry),
            Format::PrometheusText => encode_prometheus_text(&state.registry),
        };
        state.metrics.observe_scrape(start.elapsed());
        body
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let ct = match format {
                Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
                Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// The routes, for embedding or testing.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_2_accept_header_gets_openmetrics() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom), None), Format::OpenMetrics);
    }

    #[test]
    fn plain_clients_get_prometheus_text() {
        assert_eq!(negotiate(None, None), Format::PrometheusText);
        assert_eq!(negotiate(Some("*/*"), None), Format::PrometheusText);
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4"), None),
            Format::PrometheusText
        );
        assert_eq!(
            negotiate(
                Some("application/openmetrics-text;q=0.2,text/plain;q=0.9"),
                None
            ),
            Format::PrometheusText
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0"), None),
            Format::PrometheusText
        );
    }

    #[test]
    fn the_query_parameter_overrides_accept() {
        let om = Some("application/openmetrics-text");
        assert_eq!(
            negotiate(om, Some("format=prometheus")),
            Format::PrometheusText
        );
        assert_eq!(
            negotiate(None, Some("a=b&format=openmetrics")),
            Format::OpenMetrics
        );
    }

    #[tokio::test]
    async fn scrapes_beyond_the_limit_are_turned_away_and_the_next_is_served() {
        let (metrics, registry) =
            crate::metrics::Metrics::new(&crate::metrics::MetricsConfig::default()).unwrap();
        let state = HttpState::new(Arc::new(registry), metrics, Readiness::new());
        let uri: Uri = "/metrics".parse().unwrap();
        let busy = state
            .scrapes
            .clone()
            .try_acquire_many_owned(CONCURRENT_SCRAPES as u32)
            .unwrap();
        let refused = metrics_handler(State(state.clone()), uri.clone(), HeaderMap::new()).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(busy);
        let served = metrics_handler(State(state.clone()), uri, HeaderMap::new()).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(
            state.scrapes.available_permits(),
            CONCURRENT_SCRAPES,
            "every permit is given back"
        );
    }

    #[test]
    fn readiness_starts_not_ready_and_says_why() {
        let r = Readiness::new();
        assert_eq!(r.status(), Err("starting".into()));
        r.set_ready();
        assert_eq!(r.status(), Ok(()));
        r.set_not_ready("pod watch not synced");
        assert_eq!(r.status(), Err("pod watch not synced".into()));
    }
}
