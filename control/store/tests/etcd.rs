//! The etcd backend against real etcd processes (Debian's `etcd-server`): the same contract as
//! the redb backend, plus what only a shared store has — several stores (API servers) on one
//! cluster, consistent reads across them, member failures.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sluice_store::testing::{skip, EtcdCluster};
use sluice_store::{EtcdOptions, EtcdStore, EventType, Store, StoreError, Stored};

fn cluster(dir: &std::path::Path, n: usize) -> Option<EtcdCluster> {
    match EtcdCluster::start(dir, n) {
        Ok(c) => Some(c),
        Err(e) if e.contains("not installed") => {
            skip(&e);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn opts(c: &EtcdCluster) -> EtcdOptions {
    EtcdOptions {
        endpoints: c.endpoints(),
        compaction_interval: None,
        request_timeout: Duration::from_secs(3),
        ..EtcdOptions::default()
    }
}

fn obj(name: &str, v: i64) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": v}})
}

fn rv(s: &Stored) -> u64 {
    s.value().unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_preconditions_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(dir.path(), 1) else {
        return;
    };
    let s = EtcdStore::open(opts(&c)).await.unwrap();
    let a = s.create("/registry/r/a".into(), obj("a", 1)).await.unwrap();
    let b = s.create("/registry/r/b".into(), obj("b", 1)).await.unwrap();
    assert!(b.mod_revision > a.mod_revision);
    assert_eq!(rv(&a), a.mod_revision);
    // The write is in the cache when the call returns.
    assert_eq!(s.get("/registry/r/b").unwrap().mod_revision, b.mod_revision);
    assert!(matches!(
        s.create("/registry/r/a".into(), obj("a", 1)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.update("/registry/r/x".into(), obj("x", 1), None).await,
        Err(StoreError::NotFound { .. })
    ));
    let before = s.revision();
    match s.update("/registry/r/a".into(), obj("a", 2), Some(1)).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (1, a.mod_revision)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A failed precondition consumes no revision.
    let (_, now) = (s.list("/registry/r/"), s.fresh().await.unwrap());
    assert_eq!(now, before);
    let a2 = s
        .update("/registry/r/a".into(), obj("a", 2), Some(a.mod_revision))
        .await
        .unwrap();
    assert_eq!(a2.create_revision, a.mod_revision);
    assert_eq!(rv(&a2), a2.mod_revision);
    let (items, rev) = s.list("/registry/r/");
    assert_eq!(rev, a2.mod_revision);
    assert_eq!(
        items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["/registry/r/a", "/registry/r/b"]
    );
    assert!(matches!(
        s.delete("/registry/r/a".into(), Some(a.mod_revision)).await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = s
        .delete("/registry/r/a".into(), Some(a2.mod_revision))
        .await
        .unwrap();
    assert!(gone.mod_revision > a2.mod_revision);
    assert_eq!(rv(&gone), gone.mod_revision);
    assert_eq!(gone.value().unwrap()["data"]["v"], 2);
    assert!(s.get("/registry/r/a").is_none());
    assert!(matches!(
        s.delete("/registry/r/a".into(), None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create("/registry/r/bad".into(), json!([1])).await,
        Err(StoreError::NotAnObject { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_then_follows_with_previous_state() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(dir.path(), 1) else {
        return;
    };
    let s = EtcdStore::open(opts(&c)).await.unwrap();
    let a = s.create("/registry/r/a".into(), obj("a", 1)).await.unwrap();
    s.create("/registry/q/z".into(), obj("z", 1)).await.unwrap();
    let a2 = s
        .update("/registry/r/a".into(), obj("a", 2), None)
        .await
        .unwrap();
    let mut w = s.watch("/registry/r/", a.mod_revision).unwrap();
    let gone = s.delete("/registry/r/a".into(), None).await.unwrap();
    s.create("/registry/q/y".into(), obj("y", 1)).await.unwrap();
    let b = s.create("/registry/r/b".into(), obj("b", 1)).await.unwrap();
    let mut got = vec![];
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rv(&ev.object), ev.revision());
        got.push((
            ev.event_type,
            ev.object.key.clone(),
            ev.revision(),
            ev.prev.as_ref().map(|p| p.mod_revision),
        ));
    }
    assert_eq!(
        got,
        [
            (
                EventType::Modified,
                "/registry/r/a".to_string(),
                a2.mod_revision,
                Some(a.mod_revision)
            ),
            (
                EventType::Deleted,
                "/registry/r/a".to_string(),
                gone.mod_revision,
                Some(a2.mod_revision)
            ),
            (
                EventType::Added,
                "/registry/r/b".to_string(),
                b.mod_revision,
                None
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_share_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(dir.path(), 1) else {
        return;
    };
    let a = Arc::new(EtcdStore::open(opts(&c)).await.unwrap());
    let b = Arc::new(EtcdStore::open(opts(&c)).await.unwrap());
    let mut wb = b.watch("/registry/r/", b.revision()).unwrap();

    // A write through one is a consistent read on the other at once, and reaches its watchers.
    let x = a.create("/registry/r/x".into(), obj("x", 1)).await.unwrap();
    b.fresh().await.unwrap();
    assert_eq!(b.get("/registry/r/x").unwrap().json, x.json);
    let ev = tokio::time::timeout(Duration::from_secs(5), wb.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.event_type, ev.revision()),
        (EventType::Added, x.mod_revision)
    );

    // Racing creates of one key through both: exactly one wins.
    let mut wins = 0;
    for i in 0..20 {
        let key = format!("/registry/r/race-{i}");
        let (ra, rb) = tokio::join!(
            a.create(key.clone(), obj("a", i)),
            b.create(key.clone(), obj("b", i))
        );
        let ok = [ra.is_ok(), rb.is_ok()];
        assert_eq!(ok.iter().filter(|o| **o).count(), 1, "{key}: {ok:?}");
        for r in [ra, rb] {
            match r {
                Ok(_) => wins += 1,
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(wins, 20);

    // Racing updates from the same revision: exactly one wins, the other conflicts.
    let base = a.get("/registry/r/x").unwrap().mod_revision;
    let (ra, rb) = tokio::join!(
        a.update("/registry/r/x".into(), obj("x", 2), Some(base)),
        b.update("/registry/r/x".into(), obj("x", 3), Some(base))
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(StoreError::Conflict { .. })),
        "{loser:?}"
    );

    // Many concurrent writers through both stores: unique revisions, every one in both caches.
    let mut tasks = vec![];
    for i in 0..100 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.create(format!("/registry/m/{i:03}"), obj("m", i))
                .await
                .unwrap()
                .mod_revision
        }));
    }
    let mut revs = vec![];
    for t in tasks {
        revs.push(t.await.unwrap());
    }
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 100);
    a.fresh().await.unwrap();
    b.fresh().await.unwrap();
    assert_eq!(a.list("/registry/m/").0.len(), 100);
    assert_eq!(b.list("/registry/m/").0, a.list("/registry/m/").0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_finds_every_object_at_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(dir.path(), 1) else {
        return;
    };
    let mut made = vec![];
    {
        let s = EtcdStore::open(EtcdOptions {
            prefix: "/sluice/t1".into(),
            ..opts(&c)
        })
        .await
        .unwrap();
        for i in 0..1200 {
            // More than one listing page.
            made.push(
                s.create(format!("/registry/p/{i:04}"), obj("p", i))
                    .await
                    .unwrap(),
            );
        }
    }
    let s = EtcdStore::open(EtcdOptions {
        prefix: "/sluice/t1".into(),
        history: 1000,
        ..opts(&c)
    })
    .await
    .unwrap();
    let (items, rev) = s.list("/registry/p/");
    assert_eq!(rev, made.last().unwrap().mod_revision);
    assert_eq!(items.len(), made.len());
    for (a, b) in items.iter().zip(&made) {
        assert_eq!(**a, **b);
    }
    // A watcher resuming here from a revision it got before the restart misses nothing: the
    // reopened cache holds etcd's recent history.
    let mut w = s.watch("/registry/p/", made[1190].mod_revision).unwrap();
    for want in &made[1191..] {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((ev.event_type, &ev.object), (EventType::Added, want));
    }
    // Further back than the history kept is 410 Gone, as before.
    assert!(matches!(
        s.watch("/registry/p/", made[0].mod_revision),
        Err(StoreError::Compacted { .. })
    ));

    // Another prefix is another cluster's: nothing of this one shows there.
    let other = EtcdStore::open(EtcdOptions {
        prefix: "/sluice/t2".into(),
        ..opts(&c)
    })
    .await
    .unwrap();
    assert!(other.list("/registry/").0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_is_shared_and_old_revisions_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(dir.path(), 1) else {
        return;
    };
    let o = EtcdOptions {
        compaction_interval: Some(Duration::from_millis(700)),
        ..opts(&c)
    };
    let a = EtcdStore::open(o.clone()).await.unwrap();
    let _b = EtcdStore::open(o).await.unwrap();
    let first = a.create("/registry/r/a".into(), obj("a", 1)).await.unwrap();
    for i in 2..10 {
        a.update("/registry/r/a".into(), obj("a", i), None)
            .await
            .unwrap();
    }
    // Two rounds later the revision of the first write is compacted in etcd itself.
    let mut kv = etcd_client::Client::connect(c.endpoints(), None)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let old = kv
            .get(
                "/registry/r/a",
                Some(etcd_client::GetOptions::new().with_revision(first.mod_revision as i64)),
            )
            .await;
        if let Err(e) = old {
            assert!(e.to_string().contains("compacted"), "{e}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Writes keep the revision moving so each round has something to compact.
        a.update("/registry/r/a".into(), obj("a", 0), None)
            .await
            .unwrap();
    }
    // The store still serves and writes.
    a.update("/registry/r/a".into(), obj("a", 99), None)
        .await
        .unwrap();
    assert_eq!(
        a.get("/registry/r/a").unwrap().value().unwrap()["data"]["v"],
        99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_failures_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut c) = cluster(dir.path(), 3) else {
        return;
    };
    // Losing the leader takes etcd an election (a second or more): allow for it, as API
    // servers do.
    let s = Arc::new(
        EtcdStore::open(EtcdOptions {
            request_timeout: Duration::from_secs(10),
            ..opts(&c)
        })
        .await
        .unwrap(),
    );
    let mut w = s.watch("/registry/w/", s.revision()).unwrap();
    let mut acked = vec![];
    let write = |i: usize| {
        let s = s.clone();
        async move {
            s.create(format!("/registry/w/{i:04}"), obj("w", i as i64))
                .await
        }
    };
    for i in 0..20 {
        acked.push(write(i).await.unwrap());
    }
    // One of three down: writes go on. If it was the leader, writes sent before the others
    // notice may fail (etcd: "request timed out, possibly due to previous leader failure"):
    // not acknowledged, so the client retries, as it would against kube-apiserver.
    c.kill(0);
    let t = std::time::Instant::now();
    let mut i = 20;
    let mut failed = 0;
    while acked.len() < 40 {
        match write(i).await {
            Ok(s) => acked.push(s),
            Err(StoreError::Backend(e)) => {
                failed += 1;
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "writes did not go on: {e}"
                );
            }
            Err(e) => panic!("{e}"),
        }
        i += 1;
    }
    println!(
        "one member of three down: 20 writes acknowledged in {:?}, {failed} failed during the failover",
        t.elapsed()
    );
    // Two of three down: no quorum, writes fail with a clean error (no hang, no corruption).
    c.kill(1);
    match write(i).await {
        Err(StoreError::Backend(msg)) => assert!(msg.starts_with("etcd"), "{msg}"),
        other => panic!("expected a backend error without quorum, got {other:?}"),
    }
    // Members back: writes resume.
    c.restart(0, false).unwrap();
    c.restart(1, true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    i += 1;
    while acked.len() < 60 {
        match write(i).await {
            Ok(s) => acked.push(s),
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes did not resume: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        i += 1;
    }
    // Every acknowledged write is there, and the watcher saw each one once, in order.
    s.fresh().await.unwrap();
    let (items, _) = s.list("/registry/w/");
    for a in &acked {
        assert!(items.iter().any(|x| x.key == a.key), "lost {}", a.key);
    }
    let mut seen = vec![];
    while seen.len() < items.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch gap")
            .unwrap()
            .unwrap();
        seen.push(ev.revision());
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "events out of order or repeated");
    let want: Vec<u64> = items.iter().map(|x| x.mod_revision).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(seen, want_sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let c = match EtcdCluster::start_tls(dir.path(), 1) {
        Ok(c) => c,
        Err(e) if e.contains("not installed") => return skip(&e),
        Err(e) => panic!("{e}"),
    };
    let files = c.tls().unwrap().clone();
    assert!(c.endpoints()[0].starts_with("https://"));
    let s = EtcdStore::open(EtcdOptions {
        tls: Some(sluice_store::EtcdTls {
            ca_file: Some(files.ca.clone()),
            cert_file: Some(files.cert.clone()),
            key_file: Some(files.key.clone()),
        }),
        ..opts(&c)
    })
    .await
    .unwrap();
    let a = s.create("/registry/r/a".into(), obj("a", 1)).await.unwrap();
    assert_eq!(s.get("/registry/r/a").unwrap().mod_revision, a.mod_revision);
    // Without a client certificate the member refuses the connection.
    let refused = EtcdStore::open(EtcdOptions {
        tls: Some(sluice_store::EtcdTls {
            ca_file: Some(files.ca.clone()),
            cert_file: None,
            key_file: None,
        }),
        request_timeout: Duration::from_secs(2),
        ..opts(&c)
    })
    .await;
    assert!(refused.is_err(), "opened without a client certificate");
    // Half a key pair is a configuration error, said as such.
    let half = EtcdStore::open(EtcdOptions {
        tls: Some(sluice_store::EtcdTls {
            ca_file: Some(files.ca),
            cert_file: Some(files.cert),
            key_file: None,
        }),
        ..opts(&c)
    })
    .await;
    match half {
        Err(StoreError::Backend(m)) => assert!(m.contains("both a certificate and a key"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
