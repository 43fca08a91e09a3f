//! One kind's watch loop: watcher → decode and trim → cache, restarted with a relist after a
//! capped, jittered backoff, with every step recorded in [`SyncStatus`].
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, metadata_watcher, watcher, Event};
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::convert::{self, Trim};
use super::options::{refuses_streaming_lists, watcher_config};
use super::store::{self, Cache, Cached, Change};
use super::{backoff, Kind, ListStrategy, SyncStatus, WatchOptions};

/// One core kind's watch loop (see [`run_watch`]), decoding into the typed object `K`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_kind<K>(
    client: Client,
    kind: Kind,
    cache: Arc<Cache<K::Compact>>,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) where
    K: Trim
        + Cached
        + DeserializeOwned
        + kube::Resource<DynamicType = ()>
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Default
        + Clone
        + Send
        + Sync
        + 'static,
{
    let ar = ApiResource::erase::<K>(&());
    let decoder = {
        let (status, cache) = (status.clone(), cache.clone());
        move |obj: DynamicObject| decode_obj::<K>(kind, obj, &status).map(|k| cache.compact(k))
    };
    let watch = Watch {
        client,
        kind,
        ar,
        metadata_only: matches!(kind, Kind::ReplicaSet | Kind::Job),
        gone: None,
    };
    run_watch(watch, decoder, cache, opts, status, changed, cancel).await;
}

/// What one watch loop watches.
pub(super) struct Watch {
    pub(super) client: Client,
    pub(super) kind: Kind,
    pub(super) ar: ApiResource,
    /// Watch PartialObjectMetadata only (same list and watch verbs).
    pub(super) metadata_only: bool,
    /// For an optional kind: told when the resource is gone from the server (404), so API
    /// discovery runs again at once rather than the kind being reported failing.
    pub(super) gone: Option<Arc<Notify>>,
}

/// One kind's watch loop: watcher → decode and trim → reflector store, restarted (with a
/// relist) after failures.
pub(super) async fn run_watch<C>(
    watch: Watch,
    decode: impl Fn(DynamicObject) -> Option<C>,
    cache: Arc<Cache<C>>,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Watch {
        client,
        kind,
        ar,
        metadata_only,
        gone,
    } = watch;
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut streaming = opts.list_strategy != ListStrategy::Paged;
    // A streaming list of this kind has completed: from then on a failure is a failure.
    let mut streamed = false;
    let mut backoff = backoff::Backoff::new(
        opts.min_backoff,
        opts.max_backoff,
        backoff::Backoff::seed(kind as u64),
    );
    // A 410 Gone was met since the last complete list (see `Failure::Expired`).
    let mut expired_since_listed = false;
    let mut lists = 0u64;
    let mut init_count = 0usize;
    loop {
        let mut stream = watch_stream(metadata_only, api.clone(), watcher_config(&opts, streaming));
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let event = match item {
                None => break,
                Some(Err(e))
                    if streaming
                        && !streamed
                        && opts.list_strategy == ListStrategy::Auto
                        && refuses_streaming_lists(&e) =>
                {
                    streaming = false;
                    tracing::info!(?kind, error = %crate::error_chain::Chain(&e), "the API server does not stream lists (WatchList); listing in pages");
                    break;
                }
                Some(Err(e)) => match failure(&e) {
                    Failure::WatchExpired => {
                        // The watcher relists by itself; the store keeps the last state until
                        // the relist completes. Not a failure.
                        tracing::info!(?kind, "watch expired (410 Gone); relisting");
                        continue;
                    }
                    Failure::Expired if !expired_since_listed => {
                        expired_since_listed = true;
                        tracing::info!(?kind, error = %crate::error_chain::Chain(&e), "watch or list expired (410 Gone); relisting");
                        break;
                    }
                    Failure::Gone if gone.is_some() => {
                        // An optional kind whose CRD was just deleted: discovery drops it.
                        tracing::info!(?kind, "resource no longer served; rediscovering");
                        if let Some(g) = &gone {
                            g.notify_one();
                        }
                        break;
                    }
                    Failure::Expired | Failure::Gone | Failure::Failed => {
                        // An expiry again before a list completed counts too: the list cannot
                        // finish within the server's compaction window, so the kind would
                        // stay on old state without ever being reported stale.
                        if status.failed(kind) {
                            tracing::warn!(?kind, error = %crate::error_chain::Chain(&e), "watch failed; keeping the last known state and retrying");
                        } else {
                            tracing::info!(?kind, error = %crate::error_chain::Chain(&e), "newly served kind not ready yet; retrying");
                        }
                        break;
                    }
                },
                Some(Ok(event)) => event,
            };
            // Any other event means the server answered, so the next retry need not wait long.
            // (`Init` is emitted before the list request: it proves no contact.) Whether the
            // kind is current again is decided once the cache has the event (`apply_change`).
            if !matches!(event, Event::Init) {
                backoff.reset();
            }
            let change = match event {
                Event::Init => {
                    init_count = 0;
                    Some(Change::Init)
                }
                Event::InitApply(obj) => {
                    let key = store::key_of(&obj.metadata);
                    let c = decode(obj);
                    init_count += usize::from(c.is_some());
                    c.map(|c| Change::InitApply(key, c))
                }
                Event::InitDone => {
                    expired_since_listed = false;
                    streamed |= streaming;
                    lists += 1;
                    if lists > 1 {
                        status.metrics.add_relist(kind);
                        tracing::info!(?kind, objects = init_count, "relisted");
                    }
                    Some(Change::InitDone)
                }
                Event::Apply(obj) => {
                    // An update that cannot be read (reported by decode_obj) removes the
                    // object, as a relist would leave it out: keeping the previous version
                    // would judge flows by an object that no longer exists as it was.
                    let key = store::key_of(&obj.metadata);
                    Some(match decode(obj) {
                        Some(c) => Change::Apply(key, c),
                        None => Change::Delete(key),
                    })
                }
                Event::Delete(obj) => Some(Change::Delete(store::key_of(&obj.metadata))),
            };
            let Some(change) = change else { continue };
            if apply_change(kind, &cache, change, &status) {
                changed.notify_one();
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// A kind's watcher, as untyped objects. ReplicaSets and Jobs are watched for their metadata
/// only (PartialObjectMetadata, with the same list and watch verbs): the agent reads nothing
/// else of them, and a ReplicaSet's body carries its whole pod template.
fn watch_stream(
    metadata_only: bool,
    api: Api<DynamicObject>,
    cfg: watcher::Config,
) -> BoxStream<'static, watcher::Result<Event<DynamicObject>>> {
    if metadata_only {
        metadata_watcher(api, cfg)
            .map(|r| r.map(meta_event))
            .boxed()
    } else {
        watcher(api, cfg).boxed()
    }
}

/// A metadata-only event as an object with an empty body (all `decode_obj` needs of these
/// kinds).
fn meta_event(event: Event<PartialObjectMeta<DynamicObject>>) -> Event<DynamicObject> {
    let obj = |m: PartialObjectMeta<DynamicObject>| DynamicObject {
        types: m.types,
        metadata: m.metadata,
        data: serde_json::Value::Null,
    };
    match event {
        Event::Apply(m) => Event::Apply(obj(m)),
        Event::Delete(m) => Event::Delete(obj(m)),
        Event::Init => Event::Init,
        Event::InitApply(m) => Event::InitApply(obj(m)),
        Event::InitDone => Event::InitDone,
    }
}

/// What a failed watcher step means for the kind.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The open watch expired (410 Gone: the server compacted past its resource version): the
    /// watcher relists by itself.
    WatchExpired,
    /// A watch expired as it started, or a paged list's continue token expired (its pages
    /// outlived the compaction window): start over with a relist. The server answered; it is
    /// not failing.
    Expired,
    /// The resource is not served (404): for an optional kind, its CRD was deleted.
    Gone,
    /// Anything else (server gone, connection reset, forbidden, ...): the watch is failing.
    Failed,
}

fn failure(e: &watcher::Error) -> Failure {
    match e {
        watcher::Error::WatchError(e) if e.code == 410 => Failure::WatchExpired,
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::InitialListFailed(kube::Error::Api(e))
            if e.code == 410 =>
        {
            Failure::Expired
        }
        watcher::Error::WatchError(e) if e.code == 404 => Failure::Gone,
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::InitialListFailed(kube::Error::Api(e))
            if e.code == 404 =>
        {
            Failure::Gone
        }
        _ => Failure::Failed,
    }
}

/// Applies one change to a kind's cache and records it in `status`. True when the cache's
/// contents changed (a new view is due).
///
/// Only a change the cache has taken in makes the kind current again. The objects of a relist
/// are buffered until `InitDone`, so while it runs the agent still serves the pre-outage state:
/// calling the kind current at its first object would report ready and zero staleness too
/// early, and a relist that keeps failing after its first page would restart the staleness
/// clock at every retry, so the staleness alert would never fire.
fn apply_change<C>(kind: Kind, cache: &Cache<C>, change: Change<C>, status: &SyncStatus) -> bool {
    let listed = matches!(change, Change::InitDone);
    let changed = matches!(change, Change::Apply(..) | Change::Delete(_));
    cache.apply(change);
    if listed {
        status.synced(kind, cache.len());
    } else if changed {
        status.set_objects(kind, cache.len());
    } else {
        return false; // Init, InitApply: a relist under way
    }
    status.ok(kind);
    true
}

fn decode_obj<K>(kind: Kind, obj: DynamicObject, status: &SyncStatus) -> Option<K>
where
    K: Trim + DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> + Default,
{
    let mut obj = obj;
    obj.metadata.managed_fields = None;
    let meta = obj.metadata.clone();
    // The body without a second copy: the object's own fields plus its (small) metadata.
    let mut value = std::mem::take(&mut obj.data);
    let metadata = match serde_json::to_value(&meta) {
        Ok(v) => v,
        Err(e) => {
            status.metrics.add_rejected(kind);
            tracing::warn!(object = %convert::object_name(K::NAME, &meta), error = %crate::error_chain::Chain(&e), "object skipped");
            return None;
        }
    };
    match value.as_object_mut() {
        Some(map) => {
            map.insert("metadata".to_owned(), metadata);
        }
        None => {
            value = serde_json::json!({ "metadata": metadata });
        }
    }
    match convert::convert::<K>(meta, value) {
        Ok(k) => Some(k),
        Err(e) => {
            status.metrics.add_rejected(kind);
            tracing::warn!(error = %e, "object skipped: cannot decode");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_relist_makes_the_kind_current_only_once_it_is_swapped_in() {
        let status = SyncStatus::default();
        let cache: Cache<u32> = Cache::default();
        let key = |n: &str| (Some("shop".to_owned()), n.to_owned());
        for c in [
            Change::Init,
            Change::InitApply(key("old"), 1),
            Change::InitDone,
        ] {
            apply_change(Kind::Pod, &cache, c, &status);
        }
        // an outage, then a relist that fails after its first page
        status.failed(Kind::Pod);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!apply_change(Kind::Pod, &cache, Change::Init, &status));
        let page = Change::InitApply(key("new"), 2);
        assert!(!apply_change(Kind::Pod, &cache, page, &status));
        assert!(status.is_stale(), "the cache still holds the old list");
        assert!(!status.is_synced());
        let stale = status.stale_for_kind(Kind::Pod);
        assert!(
            stale.is_some_and(|d| d >= Duration::from_millis(20)),
            "the staleness clock keeps running: {stale:?}"
        );
        status.failed(Kind::Pod); // the relist's second page fails; the clock is not restarted
        assert!(status.stale_for().unwrap() >= Duration::from_millis(20));
        // the retry completes
        for c in [Change::Init, Change::InitApply(key("new"), 2)] {
            apply_change(Kind::Pod, &cache, c, &status);
        }
        assert!(status.is_stale());
        assert!(apply_change(Kind::Pod, &cache, Change::InitDone, &status));
        assert!(!status.is_stale() && status.stale_for_kind(Kind::Pod).is_none());
        assert!(status.last_ok_age().is_some());
        // events of a current watch keep it current
        status.failed(Kind::Pod);
        assert!(apply_change(
            Kind::Pod,
            &cache,
            Change::Delete(key("new")),
            &status
        ));
        assert!(!status.is_stale());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_404_is_a_resource_gone() {
        use watcher::Error as E;
        let api = |code: u16| kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "the server could not find the requested resource".into(),
            reason: "NotFound".into(),
            code,
        };
        let list = E::InitialListFailed(kube::Error::Api(api(404)));
        assert_eq!(failure(&list), Failure::Gone);
        assert_eq!(failure(&E::WatchError(api(404))), Failure::Gone);
    }

    #[test]
    fn a_410_on_a_watch_or_a_list_page_is_an_expiry_not_a_failure() {
        use watcher::Error as E;
        let api = |code: u16| kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "too old resource version".into(),
            reason: "Expired".into(),
            code,
        };
        assert_eq!(failure(&E::WatchError(api(410))), Failure::WatchExpired);
        let at_start = E::WatchStartFailed(kube::Error::Api(api(410)));
        assert_eq!(failure(&at_start), Failure::Expired);
        // a later page of a list whose continue token expired
        let next_page = E::InitialListFailed(kube::Error::Api(api(410)));
        assert_eq!(failure(&next_page), Failure::Expired);
        for e in [
            E::InitialListFailed(kube::Error::Api(api(503))),
            E::WatchStartFailed(kube::Error::Api(api(403))),
            E::WatchError(api(500)),
            E::NoResourceVersion,
        ] {
            assert_eq!(failure(&e), Failure::Failed, "{e}");
        }
    }
}
