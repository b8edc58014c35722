//! The watch endpoint: newline-delimited `WatchEvent`s over a long-lived chunked response.
//!
//! One task per watcher pulls from the store's event stream and pushes lines into a small
//! channel that backs the HTTP body. A client that stops reading stalls only its own task; its
//! store stream then lags and is closed with an `ERROR` event (410 Expired), so it relists —
//! writers and other watchers never wait for it. Unfiltered JSON watchers send each event's
//! shared, once-built line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use sluice_printers::IncludeObject;
use sluice_store::{frame, Event, EventType, StoreError, Stored, WatchError};
use tokio::sync::mpsc;

use super::AppState;
use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};

struct Filter {
    res: &'static Resource,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, s: &Stored) -> bool {
        crate::registry::matches(self.res, s, &self.labels, &self.fields)
    }
}

/// What to send for one store event, after selector transitions (a MODIFIED that leaves the
/// selection is a DELETED, one that enters it an ADDED, as on the apiserver).
fn event_type_for(f: &Filter, ev: &Event) -> Option<EventType> {
    if f.is_empty() {
        return Some(ev.event_type);
    }
    let now = f.matches(&ev.object);
    match ev.event_type {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => now.then_some(EventType::Deleted),
        EventType::Modified => {
            let before = ev.prev.as_ref().map(|p| f.matches(p));
            match (before, now) {
                (Some(true), true) | (None, true) => Some(EventType::Modified),
                (Some(false), true) => Some(EventType::Added),
                (Some(true), false) => Some(EventType::Deleted),
                (_, false) => None,
            }
        }
    }
}

struct Encoder {
    kind: &'static str,
    table: Option<IncludeObject>,
}

impl Encoder {
    fn line(&self, ty: EventType, ev_shared: Option<&Event>, obj: &Stored) -> Bytes {
        match self.table {
            None => match ev_shared {
                Some(ev) if ev.event_type == ty => ev.framed(),
                _ => frame(ty.as_str(), &obj.json),
            },
            Some(include) => {
                let v = obj.value().unwrap_or(Value::Null);
                let t = sluice_printers::table(
                    self.kind,
                    &[v],
                    &obj.mod_revision.to_string(),
                    None,
                    jiff::Timestamp::now(),
                    include,
                );
                let mut line = json!({"type": ty.as_str(), "object": t}).to_string();
                line.push('\n');
                Bytes::from(line)
            }
        }
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut line = json!({"type": "ERROR", "object": e.to_status()}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark_line(res: &Resource, rev: u64) -> Bytes {
    let mut line = json!({
        "type": "BOOKMARK",
        "object": {"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}}
    })
    .to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Serves one watch request.
pub(super) fn serve(
    state: Arc<AppState>,
    res: &'static Resource,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &HashMap<String, String>,
    table: Option<IncludeObject>,
) -> ApiResult<Response> {
    let store = state.registry.store().clone();
    let prefix = res.ns_prefix(ns.as_deref());
    let filter = Filter {
        res,
        labels,
        fields,
    };
    let enc = Encoder {
        kind: res.kind,
        table,
    };
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => Duration::from_secs(t),
        None => {
            let (lo, hi) = state.watch_timeout;
            Duration::from_secs(rand::rng().random_range(lo..=hi.max(lo)))
        }
    };
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");

    // Initial state: resourceVersion unset or "0" means "send what exists as ADDED first".
    let (initial, after) = if rv.is_empty() || rv == "0" {
        let (items, rev) = store.list(&prefix);
        let items: Vec<Arc<Stored>> = items
            .into_iter()
            .filter(|s| filter.is_empty() || filter.matches(s))
            .collect();
        (items, rev)
    } else {
        let after: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        (Vec::new(), after)
    };

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    match store.watch(&prefix, after) {
        Err(StoreError::Compacted { requested, oldest }) => {
            // The apiserver answers 200 and a single ERROR event carrying 410.
            let e = ApiError::gone(format!("too old resource version: {requested} ({oldest})"));
            return Ok(chunked(Body::from(error_line(&e))));
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
        Ok(mut stream) => {
            let bookmark_every = state.bookmark_interval;
            tokio::spawn(async move {
                let send = |b: Bytes| {
                    let tx = tx.clone();
                    async move { tx.send(Ok(b)).await.is_ok() }
                };
                for s in &initial {
                    if !send(enc.line(EventType::Added, None, s)).await {
                        return;
                    }
                }
                let mut last_rev = after;
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut tick = tokio::time::interval(bookmark_every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut deadline => return,
                        // The client went away: stop now, not at the next event.
                        _ = tx.closed() => return,
                        _ = tick.tick(), if bookmarks => {
                            if !send(bookmark_line(res, last_rev)).await { return; }
                        }
                        next = stream.next() => match next {
                            None => return,
                            Some(Err(WatchError::Lagged(n))) => {
                                let e = ApiError::gone(format!(
                                    "watch closed: the client fell {n} events behind; relist"
                                ));
                                let _ = send(error_line(&e)).await;
                                return;
                            }
                            Some(Ok(ev)) => {
                                last_rev = ev.revision();
                                if let Some(ty) = event_type_for(&filter, &ev) {
                                    // An object leaving the selection is sent in its new
                                    // state as DELETED, as the apiserver does.
                                    if !send(enc.line(ty, Some(&ev), &ev.object)).await {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    }
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(chunked(body))
}

fn chunked(body: Body) -> Response {
    (
        [
            (http::header::CONTENT_TYPE, "application/json"),
            (http::header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response()
}
