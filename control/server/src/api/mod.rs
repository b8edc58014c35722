//! The HTTP API: Kubernetes REST paths, content negotiation (JSON / `meta.k8s.io/v1` Table),
//! authentication and authorization, and the watch endpoint.
//!
//! Request flow: axum → [`handle`] parses the path into (resource, namespace, name,
//! subresource) → bearer token → authorization → verb handler → [`Registry`] → store.
//! Lists and gets answer straight from the store's shared JSON bytes (no re-serialization);
//! Tables are rendered by `sluice-printers`. `pods/log` and `pods/exec` are forwarded to the
//! pod's node ([`kubelet`]).

mod discovery;
mod kubelet;
mod openapi;
pub mod protobuf;
mod protobuf_keep;
mod review;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use sluice_printers::IncludeObject;
use sluice_store::Stored;

use crate::auth::{self, Attributes, Tokens, User};
use crate::conn::{ConnInfo, Limits};
use crate::registry::{
    manager_from_user_agent, with_field_manager, DeleteOptions, Part, PatchType, Propagation,
    Registry,
};
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};

/// Shared state of the HTTP server.
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Bearer tokens.
    pub tokens: Arc<Tokens>,
    /// Address advertised in `/api` (host:port).
    pub server_address: String,
    /// Watches without `timeoutSeconds` end after a random time in this range (seconds), like
    /// the apiserver's 30–60 min.
    pub watch_timeout: (u64, u64),
    /// Interval between BOOKMARK events for watchers that allow them.
    pub bookmark_interval: Duration,
    /// Body size and read deadline, in-flight limits.
    pub limits: Limits,
    /// Permits for non-mutating requests in flight (`--max-requests-inflight`).
    readonly_inflight: Arc<tokio::sync::Semaphore>,
    /// Permits for mutating requests in flight (`--max-mutating-requests-inflight`).
    mutating_inflight: Arc<tokio::sync::Semaphore>,
    /// TLS towards node agents' kubelet API (`pods/log`, `pods/exec`); without it those
    /// answer 500.
    pub kubelet_tls: Option<Arc<rustls::ClientConfig>>,
}

impl AppState {
    /// The state of one API server.
    pub fn new(
        registry: Arc<Registry>,
        tokens: Arc<Tokens>,
        server_address: String,
        watch_timeout: (u64, u64),
        bookmark_interval: Duration,
        limits: Limits,
    ) -> Self {
        AppState {
            registry,
            tokens,
            server_address,
            watch_timeout,
            bookmark_interval,
            readonly_inflight: Arc::new(tokio::sync::Semaphore::new(
                limits.max_requests_inflight.max(1),
            )),
            mutating_inflight: Arc::new(tokio::sync::Semaphore::new(
                limits.max_mutating_requests_inflight.max(1),
            )),
            limits,
            kubelet_tls: None,
        }
    }

    /// The client TLS config (with the kubelet client certificate) for `pods/log` and
    /// `pods/exec`.
    pub fn with_kubelet_client(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.kubelet_tls = Some(tls);
        self
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/version", get(|| async { discovery::version() }))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(handle)
        .with_state(state)
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| !k.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn json_bytes(code: StatusCode, body: impl Into<Body>) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<User> {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    state
        .tokens
        .authenticate(token)
        .ok_or_else(ApiError::unauthorized)
}

/// A parsed resource path.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Resource(Target),
    Discovery(Response),
    /// `authorization.k8s.io/v1` self-subject reviews (answered, not stored): access review
    /// (false) or rules review (true).
    Review {
        rules: bool,
    },
}

fn parse_path(path: &str, server_address: &str) -> ApiResult<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::Discovery(discovery::api_versions(server_address))),
        ["apis"] => return Ok(Route::Discovery(discovery::api_groups())),
        ["openapi", "v2"] => return Ok(Route::Discovery(discovery::openapi_v2())),
        ["openapi", "v3"] => return Ok(Route::Discovery(discovery::openapi_v3())),
        ["openapi", "v3", gv @ ..] => {
            return discovery::openapi_v3_group_version(&gv.join("/"))
                .map(Route::Discovery)
                .ok_or_else(ApiError::no_route)
        }
        ["apis", review::GROUP, review::VERSION, review::PLURAL] => {
            return Ok(Route::Review { rules: false })
        }
        ["apis", review::GROUP, review::VERSION, review::RULES_PLURAL] => {
            return Ok(Route::Review { rules: true })
        }
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(Route::Discovery)
            .ok_or_else(ApiError::no_route);
    }
    let find =
        |plural: &str| resources::find(group, version, plural).ok_or_else(ApiError::no_route);
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::no_route());
            }
            Target {
                res,
                ns: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                sub: match tail {
                    [_] | [] => None,
                    [_, sub] => Some(sub.to_string()),
                    _ => return Err(ApiError::no_route()),
                },
            }
        }
        [plural, tail @ ..] => {
            let res = find(plural)?;
            if res.namespaced && !tail.is_empty() {
                // Namespaced objects are only addressed through /namespaces/<ns>/.
                return Err(ApiError::no_route());
            }
            Target {
                res,
                ns: None,
                name: tail.first().map(|s| s.to_string()),
                sub: match tail {
                    [_] | [] => None,
                    [_, sub] => Some(sub.to_string()),
                    _ => return Err(ApiError::no_route()),
                },
            }
        }
        [] => return Err(ApiError::no_route()),
    };
    if let Some(sub) = &t.sub {
        if !t.res.has_subresource(sub) {
            return Err(ApiError::no_route());
        }
    }
    Ok(Route::Resource(t))
}

/// Table negotiation from the Accept header.
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .next()
        .is_some_and(|first| {
            let parts: Vec<&str> = first.split(';').map(str::trim).collect();
            parts.contains(&"as=Table") && parts.contains(&"g=meta.k8s.io")
        })
}

fn include_object(q: &HashMap<String, String>) -> IncludeObject {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

/// Decodes a request body. JSON is assumed when there is no Content-Type (the Python client
/// sends none); YAML is accepted; protobuf creates and updates of the served kinds (kubectl ≥
/// 1.32's generators send them) are decoded to the JSON the JSON path would have seen.
fn parse_body(headers: &HeaderMap, verb: &str, body: &Bytes) -> ApiResult<Value> {
    let ct = media_type(headers)?;
    if ct == protobuf::MEDIA_TYPE && matches!(verb, "create" | "update") {
        return protobuf::object(&protobuf::open(body)?);
    }
    // An apply configuration is YAML (of which JSON is a subset).
    let yaml = ct == "application/yaml" || ct == "application/apply-patch+yaml";
    let ok = ct.is_empty()
        || ct == "application/json"
        || yaml
        || (verb == "patch" && PatchType::from_content_type(&ct).is_some());
    if !ok {
        return Err(ApiError::unsupported_media(&ct));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if yaml {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not UTF-8: {e}")))?;
        return serde_saphyr::from_str(text).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        });
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// The request's media type, lower-cased and without parameters; "" when there is no
/// Content-Type. A header that is present but not `type/subtype` is refused (415), never
/// taken for JSON.
fn media_type(headers: &HeaderMap) -> ApiResult<String> {
    let Some(h) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(String::new());
    };
    let raw = h
        .to_str()
        .map_err(|_| ApiError::unsupported_media("<not ASCII>"))?;
    let ct = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match ct.split_once('/') {
        Some((ty, sub)) if token(ty) && token(sub) => Ok(ct),
        _ => Err(ApiError::unsupported_media(raw)),
    }
}

/// Reads a request body: at most `max_request_body_bytes` (413 beyond, before reading
/// anything when Content-Length says so) within `request_timeout` (504 otherwise: a client that
/// announces a body and never sends it must not hold the request forever).
async fn read_body(limits: &Limits, headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    let max = limits.max_request_body_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::entity_too_large(max));
    }
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(limits.request_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::timeout(
            "Timeout: request did not complete within the allotted timeout (reading the request body)",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::entity_too_large(max))
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "error reading the request body: {e}"
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// An integer query parameter; a value that is not one is a 400, as on the apiserver.
pub(super) fn int_param(q: &HashMap<String, String>, name: &str) -> ApiResult<Option<u64>> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid value for {name}: {v:?}: must be a non-negative integer"
            ))
        }),
    }
}

/// How long a request for a resourceVersion the store has not reached waits for it before
/// the 504 (the apiserver's watch cache waits 3 s).
const FUTURE_RV_WAIT: Duration = Duration::from_secs(3);

/// `resourceVersion` of a get, list or watch: unset (the newest state: see [`Store::fresh`]),
/// or a revision the store has reached (a newer one is waited for, briefly, then refused with
/// `ResourceVersionTooLarge`).
///
/// [`Store::fresh`]: sluice_store::Store::fresh
async fn requested_revision(reg: &Registry, q: &HashMap<String, String>) -> ApiResult<Option<u64>> {
    let Some(rv) = q.get("resourceVersion").filter(|v| !v.is_empty()) else {
        // Unset: the most recent state. Reads come from memory; with several API servers on
        // one store, wait until it reflects every write acknowledged anywhere (a consistent
        // read, as the apiserver's watch cache does before serving one).
        reg.store()
            .fresh()
            .await
            .map_err(crate::registry::store_unavailable)?;
        return Ok(None);
    };
    let rv: u64 = rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: must be an unsigned integer"
        ))
    })?;
    let store = reg.store();
    let deadline = tokio::time::Instant::now() + FUTURE_RV_WAIT;
    while store.revision() < rv {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::resource_version_too_large(rv, store.revision()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Some(rv))
}

fn selectors(
    res: &Resource,
    q: &HashMap<String, String>,
) -> ApiResult<(LabelSelector, FieldSelector)> {
    let l = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let f = FieldSelector::parse(
        res,
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )
    .map_err(ApiError::bad_request)?;
    Ok((l, f))
}

/// Every request that is not a fixed route.
async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let conn = parts.extensions.get::<ConnInfo>().cloned();
    // An HTTP/1.1 connection's upgrade (`pods/exec`).
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let user = match authenticate(&state, &parts.headers) {
        Ok(u) => u,
        Err(e) => {
            // A connection whose first words are a bad token is not kept for more.
            if let Some(c) = conn.filter(|c| !c.is_authenticated()) {
                c.close();
            }
            return e.into_response();
        }
    };
    if let Some(c) = &conn {
        c.authenticated();
    }
    let served = handle_inner(
        &state,
        &user,
        parts.method,
        &parts.uri,
        &parts.headers,
        body,
        upgrade,
    );
    // NodeRestriction's checks of the object a node writes happen in the registry, which
    // learns who is asking from this scope.
    match auth::as_requester(&user, served).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Takes an in-flight permit for a request that is not long-running, or answers 429.
/// `system:masters` is exempt, as on the apiserver, so an administrator can always get in.
fn inflight_permit(
    state: &AppState,
    user: &User,
    mutating: bool,
) -> ApiResult<Option<tokio::sync::OwnedSemaphorePermit>> {
    if user.is_admin() {
        return Ok(None);
    }
    let sem = if mutating {
        &state.mutating_inflight
    } else {
        &state.readonly_inflight
    };
    sem.clone()
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| ApiError::too_many_requests())
}

async fn handle_inner(
    state: &Arc<AppState>,
    user: &User,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    let t = match parse_path(uri.path(), &state.server_address)? {
        Route::Discovery(r) if method == Method::GET => return Ok(r),
        Route::Discovery(_) => return Err(ApiError::method_not_allowed()),
        Route::Review { rules } if method == Method::POST => {
            return self_subject_review(state, user, headers, body, rules).await;
        }
        Route::Review { .. } => return Err(ApiError::method_not_allowed()),
        Route::Resource(t) => t,
    };
    let q = query_map(uri);
    // Connect subresources: long-running (no in-flight permit, as upstream), forwarded to the
    // pod's node. Exec is authorized as `create` whatever the method (kube-apiserver ≥ 1.31
    // does so for WebSocket GETs too).
    match (t.res.kind, t.sub.as_deref(), &method) {
        ("Pod", Some("log"), &Method::GET) => {
            authorize_request(&state.registry, user, &t, "get", None, None)?;
            return kubelet::log(state, &t, &q).await;
        }
        ("Pod", Some("exec"), &Method::GET | &Method::POST) => {
            authorize_request(&state.registry, user, &t, "create", None, None)?;
            return kubelet::exec(state, &t, uri, headers, upgrade).await;
        }
        ("Pod", Some("log" | "exec"), _) => return Err(ApiError::method_not_allowed()),
        _ => {}
    }
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = verb_of(&method, &t, is_watch)?;

    // Watches are long-running and not counted, as on the apiserver.
    let _permit = if verb == "watch" {
        None
    } else {
        inflight_permit(state, user, method != Method::GET)?
    };
    let body = if matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    ) {
        read_body(&state.limits, headers, body).await?
    } else {
        Bytes::new()
    };
    let parsed_body = if matches!(verb, "create" | "update" | "patch") {
        Some(parse_body(headers, verb, &body)?)
    } else {
        None
    };
    let selected_name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .filter(|n| !n.contains([',', '\\', '=', '!']));
    authorize_request(
        &state.registry,
        user,
        &t,
        verb,
        parsed_body.as_ref(),
        selected_name,
    )?;
    if t.res.namespaced && t.ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::no_route());
    }

    let (res, ns, reg) = (t.res, t.ns.as_deref(), &state.registry);
    let table = wants_table(headers);
    match verb {
        "watch" => {
            let (l, f) = selectors(res, &q)?;
            requested_revision(reg, &q).await?;
            watch::serve(
                state.clone(),
                res,
                ns.map(str::to_string),
                l,
                f,
                &q,
                table.then(|| include_object(&q)),
            )
        }
        "list" => {
            let (l, f) = selectors(res, &q)?;
            requested_revision(reg, &q).await?;
            list(reg, res, ns, &l, &f, &q, table)
        }
        "get" => {
            requested_revision(reg, &q).await?;
            get_one(reg, &t, &q, table)
        }
        "create" | "update" | "patch" => {
            let manager = match q.get("fieldManager").filter(|m| !m.is_empty()) {
                Some(m) if m.chars().count() > 128 => {
                    return Err(ApiError::bad_request(
                        "fieldManager: Too long: may not be more than 128 bytes",
                    ))
                }
                Some(m) => m.clone(),
                None => manager_from_user_agent(
                    headers
                        .get(http::header::USER_AGENT)
                        .and_then(|u| u.to_str().ok())
                        .unwrap_or(""),
                ),
            };
            let w = write(
                reg,
                &t,
                verb,
                headers,
                &q,
                parsed_body.unwrap_or(Value::Null),
            );
            with_field_manager(manager, w).await
        }
        "delete" => {
            let name = t.name.as_deref().unwrap_or_default();
            let opts = delete_options(&body, &q)?;
            let s = reg.delete(res, ns, name, &opts).await?;
            Ok(json_bytes(StatusCode::OK, s.json.clone()))
        }
        "deletecollection" => {
            let (l, f) = selectors(res, &q)?;
            let opts = delete_options(&body, &q)?;
            let (items, _) = reg.list(res, ns, &l, &f);
            let mut deleted = Vec::new();
            for s in items {
                let (ins, name) = res.split_key(&s.key);
                match reg.delete(res, ins, name, &opts).await {
                    Ok(d) => deleted.push(d),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(list_response(res, &deleted, reg.store().revision(), None))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `POST /apis/authorization.k8s.io/v1/selfsubject{access,rules}reviews`, in JSON, YAML or
/// protobuf (kubectl ≥ 1.32 sends `auth can-i` as protobuf).
async fn self_subject_review(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    body: Body,
    rules: bool,
) -> ApiResult<Response> {
    let _permit = inflight_permit(state, user, true)?;
    let body = read_body(&state.limits, headers, body).await?;
    let kind = if rules {
        "SelfSubjectRulesReview"
    } else {
        "SelfSubjectAccessReview"
    };
    let request = if media_type(headers)? == protobuf::MEDIA_TYPE {
        let env = protobuf::open(&body)?;
        if env.kind != kind {
            return Err(ApiError::bad_request(format!(
                "the body holds a {:?}, not a {kind}",
                env.kind
            )));
        }
        if rules {
            protobuf::self_subject_rules_review(&env.raw)?
        } else {
            protobuf::self_subject_access_review(&env.raw)?
        }
    } else {
        parse_body(headers, "create", &body)?
    };
    let answer = if rules {
        review::rules_review(user, &request)?
    } else {
        review::review(user, &request)?
    };
    Ok(json_value(StatusCode::CREATED, &answer))
}

/// The Kubernetes verb of a request on a resource path.
fn verb_of(method: &Method, t: &Target, is_watch: bool) -> ApiResult<&'static str> {
    Ok(match (method, &t.name, is_watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, _) => "create",
        (&Method::POST, Some(_), _) if t.sub.as_deref() == Some("binding") => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), _) => "delete",
        (&Method::DELETE, None, _) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    })
}

/// Authorizes a request: the name for a create comes from the body, and for a node's pod
/// request the node the stored pod is bound to.
fn authorize_request(
    reg: &Registry,
    user: &User,
    t: &Target,
    verb: &'static str,
    body: Option<&Value>,
    selected_name: Option<&str>,
) -> ApiResult<()> {
    let body_name = body
        .and_then(|b| b.pointer("/metadata/name"))
        .and_then(|n| n.as_str());
    let ns = t.ns.as_deref();
    let pod_node = if t.res.kind == "Pod" && !user.is_admin() {
        t.name
            .as_deref()
            .and_then(|n| reg.get_value(t.res, ns, n).ok())
            .and_then(|v| {
                v.pointer("/spec/nodeName")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            })
    } else {
        None
    };
    // The object a node asks for: by name, or by a `metadata.name=` field selector (how a
    // kubelet lists and watches one object).
    let asked = t.name.as_deref().or(selected_name);
    let referenced_by_node = match (user.node_name(), ns, asked) {
        (Some(node), Some(ns), Some(name)) if t.res.strategy.node_reads_when_referenced() => {
            reg.node_references(node, t.res, ns, name)
        }
        _ => false,
    };
    auth::authorize(
        user,
        &Attributes {
            verb: if t.sub.as_deref() == Some("binding") {
                "create"
            } else {
                verb
            },
            res: t.res,
            sub: t.sub.as_deref(),
            ns,
            name: t.name.as_deref().or(body_name),
            pod_node: pod_node.as_deref(),
            referenced_by_node,
        },
    )
}

/// GET of one object (or its scale), as JSON or a Table.
fn get_one(
    reg: &Registry,
    t: &Target,
    q: &HashMap<String, String>,
    table: bool,
) -> ApiResult<Response> {
    let (res, ns) = (t.res, t.ns.as_deref());
    let name = t.name.as_deref().unwrap_or_default();
    if t.sub.as_deref() == Some("scale") {
        return Ok(json_value(
            StatusCode::OK,
            &reg.get_scale(res, ns.unwrap_or(""), name)?,
        ));
    }
    let s = reg.get(res, ns, name)?;
    if !table {
        return Ok(json_bytes(StatusCode::OK, s.json.clone()));
    }
    let v = s.value().map_err(|e| ApiError::internal(e.to_string()))?;
    let t = sluice_printers::table(
        res.kind,
        &[v],
        &s.mod_revision.to_string(),
        None,
        jiff::Timestamp::now(),
        include_object(q),
    );
    Ok(json_value(StatusCode::OK, &t))
}

/// Create (and pod binding), update and patch, of an object, its status or its scale.
async fn write(
    reg: &Registry,
    t: &Target,
    verb: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Value,
) -> ApiResult<Response> {
    let (res, ns) = (t.res, t.ns.as_deref());
    let name = t.name.as_deref().unwrap_or_default();
    let sub = t.sub.as_deref();
    let part = if sub == Some("status") {
        Part::Status
    } else {
        Part::Main
    };
    let stored = match verb {
        "create" if sub == Some("binding") => {
            reg.bind_pod(ns.unwrap_or(""), name, &body).await?;
            return Ok(json_value(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ));
        }
        "create" => {
            let s = reg.create(res, ns, body).await?;
            return Ok(json_bytes(StatusCode::CREATED, s.json.clone()));
        }
        "update" if sub == Some("scale") => {
            return Ok(json_value(
                StatusCode::OK,
                &reg.update_scale(res, ns.unwrap_or(""), name, body).await?,
            ))
        }
        "update" => reg.update(res, ns, name, body, part).await?,
        _ => {
            let ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let pt =
                PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media(ct))?;
            if pt == PatchType::Apply && sub != Some("scale") {
                if !q.contains_key("fieldManager") {
                    return Err(ApiError::bad_request(
                        "PATCH request: fieldManager is required for apply requests",
                    ));
                }
                let force = matches!(q.get("force").map(String::as_str), Some("true" | "1"));
                let (s, created) = reg.apply(res, ns, name, body, force, part).await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(json_bytes(code, s.json.clone()));
            }
            if sub == Some("scale") {
                return Ok(json_value(
                    StatusCode::OK,
                    &reg.patch_scale(res, ns.unwrap_or(""), name, pt, body)
                        .await?,
                ));
            }
            reg.patch(res, ns, name, pt, body, part).await?
        }
    };
    Ok(json_bytes(StatusCode::OK, stored.json.clone()))
}

fn json_value(code: StatusCode, v: &Value) -> Response {
    json_bytes(code, v.to_string())
}

fn delete_options(body: &Bytes, q: &HashMap<String, String>) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions::default();
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        o.grace_period_seconds = v.get("gracePeriodSeconds").and_then(|g| g.as_i64());
        o.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(|x| x.as_str())
            .map(str::to_string);
        o.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(|x| x.as_str())
            .map(str::to_string);
        if let Some(orphan) = v.get("orphanDependents").and_then(|o| o.as_bool()) {
            o.propagation = Some(if orphan {
                Propagation::Orphan
            } else {
                Propagation::Background
            });
        }
        if let Some(p) = v.get("propagationPolicy").and_then(|p| p.as_str()) {
            o.propagation = Some(propagation(p)?);
        }
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(propagation(p)?);
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(o)
}

fn propagation(p: &str) -> ApiResult<Propagation> {
    Propagation::parse(p).ok_or_else(|| {
        ApiError::new(422, "Invalid", format!(
            "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
        ))
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

fn list(
    reg: &Registry,
    res: &Resource,
    ns: Option<&str>,
    l: &LabelSelector,
    f: &FieldSelector,
    q: &HashMap<String, String>,
    table: bool,
) -> ApiResult<Response> {
    let (mut items, mut rev) = reg.list(res, ns, l, f);
    if let Some(c) = q.get("continue").filter(|c| !c.is_empty()) {
        let tok: ContinueToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
        items.retain(|s| s.key > tok.start);
        rev = tok.rv;
    }
    let limit = usize::try_from(int_param(q, "limit")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let mut cont = None;
    if limit > 0 && items.len() > limit {
        let last = items[limit - 1].key.clone();
        let remaining = items.len() - limit;
        items.truncate(limit);
        let tok = serde_json::to_vec(&ContinueToken {
            rv: rev,
            start: last,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        cont = Some((
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tok),
            remaining,
        ));
    }
    if table {
        let objs: Vec<Value> = items
            .iter()
            .map(|s| s.value().map_err(|e| ApiError::internal(e.to_string())))
            .collect::<Result<_, _>>()?;
        let t = sluice_printers::table(
            res.kind,
            &objs,
            &rev.to_string(),
            cont.as_ref().map(|c| c.0.as_str()),
            jiff::Timestamp::now(),
            include_object(q),
        );
        return Ok(json_value(StatusCode::OK, &t));
    }
    Ok(list_response(res, &items, rev, cont))
}

/// `<Kind>List` assembled from the stored bytes without re-serializing items.
fn list_response(
    res: &Resource,
    items: &[Arc<Stored>],
    rev: u64,
    cont: Option<(String, usize)>,
) -> Response {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some((c, remaining)) = cont {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(remaining);
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        res.kind,
        res.api_version(),
        meta
    );
    let total: usize = items.iter().map(|s| s.json.len() + 1).sum::<usize>() + head.len() + 2;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(head.as_bytes());
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&s.json);
    }
    out.extend_from_slice(b"]}");
    json_bytes(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let r = |p: &str| match parse_path(p, "x").unwrap() {
            Route::Resource(t) => (t.res.plural, t.ns, t.name, t.sub),
            Route::Discovery(_) => ("discovery", None, None, None),
            Route::Review { rules: false } => ("review", None, None, None),
            Route::Review { rules: true } => ("rules", None, None, None),
        };
        assert_eq!(r("/api/v1/pods"), ("pods", None, None, None));
        assert_eq!(
            r("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
            ("review", None, None, None)
        );
        assert_eq!(
            r("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"),
            ("rules", None, None, None)
        );
        assert_eq!(
            r("/apis/authorization.k8s.io/v1"),
            ("discovery", None, None, None)
        );
        assert_eq!(r("/api/v1/namespaces"), ("namespaces", None, None, None));
        assert_eq!(
            r("/api/v1/namespaces/default"),
            ("namespaces", None, Some("default".into()), None)
        );
        assert_eq!(
            r("/api/v1/namespaces/default/status"),
            (
                "namespaces",
                None,
                Some("default".into()),
                Some("status".into())
            )
        );
        assert_eq!(
            r("/api/v1/namespaces/default/pods"),
            ("pods", Some("default".into()), None, None)
        );
        assert_eq!(
            r("/api/v1/namespaces/default/pods/web/status"),
            (
                "pods",
                Some("default".into()),
                Some("web".into()),
                Some("status".into())
            )
        );
        assert_eq!(
            r("/apis/apps/v1/namespaces/a/deployments/d/scale"),
            (
                "deployments",
                Some("a".into()),
                Some("d".into()),
                Some("scale".into())
            )
        );
        assert_eq!(
            r("/api/v1/namespaces/default/pods/web/log"),
            (
                "pods",
                Some("default".into()),
                Some("web".into()),
                Some("log".into())
            )
        );
        assert_eq!(
            r("/api/v1/namespaces/default/pods/web/exec"),
            (
                "pods",
                Some("default".into()),
                Some("web".into()),
                Some("exec".into())
            )
        );
        assert!(parse_path("/api/v1/namespaces/d/services/s/log", "x").is_err());
        assert_eq!(
            r("/api/v1/nodes/n1/status"),
            ("nodes", None, Some("n1".into()), Some("status".into()))
        );
        assert_eq!(
            r("/apis/discovery.k8s.io/v1"),
            ("discovery", None, None, None)
        );
        assert!(parse_path("/api/v1/namespaces/default/widgets", "x").is_err());
        assert!(parse_path("/api/v1/pods/x", "x").is_err());
        assert!(parse_path("/api/v1/namespaces/d/services/s/scale", "x").is_err());
        assert!(parse_path("/apis/apps/v2/deployments", "x").is_err());
    }

    #[test]
    fn table_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_table(&h));
        h.insert(
            http::header::ACCEPT,
            "application/json, */*".parse().unwrap(),
        );
        assert!(!wants_table(&h));
    }
}
