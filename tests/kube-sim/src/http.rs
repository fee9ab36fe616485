//! The HTTP face of the emulator: routing, discovery, OpenAPI v3, watch streams, tables and
//! pod logs, over HTTP/1.1 on loopback.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{Api, Query, Target, percent_decode};
use crate::error::{ApiError, ApiResult};
use crate::faults::{FaultRule, Faults};
use crate::kubelet::Kubelet;
use crate::openapi_docs;
use crate::store::{EventType, Since};
use crate::table;

pub type Body = BoxBody<Bytes, Infallible>;

/// How many requests each (user agent, verb, API group, resource) made.
pub type AuditLog =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String, String, String), u64>>>;

/// Everything a request handler needs.
pub struct Shared {
    pub api: Arc<Api>,
    /// Every (user agent, verb, group, resource) requested, for RBAC checks.
    pub audit: AuditLog,
    pub faults: Arc<Faults>,
    pub kubelet: Arc<Kubelet>,
    pub address: String,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(value).expect("values serialize")))
        .expect("valid response")
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.code, &error.to_status());
    // The API server turns a status's retry delay into the header clients wait by.
    if let Some(delay) = error.details["retryAfterSeconds"].as_u64() {
        response.headers_mut().insert("retry-after", delay.into());
    }
    response
}

/// Which verb a request is, for fault rules and discovery.
fn verb_of(method: &Method, has_name: bool, query: &Query) -> &'static str {
    match (method, has_name) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if query.watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let raw_query = request.uri().query().map(str::to_owned);
    let accept = request
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let agent = request
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let mut body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(error_response(&ApiError::bad_request(
                "could not read the request body",
            )));
        }
    };
    // Protobuf bodies of built-in kinds become the JSON everything else works on; what is
    // not decoded is refused (415) with what to send instead.
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        match crate::protobuf::decode(&body) {
            Ok(object) => {
                body = Bytes::from(serde_json::to_vec(&object).expect("values serialize"));
                content_type = "application/json".into();
            }
            Err(message) => {
                return Ok(error_response(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    &message,
                )));
            }
        }
    }
    tracing::debug!(%method, %path, query = raw_query.as_deref().unwrap_or_default(), %content_type, body = %String::from_utf8_lossy(&body[..body.len().min(2048)]), "request");
    let parts = Parts {
        method: &method,
        path: &path,
        raw_query: raw_query.as_deref(),
        accept: &accept,
        content_type: &content_type,
        agent: &agent,
        body: &body,
    };
    let response = route(&shared, &parts).await;
    Ok(response.unwrap_or_else(|e| error_response(&e)))
}

/// What routing needs of a request.
struct Parts<'a> {
    method: &'a Method,
    path: &'a str,
    raw_query: Option<&'a str>,
    accept: &'a str,
    content_type: &'a str,
    agent: &'a str,
    body: &'a Bytes,
}

async fn route(shared: &Arc<Shared>, parts: &Parts<'_>) -> ApiResult<Response<Body>> {
    let Parts {
        method,
        path,
        raw_query,
        accept,
        content_type,
        agent,
        body,
    } = *parts;
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["version"] => return Ok(json_response(200, &version())),
        ["healthz" | "readyz" | "livez"] => {
            return Ok(Response::builder()
                .status(200)
                .body(full("ok"))
                .expect("valid response"));
        }
        ["api"] => {
            return Ok(json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.address}]}),
            ));
        }
        ["apis"] => return Ok(json_response(200, &groups(&shared.api))),
        ["apis", group] => {
            let list = groups(&shared.api);
            return list["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == *group))
                .map(|g| {
                    let mut g = g.clone();
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(200, &g)
                })
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["api", "v1"] => return resources(&shared.api, "", "v1"),
        ["apis", group, version] => return resources(&shared.api, group, version),
        ["openapi", "v3"] => return Ok(json_response(200, &openapi_docs::index(&shared.api))),
        ["openapi", "v3", rest @ ..] => {
            let gv = rest.join("/");
            return openapi_docs::document(&shared.api, &gv)
                .map(|doc| json_response(200, &doc))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                });
        }
        ["openapi", "v2"] => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "OpenAPI v2 is not served; use /openapi/v3",
            ));
        }
        ["kube-sim", "faults"] if method == Method::POST => {
            let rule: FaultRule = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid fault rule: {e}")))?;
            shared.faults.add(rule);
            return Ok(json_response(200, &json!({"status": "Success"})));
        }
        ["kube-sim", "stats"] => {
            let audit = shared.audit.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<Value> = audit
                .iter()
                .map(|((agent, verb, group, resource), count)| json!({"agent": agent, "verb": verb, "group": group, "resource": resource, "count": count}))
                .collect();
            return Ok(json_response(200, &json!({"requests": rows})));
        }
        ["kube-sim", "close-watches"] if method == Method::POST => {
            shared.faults.close_watches();
            return Ok(json_response(200, &json!({"status": "Success"})));
        }
        ["kube-sim", "expire-resource-versions"] if method == Method::POST => {
            shared.api.lock().store.compact();
            return Ok(json_response(200, &json!({"status": "Success"})));
        }
        _ => {}
    }
    let (group, version, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    // namespaces/{ns}/{plural}[/{name}[/{sub}]] or {plural}[/{name}[/{sub}]]
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if shared
                .api
                .lock()
                .registry
                .get(group, version, plural)
                .is_some_and(|t| t.namespaced) =>
        {
            (
                Some(*ns),
                std::iter::once(*plural)
                    .chain(tail.iter().copied())
                    .collect::<Vec<_>>(),
            )
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let mut query = Query::parse(raw_query)?;
    query.as_table = accept.contains("as=Table");
    let verb = verb_of(method, name.is_some(), &query);
    let fault_resource = match sub {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_owned(),
    };
    let verdict = shared.faults.check(verb, &fault_resource);
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    if let Some(hold) = &verdict.hold {
        hold.wait().await;
    }
    if let Some(code) = verdict.status {
        let reason = match code {
            409 => "Conflict",
            410 => "Expired",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        return Err(ApiError::new(
            code,
            reason,
            format!("injected fault: {verb} {fault_resource} answered {code}"),
        ));
    }
    let target = shared
        .api
        .target(group, version, plural, namespace, name, sub)?;
    if let Some(selector) = &mut query.field_selector {
        selector
            .resolve(&crate::api::field_labels(&target.ty))
            .map_err(ApiError::bad_request)?;
    }
    shared
        .audit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((
            agent.to_owned(),
            verb.to_owned(),
            group.to_owned(),
            fault_resource.clone(),
        ))
        .and_modify(|n| *n += 1)
        .or_insert(1);
    // The all-namespaces path of a namespaced type serves only list and watch: other
    // methods on it are 405, a name under it is no path at all (404).
    if target.ty.namespaced && namespace.is_none() {
        if name.is_some() {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        if !matches!(verb, "list" | "watch") {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    }
    let include = raw_query
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("includeObject="))
        .unwrap_or("Metadata")
        .to_owned();
    let parse_body = || -> ApiResult<Value> {
        serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
    };
    match (method, sub) {
        (&Method::GET, Some("log")) => pod_log(shared, &target, &query).await,
        (&Method::GET, _) if query.watch => Ok(watch(shared, target, query)),
        (&Method::GET, _) if name.is_some() => {
            let object = shared.api.get(&target)?;
            if query.as_table {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                return Ok(json_response(
                    200,
                    &table::table(&target.ty, &[(*object).clone()], &rv, &include),
                ));
            }
            Ok(json_response(200, &object))
        }
        (&Method::GET, _) if query.as_table => {
            let list = shared.api.list(&target, &query)?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let rv = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            let mut table = table::table(&target.ty, &items, rv, &include);
            if let Some(token) = list["metadata"].get("continue") {
                table["metadata"]["continue"] = token.clone();
            }
            Ok(json_response(200, &table))
        }
        (&Method::GET, _) => Ok(Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(full(shared.api.list_json(&target, &query)?))
            .expect("valid response")),
        (&Method::POST, None) => {
            let created = shared.api.create(&target, parse_body()?, &query)?;
            Ok(json_response(201, &created))
        }
        (&Method::PUT, _) => {
            let updated = shared.api.update(&target, parse_body()?, &query)?;
            Ok(json_response(200, &updated))
        }
        (&Method::PATCH, _) => {
            let existed = shared.api.get(&target).is_ok();
            let patched = shared.api.patch(&target, content_type, body, &query)?;
            Ok(json_response(if existed { 200 } else { 201 }, &patched))
        }
        (&Method::DELETE, _) if name.is_some() => {
            let options = (!body.is_empty()).then(parse_body).transpose()?;
            Ok(json_response(
                200,
                &shared.api.delete(&target, &query, options.as_ref())?,
            ))
        }
        (&Method::DELETE, _) => Ok(json_response(
            200,
            &shared.api.delete_collection(&target, &query)?,
        )),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-kube-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn groups(api: &Api) -> Value {
    let st = api.lock();
    let mut names: Vec<(String, String)> = st
        .registry
        .all()
        .filter(|t| !t.group.is_empty())
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    names.sort();
    names.dedup();
    let groups: Vec<Value> = names
        .iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resources(api: &Api, group: &str, version: &str) -> ApiResult<Response<Body>> {
    let st = api.lock();
    let types: Vec<_> = st
        .registry
        .all()
        .filter(|t| t.group == group && t.version == version)
        .cloned()
        .collect();
    if types.is_empty() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let mut resources = Vec::new();
    for t in types {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": t.short_names,
            "categories": t.categories,
        }));
        if t.has_status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        for sub in &t.extra_subresources {
            resources.push(json!({"name": format!("{}/{sub}", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get"]}));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    ))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": kind, "object": object})).expect("events serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch stream: replays what the client missed (or the current state), then live changes,
/// with bookmarks when asked, until its timeout or a fault closes it.
fn watch(shared: &Arc<Shared>, target: Target, query: Query) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let key = target.ty.key();
    let matches = {
        let query = query.clone();
        let namespace = target.namespace.clone();
        let name = target.name.clone();
        move |object: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
                && name
                    .as_deref()
                    .is_none_or(|n| object["metadata"]["name"].as_str() == Some(n))
                && query
                    .label_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(object))
                && query
                    .field_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(object))
        }
    };
    // Subscribe before reading the history so nothing falls between the two.
    let (mut live, initial, start_rv) = {
        let st = shared.api.lock();
        let live = st.store.subscribe();
        let current = st.store.resource_version();
        let since = query
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv > 0);
        // A version the store cannot resume from ends the watch with 410 at once. Too old is
        // what the API server says too; too new (a version from before a restart that lost the
        // store) it answers with a 504 "Too large resource version", which clients retry with
        // the same version forever. 410 makes them relist, which is the recovery that works.
        let initial: Result<Vec<(String, Value)>, ApiError> = match since {
            Some(rv) if !query.send_initial_events => match st.store.events_since(rv) {
                Since::Events(events) => Ok(events
                    .iter()
                    .filter(|e| e.key == key && matches(&e.object))
                    .map(|e| (e.kind.as_str().to_owned(), (*e.object).clone()))
                    .collect()),
                Since::TooOld => Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    st.store.compacted()
                ))),
                Since::TooLarge => Err(ApiError::gone(format!(
                    "Too large resource version: {rv}, current: {current}"
                ))),
            },
            _ => Ok(st
                .store
                .list(&key, target.namespace.as_deref())
                .iter()
                .filter(|o| matches(o))
                .map(|o| ("ADDED".to_owned(), (**o).clone()))
                .collect()),
        };
        (
            live,
            initial,
            since
                .filter(|_| !query.send_initial_events)
                .unwrap_or(current)
                .max(current),
        )
    };
    let mut closures = shared.faults.watch_closures();
    closures.mark_unchanged();
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(1800));
    let bookmarks = query.allow_bookmarks;
    let initial_end_bookmark = query.send_initial_events && bookmarks;
    let api_version = target.ty.api_version();
    let kind = target.ty.kind.clone();
    tokio::spawn(async move {
        let bookmark = |rv: u64, initial_end: bool| {
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            watch_line(
                "BOOKMARK",
                &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}),
            )
        };
        let mut last_rv = start_rv;
        match initial {
            Err(gone) => {
                let _ = tx.send(watch_line("ERROR", &gone.to_status())).await;
                return;
            }
            Ok(events) => {
                for (event_kind, object) in events {
                    if let Some(rv) = object["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                    {
                        last_rv = last_rv.max(rv);
                    }
                    if tx.send(watch_line(&event_kind, &object)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if initial_end_bookmark && tx.send(bookmark(last_rv, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = closures.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                event = live.recv() => match event {
                    Ok(event) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if event.key != key || !matches(&event.object) {
                            continue;
                        }
                        let kind = match event.kind {
                            EventType::Added => "ADDED",
                            EventType::Modified => "MODIFIED",
                            EventType::Deleted => "DELETED",
                        };
                        if tx.send(watch_line(kind, &event.object)).await.is_err() {
                            return;
                        }
                    }
                    // A watcher that fell behind is closed; its client resumes from its last version.
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream_from(rx).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn pod_log(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
) -> ApiResult<Response<Body>> {
    let pod = shared.api.get(target)?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let container = match &query.container {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {}",
                target.name.as_deref().unwrap_or_default()
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: {containers:?}",
                target.name.as_deref().unwrap_or_default()
            )));
        }
    };
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(text) = shared.kubelet.log(&uid, &container) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{}\" is waiting to start",
            target.name.as_deref().unwrap_or_default()
        )));
    };
    let text = match query.tail_lines {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].iter().map(|l| format!("{l}\n")).collect()
        }
        None => text,
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(full(text))
        .expect("valid response"))
}
