//! Authorization of `/metrics` by the Kubernetes API, as kube-rbac-proxy does it, without a
//! sidecar: the scraper's bearer token is checked with a TokenReview (who is it?) and a
//! SubjectAccessReview (may they `get` the non-resource URL `/metrics`?). The usual grant is the
//! ClusterRole Prometheus operators already bind to their scraper (`nonResourceURLs:
//! ["/metrics"], verbs: ["get"]`).
//!
//! No `Authorization: Bearer` header: 401. A token the API server does not authenticate: 401.
//! Authenticated but not allowed: 403. The API server unreachable: 503 (not cached, so the next
//! scrape asks again). Decisions are cached for a short time ([`AuthzOptions`]) under the
//! SHA-256 of the token (the token itself is not kept), so a scrape every few seconds costs the
//! API server two requests per scraper per TTL, not per scrape. `/healthz` and `/readyz` are
//! not behind it: the kubelet's probes carry no token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// The non-resource attributes a scraper must be allowed.
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// How long decisions are kept and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthzOptions {
    /// An allowed token stays allowed this long without asking again (a revoked grant or
    /// token stops working within it).
    pub allowed_ttl: Duration,
    /// A refused token is refused this long without asking (a new grant works within it).
    pub denied_ttl: Duration,
    /// Distinct tokens remembered; beyond it the oldest decisions are forgotten.
    pub max_entries: usize,
}

impl Default for AuthzOptions {
    fn default() -> Self {
        AuthzOptions {
            allowed_ttl: Duration::from_mins(1),
            denied_ttl: Duration::from_secs(10),
            max_entries: 256,
        }
    }
}

/// What the API server said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Not authenticated (401), with the API server's reason.
    Unauthenticated(String),
    /// Authenticated as `user` but not allowed (403).
    Forbidden {
        user: String,
        reason: String,
    },
}

type TokenHash = [u8; 32];

/// The decision cache: pure, so its bounds are unit-tested.
#[derive(Debug)]
struct DecisionCache {
    opts: AuthzOptions,
    entries: HashMap<TokenHash, (Decision, Instant)>,
}

impl DecisionCache {
    fn get(&self, key: &TokenHash, now: Instant) -> Option<Decision> {
        let (decision, at) = self.entries.get(key)?;
        let ttl = match decision {
            Decision::Allowed => self.opts.allowed_ttl,
            _ => self.opts.denied_ttl,
        };
        (now.duration_since(*at) < ttl).then(|| decision.clone())
    }

    fn put(&mut self, key: TokenHash, decision: Decision, now: Instant) {
        if self.entries.len() >= self.opts.max_entries && !self.entries.contains_key(&key) {
            let longest = self.opts.allowed_ttl.max(self.opts.denied_ttl);
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < longest);
            while self.entries.len() >= self.opts.max_entries.max(1) {
                let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (decision, now));
    }
}

/// Asks the API server about scrapers' tokens.
pub struct Authorizer {
    client: kube::Client,
    cache: Mutex<DecisionCache>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

fn hash(token: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Authorizer {
    /// `client` needs `create` on `tokenreviews` and `subjectaccessreviews`.
    pub fn new(client: kube::Client, opts: AuthzOptions) -> Authorizer {
        Authorizer {
            client,
            cache: Mutex::new(DecisionCache {
                opts,
                entries: HashMap::new(),
            }),
        }
    }

    /// The decision for `token`, from the cache or the API server.
    pub async fn check(&self, token: &str) -> Result<Decision, kube::Error> {
        let key = hash(token);
        if let Some(d) = self.lock().get(&key, Instant::now()) {
            return Ok(d);
        }
        let decision = self.ask(token).await?;
        self.lock().put(key, decision.clone(), Instant::now());
        Ok(decision)
    }

    /// Decisions currently remembered.
    pub fn cached(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        crate::sync::lock(&self.cache)
    }

    async fn ask(&self, token: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Decision::Unauthenticated(
                status
                    .error
                    .unwrap_or_else(|| "token not authenticated".into()),
            ));
        }
        let name = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(METRICS_PATH.into()),
                    verb: Some(METRICS_VERB.into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answered = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        let status = answered.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Decision::Allowed
        } else {
            Decision::Forbidden {
                user: name,
                reason: status.reason.unwrap_or_default(),
            }
        })
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware for the protected routes.
pub async fn require(
    State(authz): State<Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer_token(request.headers()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized: a bearer token is required\n",
        )
            .into_response();
    };
    match authz.check(token).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated(reason)) => {
            tracing::debug!(%reason, "metrics scrape with an unauthenticated token");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized\n",
            )
                .into_response()
        }
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::debug!(%user, %reason, "metrics scrape refused");
            (
                StatusCode::FORBIDDEN,
                format!("Forbidden: {user} may not {METRICS_VERB} {METRICS_PATH}\n"),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain::Chain(&e), "authorizing a metrics scrape");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization unavailable: the API server did not answer\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: usize) -> DecisionCache {
        DecisionCache {
            opts: AuthzOptions {
                allowed_ttl: Duration::from_mins(1),
                denied_ttl: Duration::from_secs(10),
                max_entries: max,
            },
            entries: HashMap::new(),
        }
    }

    #[test]
    fn allowed_and_refused_decisions_expire_after_their_own_ttl() {
        let mut c = cache(8);
        let t0 = Instant::now();
        c.put(hash("good"), Decision::Allowed, t0);
        let no = Decision::Forbidden {
            user: "u".into(),
            reason: String::new(),
        };
        c.put(hash("bad"), no.clone(), t0);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(c.get(&hash("good"), later), Some(Decision::Allowed));
        assert_eq!(
            c.get(&hash("bad"), later),
            None,
            "refusals are re-asked sooner"
        );
        assert_eq!(c.get(&hash("good"), t0 + Duration::from_secs(61)), None);
        assert_eq!(c.get(&hash("bad"), t0 + Duration::from_secs(1)), Some(no));
    }

    #[test]
    fn the_cache_stays_within_its_bound_dropping_the_oldest() {
        let mut c = cache(3);
        let t0 = Instant::now();
        for i in 0..10u64 {
            c.put(
                hash(&format!("t{i}")),
                Decision::Allowed,
                t0 + Duration::from_millis(i),
            );
            assert!(c.entries.len() <= 3);
        }
        let now = t0 + Duration::from_millis(20);
        assert!(c.get(&hash("t9"), now).is_some());
        assert!(c.get(&hash("t0"), now).is_none());
    }

    #[test]
    fn only_a_non_empty_bearer_token_counts() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "bearer tok.en".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("tok.en"));
    }
}
