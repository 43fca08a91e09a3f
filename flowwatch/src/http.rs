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
//!
//! No client can exhaust the agent through this port: the exposition is encoded once per burst
//! of scrapes and shared ([`ExpositionCache`]), the bytes held by slow clients are bounded, and
//! the connections are bounded in number and in time ([`HttpLimits`]), so `/healthz` and
//! `/readyz` answer while the metrics side is flooded.

pub mod authz;
mod exposition_cache;
mod guarded_io;
mod server;
pub mod tls;

use std::sync::{Arc, RwLock};

pub use authz::{Authorizer, AuthzOptions};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use exposition_cache::{
    bytes_in_flight_budget, ExpositionCache, ENCODINGS_IN_FLIGHT, MIN_BYTES_IN_FLIGHT,
};
use prometheus_client::registry::Registry;
pub use server::{bind, raise_fd_limit, HttpLimits, LISTEN_BACKLOG, READ_BUFFER_BYTES};
pub use tls::{Tls, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::metrics::exposition::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
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
        *crate::sync::write(&self.0) = None;
    }
    /// Not ready, saying why (shown in the `/readyz` body).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *crate::sync::write(&self.0) = Some(reason.into());
    }
    /// `Ok(())` when ready, else the reason.
    pub fn status(&self) -> Result<(), String> {
        match &*crate::sync::read(&self.0) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

/// What the HTTP edge serves.
#[derive(Clone)]
pub struct HttpState {
    exposition: Arc<ExpositionCache>,
    readiness: Readiness,
    /// When set, `/metrics` asks the API server about each scraper's token (authz.rs).
    authz: Option<Arc<Authorizer>>,
}

impl HttpState {
    pub fn new(registry: Arc<Registry>, metrics: Metrics, readiness: Readiness) -> HttpState {
        HttpState {
            exposition: Arc::new(ExpositionCache::new(registry, metrics)),
            readiness,
            authz: None,
        }
    }

    /// Puts `/metrics` behind `authz` (`/healthz` and `/readyz` stay open for the kubelet).
    pub fn with_authz(mut self, authz: Arc<Authorizer>) -> HttpState {
        self.authz = Some(authz);
        self
    }

    /// The shared encodings of the exposition (how many were made, how many bytes are alive).
    pub fn exposition(&self) -> &ExpositionCache {
        &self.exposition
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
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = negotiate(accept, uri.query());
    match state.exposition.get(format).await {
        Ok(body) => {
            let ct = match format {
                Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
                Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => {
            let e = crate::error_chain::Chain(&e);
            tracing::warn!(error = %e, "a scrape got no metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
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
    let metrics = get(metrics_handler);
    let metrics = match state.authz.clone() {
        Some(a) => metrics.layer(axum::middleware::from_fn_with_state(a, authz::require)),
        None => metrics,
    };
    Router::new()
        .route("/metrics", metrics)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests and returns; within
/// the default [`HttpLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with_limits(listener, state, HttpLimits::default(), shutdown).await
}

/// As [`serve`], within `limits`.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    server::serve_router(listener, router(state), limits, None, shutdown).await
}

/// As [`serve_with_limits`], speaking TLS with `tls`'s current certificate when given.
pub async fn serve_secured(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: HttpLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    server::serve_router(listener, router(state), limits, tls, shutdown).await
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
    async fn each_scrape_gets_an_encoding_made_after_it_arrived() {
        let (metrics, registry) =
            crate::metrics::Metrics::new(&crate::metrics::MetricsConfig::default()).unwrap();
        let state = HttpState::new(Arc::new(registry), metrics, Readiness::new());
        let uri: Uri = "/metrics".parse().unwrap();
        for n in 1..=3 {
            let r = metrics_handler(State(state.clone()), uri.clone(), HeaderMap::new()).await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(
                state.exposition().encodings(),
                n,
                "one scrape after another"
            );
        }
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
