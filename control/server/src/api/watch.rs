//! The watch endpoint: newline-delimited `WatchEvent`s over a long-lived chunked response.
//!
//! The HTTP body pulls from the store's event stream directly. A client that stops reading
//! stalls only its own connection; its store stream then lags and is closed with an `ERROR`
//! event (410 Expired), so it relists — writers and other watchers never wait for it.
//! Unfiltered JSON watchers send each event's shared, once-built line, and whatever is queued
//! for a watcher goes out as one chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use sluice_printers::IncludeObject;
use sluice_store::{frame, Event, EventType, StoreError, Stored, WatchError, WatchStream};

use super::AppState;
use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};

/// Largest chunk a watcher writes at once.
const MAX_CHUNK: usize = 256 * 1024;

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
    let timeout = match super::int_param(q, "timeoutSeconds")? {
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

    let stream = match store.watch(&prefix, after) {
        Err(StoreError::Compacted { requested, oldest }) => {
            // The apiserver answers 200 and a single ERROR event carrying 410.
            let e = ApiError::gone(format!("too old resource version: {requested} ({oldest})"));
            return Ok(chunked(Body::from(error_line(&e))));
        }
        Err(e) => return Err(ApiError::internal(e.to_string())),
        Ok(s) => s,
    };
    let mut tick = tokio::time::interval(state.bookmark_interval);
    tick.reset();
    let w = Watcher {
        stream,
        filter,
        enc,
        initial: initial.into(),
        deadline: Box::pin(tokio::time::sleep(timeout)),
        tick,
        bookmarks,
        last_rev: after,
        done: false,
    };
    // The response body pulls straight from the store's stream: one task (the connection's)
    // per watcher, and a client that goes away drops the whole chain.
    let body = futures::stream::unfold(w, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), w))
    });
    Ok(chunked(Body::from_stream(body)))
}

/// One watch in progress.
struct Watcher {
    stream: WatchStream,
    filter: Filter,
    enc: Encoder,
    initial: VecDeque<Arc<Stored>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    tick: tokio::time::Interval,
    bookmarks: bool,
    last_rev: u64,
    done: bool,
}

impl Watcher {
    /// The next chunk to send: everything already queued (up to [`MAX_CHUNK`]), so under load
    /// a watcher costs one write — one TLS record, one syscall — per batch, not per event.
    /// None ends the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.initial.is_empty() {
            let mut batch = Vec::new();
            while let Some(s) = self.initial.pop_front() {
                batch.extend_from_slice(&self.enc.line(EventType::Added, None, &s));
                if batch.len() >= MAX_CHUNK {
                    break;
                }
            }
            return Some(Bytes::from(batch));
        }
        loop {
            let first = tokio::select! {
                _ = &mut self.deadline => return None,
                _ = self.tick.tick(), if self.bookmarks => {
                    return Some(bookmark_line(self.filter.res, self.last_rev));
                }
                next = self.stream.next() => next,
            };
            let mut batch: Vec<u8> = Vec::new();
            let mut next = first;
            loop {
                match next {
                    None => {
                        self.done = true;
                        break;
                    }
                    Some(Err(WatchError::Lagged(n))) => {
                        let e = ApiError::gone(format!(
                            "watch closed: the client fell {n} events behind; relist"
                        ));
                        batch.extend_from_slice(&error_line(&e));
                        self.done = true;
                        break;
                    }
                    Some(Ok(ev)) => {
                        self.last_rev = ev.revision();
                        if let Some(ty) = event_type_for(&self.filter, &ev) {
                            // An object leaving the selection is sent in its new state as
                            // DELETED, as the apiserver does.
                            batch.extend_from_slice(&self.enc.line(ty, Some(&ev), &ev.object));
                        }
                    }
                }
                if batch.len() >= MAX_CHUNK {
                    break;
                }
                match self.stream.next().now_or_never() {
                    Some(n) => next = n,
                    None => break,
                }
            }
            if !batch.is_empty() {
                return Some(Bytes::from(batch));
            }
            if self.done {
                return None;
            }
            // Everything pulled was filtered out: wait for more.
        }
    }
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
