//! The API server against slow, silent and hostile clients, over real sockets: TLS handshakes
//! that never finish, half-sent headers, bodies shorter than their Content-Length, bodies over
//! the limit, floods of connections without a token, in-flight limits — and that an
//! authenticated request is answered quickly while all of that is going on. Also the HTTP-level
//! error answers (every one a `Status`), query parameters the apiserver refuses, and the data
//! directory's modes.
//!
//! Each test starts its own `sluice-control` in-process on 127.0.0.1:0 with short deadlines.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use sluice_control::conn::Limits;
use tokio::io::AsyncWriteExt;

mod common;

use common::*;

/// Limits short enough for tests.
fn quick() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        unauthenticated_idle_timeout: Duration::from_secs(1),
        max_unauthenticated_connections: 50,
        request_timeout: Duration::from_secs(1),
        max_request_body_bytes: 64 * 1024,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_cut_off_and_real_ones_still_answered() {
    let f = start(quick()).await;

    // TCP without a TLS handshake.
    let mut raw = f.tcp().await;
    // TLS, then nothing.
    let mut idle_tls = f.tls().await;
    // Half a request head.
    let mut half = f.tls().await;
    half.write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    half.flush().await.unwrap();

    // While they are held, an authenticated request is answered at once.
    assert!(timed_get(&f).await < Duration::from_millis(500));

    let t = closed_within(&mut raw, Duration::from_secs(5)).await;
    assert!(t.is_some(), "no handshake: still open after 5 s");
    let t = closed_within(&mut idle_tls, Duration::from_secs(5)).await;
    assert!(
        t.is_some(),
        "idle TLS without a token: still open after 5 s"
    );
    let t = closed_within(&mut half, Duration::from_secs(5)).await;
    assert!(t.is_some(), "half-sent headers: still open after 5 s");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_times_out_with_a_status() {
    let f = start(quick()).await;
    let mut s = f.tls().await;
    let head = format!(
        "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"metadata\":",
        f.admin
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let r = read_resp(&mut s).await.expect("a response");
    let v = r.status(504, "Timeout");
    assert!(
        v["message"].as_str().unwrap().contains("request body"),
        "{v}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_statuses() {
    let f = start(quick()).await;
    // Declared too large: refused before reading.
    let big = vec![b' '; 64 * 1024 + 1];
    let r = f
        .admin("POST", "/api/v1/namespaces", Some("application/json"), &big)
        .await;
    let v = r.status(413, "RequestEntityTooLarge");
    assert_eq!(v["message"], "Request entity too large: limit is 65536");
    // Chunked, no length: cut off while reading.
    let mut s = f.tls().await;
    let head = format!(
        "POST /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        f.admin
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..20 {
        let chunk = vec![b' '; 8192];
        let _ = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = s.write_all(&chunk).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let r = read_resp(&mut s).await.expect("a response");
    r.status(413, "RequestEntityTooLarge");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_oldest_first() {
    let f = start(Limits {
        unauthenticated_idle_timeout: Duration::from_secs(30),
        ..quick()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(f.tls().await);
    }
    // The server keeps at most 50 of them; the oldest went first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.server.connections.stats().unauthenticated > 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = f.server.connections.stats();
    assert!(stats.unauthenticated <= 50, "{stats:?}");
    assert!(stats.evicted >= 70, "{stats:?}");
    assert!(
        closed_within(&mut held[0], Duration::from_secs(3))
            .await
            .is_some(),
        "the oldest connection is closed"
    );
    assert!(
        closed_within(&mut held[119], Duration::from_millis(300))
            .await
            .is_none(),
        "the newest connection is kept"
    );
    // A real client still gets in, and its connection is not evicted by later floods.
    let mut s = f.tls().await;
    let auth = format!("Authorization: Bearer {}", f.admin);
    send(&mut s, "GET", "/api/v1/namespaces/default", &[&auth], b"").await;
    assert_eq!(read_resp(&mut s).await.unwrap().code, 200);
    for _ in 0..60 {
        held.push(f.tls().await);
    }
    send(&mut s, "GET", "/api/v1/namespaces/default", &[&auth], b"").await;
    assert_eq!(
        read_resp(&mut s).await.unwrap().code,
        200,
        "kept across a flood"
    );
    assert!(timed_get(&f).await < Duration::from_millis(500));
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_closes_the_connection() {
    let f = start(quick()).await;
    let mut s = f.tls().await;
    send(
        &mut s,
        "GET",
        "/api/v1/namespaces",
        &["Authorization: Bearer nope"],
        b"",
    )
    .await;
    read_resp(&mut s).await.unwrap().status(401, "Unauthorized");
    assert!(closed_within(&mut s, Duration::from_secs(3))
        .await
        .is_some());
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watches_outlive_the_idle_and_header_deadlines() {
    let f = start(quick()).await;
    let mut s = f.tls().await;
    let auth = format!("Authorization: Bearer {}", f.admin);
    send(
        &mut s,
        "GET",
        "/api/v1/namespaces/default/services?watch=true&resourceVersion=1&timeoutSeconds=4",
        &[&auth],
        b"",
    )
    .await;
    let t0 = Instant::now();
    let r = read_resp(&mut s)
        .await
        .expect("the watch ends with a response");
    assert_eq!(r.code, 200);
    // It ran until its own timeoutSeconds, past the 1 s header and 2 s idle deadlines.
    assert!(
        t0.elapsed() >= Duration::from_millis(3800),
        "{:?}",
        t0.elapsed()
    );
    // An idle authenticated keep-alive connection is closed after the idle deadline.
    send(&mut s, "GET", "/api/v1/namespaces/default", &[&auth], b"").await;
    assert_eq!(read_resp(&mut s).await.unwrap().code, 200);
    assert!(closed_within(&mut s, Duration::from_secs(5))
        .await
        .is_some());
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_limits_answer_429_with_retry_after() {
    let f = start(Limits {
        max_mutating_requests_inflight: 1,
        request_timeout: Duration::from_secs(5),
        ..quick()
    })
    .await;
    let token = sluice_control::auth::mint_token(
        &sluice_control::tokens_path(&f.data),
        &sluice_control::auth::User::node("n1"),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    // A node's create whose body trickles in holds the only mutating permit.
    let mut slow = f.tls().await;
    let head = format!(
        "POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = f
        .req(
            "POST",
            "/api/v1/nodes",
            &[&auth, "Content-Type: application/json"],
            br#"{"metadata":{"name":"n1"}}"#,
        )
        .await;
    let v = r.status(429, "TooManyRequests");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(v["details"]["retryAfterSeconds"], 1);
    // Reads have their own limit, and administrators are exempt.
    let r = f.req("GET", "/api/v1/nodes", &[&auth], b"").await;
    assert_eq!(r.code, 200);
    assert!(timed_get(&f).await < Duration::from_millis(500));
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_level_errors_are_statuses() {
    let f = start(quick()).await;
    // Method not allowed on a fixed route.
    f.req("POST", "/healthz", &[], b"")
        .await
        .status(405, "MethodNotAllowed");
    // A garbage Content-Type is not taken for JSON.
    for ct in [";;;", "json", "application/", "/json", "text/plain"] {
        f.admin(
            "POST",
            "/api/v1/namespaces",
            Some(ct),
            br#"{"metadata":{"name":"x"}}"#,
        )
        .await
        .status(415, "UnsupportedMediaType");
    }
    // Type meta and metadata of the wrong JSON type are decode errors.
    for body in [
        r#"{"kind":5,"metadata":{"name":"x"}}"#,
        r#"{"apiVersion":["v1"],"metadata":{"name":"x"}}"#,
        r#"{"metadata":"oops"}"#,
        r#"{"metadata":7}"#,
        r#"[1,2]"#,
        r#"{"metadata":{"name":"x"}"#,
    ] {
        let r = f
            .admin(
                "POST",
                "/api/v1/namespaces",
                Some("application/json"),
                body.as_bytes(),
            )
            .await;
        r.status(400, "BadRequest");
    }
    // Query parameters the apiserver refuses.
    for q in [
        "limit=abc",
        "limit=-1",
        "resourceVersion=abc",
        "resourceVersion=-5",
        "watch=true&timeoutSeconds=x",
        "watch=true&resourceVersion=1.5",
    ] {
        f.admin("GET", &format!("/api/v1/namespaces?{q}"), None, b"")
            .await
            .status(400, "BadRequest");
    }
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_version_from_the_future_is_refused_after_a_short_wait() {
    let f = start(quick()).await;
    for path in [
        "/api/v1/namespaces?watch=true&resourceVersion=99999999",
        "/api/v1/namespaces?resourceVersion=99999999",
        "/api/v1/namespaces/default?resourceVersion=99999999",
    ] {
        let t0 = Instant::now();
        let r = f.admin("GET", path, None, b"").await;
        let v = r.status(504, "Timeout");
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "{path}: {:?}",
            t0.elapsed()
        );
        assert_eq!(
            v["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("Too large resource version: 99999999, current: "),
            "{v}"
        );
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    }
    // A revision reached while waiting is served.
    let rv: u64 = f.admin("GET", "/api/v1/namespaces", None, b"").await.json()["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reg = f.server.registry.clone();
    let res = sluice_control::resources::find("", "v1", "namespaces").unwrap();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        reg.create(
            res,
            None,
            serde_json::json!({"metadata": {"name": "later"}}),
        )
        .await
        .unwrap();
    });
    let r = f
        .admin(
            "GET",
            &format!("/api/v1/namespaces?resourceVersion={}", rv + 1),
            None,
            b"",
        )
        .await;
    assert_eq!(r.code, 200);
    later.await.unwrap();
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private() {
    let f = start(quick()).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&f.data), 0o700);
    for file in [
        "store.redb",
        "tokens.json",
        "ca.key",
        "server.key",
        "admin.kubeconfig",
    ] {
        assert_eq!(mode(&f.data.join(file)), 0o600, "{file}");
    }
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_selectors_are_400_on_every_verb_and_delete_nothing() {
    let f = start(quick()).await;
    // Its own namespace: `default` also holds the API server's `kubernetes` Service.
    let r = f
        .admin(
            "POST",
            "/api/v1/namespaces",
            Some("application/json"),
            br#"{"metadata":{"name":"sel"}}"#,
        )
        .await;
    assert_eq!(r.code, 201);
    for name in ["web", "api"] {
        let body = format!(
            r#"{{"metadata":{{"name":"{name}","labels":{{"app":"{name}"}}}},"spec":{{"ports":[{{"port":80}}]}}}}"#
        );
        let r = f
            .admin(
                "POST",
                "/api/v1/namespaces/sel/services",
                Some("application/json"),
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let bad_labels = [
        "!app=web",
        "app=web,",
        "a b c",
        "x in (a",
        "x in a",
        "=foo",
        "app==web==x",
        "app=we b",
        "k!",
        "x>y",
        "-bad=1",
        "a=b)",
        "(a=b)",
    ];
    let bad_fields = [
        "metadata.name",
        "metadata.name=a=b",
        "spec.nodeName=x",
        r"metadata.name=a\x",
        "=x",
    ];
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    for (param, values) in [
        ("labelSelector", &bad_labels[..]),
        ("fieldSelector", &bad_fields[..]),
    ] {
        for v in values {
            let q = format!("{param}={}", enc(v));
            for (method, path) in [
                ("GET", format!("/api/v1/namespaces/sel/services?{q}")),
                ("GET", format!("/api/v1/services?{q}")),
                (
                    "GET",
                    format!("/api/v1/namespaces/sel/services?watch=true&{q}"),
                ),
                ("DELETE", format!("/api/v1/namespaces/sel/services?{q}")),
            ] {
                let r = f.admin(method, &path, None, b"").await;
                let s = r.status(400, "BadRequest");
                assert!(
                    !s["message"].as_str().unwrap().is_empty(),
                    "{method} {path}"
                );
            }
        }
    }
    // Nothing was deleted; a valid selector still works.
    let r = f
        .admin("GET", "/api/v1/namespaces/sel/services", None, b"")
        .await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    let r = f
        .admin(
            "DELETE",
            &format!(
                "/api/v1/namespaces/sel/services?labelSelector={}",
                enc("app!=web")
            ),
            None,
            b"",
        )
        .await;
    assert_eq!(r.code, 200);
    let r = f
        .admin("GET", "/api/v1/namespaces/sel/services", None, b"")
        .await;
    let names: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["web"]);
    f.server.shutdown().await;
}
