use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::WatchError;

fn obj(name: &str, v: i64) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": v}})
}

fn rv(s: &Stored) -> String {
    s.value().unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn mem() -> RedbStore {
    RedbStore::in_memory(StoreOptions::default()).unwrap()
}

#[tokio::test]
async fn revisions_are_monotonic_and_stamped() {
    let s = mem();
    let a = s.create("/r/a".into(), obj("a", 1)).await.unwrap();
    let b = s.create("/r/b".into(), obj("b", 1)).await.unwrap();
    let a2 = s.update("/r/a".into(), obj("a", 2), None).await.unwrap();
    assert_eq!((a.mod_revision, b.mod_revision, a2.mod_revision), (1, 2, 3));
    assert_eq!(a2.create_revision, 1);
    assert_eq!(rv(&a2), "3");
    assert_eq!(s.revision(), 3);
    let (items, rev) = s.list("/r/");
    assert_eq!(rev, 3);
    assert_eq!(
        items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["/r/a", "/r/b"]
    );
    assert_eq!(s.get("/r/a").unwrap().value().unwrap()["data"]["v"], 2);
}

#[tokio::test]
async fn preconditions() {
    let s = mem();
    s.create("/r/a".into(), obj("a", 1)).await.unwrap();
    assert!(matches!(
        s.create("/r/a".into(), obj("a", 1)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.update("/r/x".into(), obj("x", 1), None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update("/r/a".into(), obj("a", 2), Some(7)).await,
        Err(StoreError::Conflict {
            expected: 7,
            actual: 1,
            ..
        })
    ));
    // A failed precondition consumes no revision.
    assert_eq!(s.revision(), 1);
    s.update("/r/a".into(), obj("a", 2), Some(1)).await.unwrap();
    assert!(matches!(
        s.delete("/r/a".into(), Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = s.delete("/r/a".into(), Some(2)).await.unwrap();
    assert_eq!(gone.mod_revision, 3);
    assert_eq!(rv(&gone), "3");
    assert!(s.get("/r/a").is_none());
    assert!(matches!(
        s.delete("/r/a".into(), None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create("/r/bad".into(), json!([1])).await,
        Err(StoreError::NotAnObject { .. })
    ));
}

#[tokio::test]
async fn watch_replays_history_then_follows_live() {
    let s = mem();
    s.create("/r/a".into(), obj("a", 1)).await.unwrap();
    s.create("/q/z".into(), obj("z", 1)).await.unwrap();
    s.update("/r/a".into(), obj("a", 2), None).await.unwrap();
    let mut w = s.watch("/r/", 1).unwrap();
    s.delete("/r/a".into(), None).await.unwrap();
    s.create("/q/y".into(), obj("y", 1)).await.unwrap();
    s.create("/r/b".into(), obj("b", 1)).await.unwrap();
    let mut got = vec![];
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((ev.event_type, ev.object.key.clone(), ev.revision()));
    }
    assert_eq!(
        got,
        [
            (EventType::Modified, "/r/a".to_string(), 3),
            (EventType::Deleted, "/r/a".to_string(), 4),
            (EventType::Added, "/r/b".to_string(), 6),
        ]
    );
}

#[tokio::test]
async fn compacted_history_is_reported() {
    let s = RedbStore::in_memory(StoreOptions {
        history: 3,
        ..StoreOptions::default()
    })
    .unwrap();
    for i in 0..6 {
        s.create(format!("/r/{i}"), obj("x", i)).await.unwrap();
    }
    // Events 4, 5, 6 are kept: a watch can start after 3 but not after 2.
    assert!(s.watch("/r/", 3).is_ok());
    match s.watch("/r/", 2) {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (2, 3)),
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn slow_watcher_is_closed_without_blocking_writers() {
    let s = RedbStore::in_memory(StoreOptions {
        watch_buffer: 8,
        ..StoreOptions::default()
    })
    .unwrap();
    let mut slow = s.watch("/r/", 0).unwrap();
    let mut fast = s.watch("/r/", 0).unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 50 {
            fast.next().await.unwrap().unwrap();
            n += 1;
        }
        n
    });
    for i in 0..50 {
        s.create(format!("/r/{i}"), obj("x", i)).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(reader.await.unwrap(), 50);
    let mut lagged = false;
    while let Some(ev) = slow.next().await {
        if let Err(WatchError::Lagged(_)) = ev {
            lagged = true;
            break;
        }
    }
    assert!(lagged, "slow watcher must be told it lagged");
    assert!(slow.next().await.is_none(), "stream ends after Lagged");
}

#[tokio::test]
async fn acknowledged_writes_and_history_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let s = RedbStore::open(&path, StoreOptions::default()).unwrap();
        s.create("/r/a".into(), obj("a", 1)).await.unwrap();
        s.create("/r/b".into(), obj("b", 1)).await.unwrap();
        s.update("/r/a".into(), obj("a", 2), Some(1)).await.unwrap();
        s.delete("/r/b".into(), None).await.unwrap();
    }
    let s = RedbStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(s.revision(), 4);
    let a = s.get("/r/a").unwrap();
    assert_eq!((a.mod_revision, a.create_revision), (3, 1));
    assert_eq!(a.value().unwrap()["data"]["v"], 2);
    assert!(s.get("/r/b").is_none());
    // A watcher that had seen revision 2 resumes with exactly what it missed.
    let mut w = s.watch("/r/", 2).unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    let e2 = w.next().await.unwrap().unwrap();
    assert_eq!((e1.event_type, e1.revision()), (EventType::Modified, 3));
    assert_eq!((e2.event_type, e2.revision()), (EventType::Deleted, 4));
    // New writes continue the revision sequence.
    let c = s.create("/r/c".into(), obj("c", 1)).await.unwrap();
    assert_eq!(c.mod_revision, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_unique_revisions() {
    let s = Arc::new(mem());
    let mut tasks = vec![];
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create(format!("/r/{i:04}"), obj("x", i))
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
    assert_eq!(revs, (1..=200).collect::<Vec<_>>());
    assert_eq!(s.list("/r/").0.len(), 200);
}

#[tokio::test]
async fn events_carry_previous_state_and_one_shared_frame() {
    let s = mem();
    let mut w = s.watch("/r/", 0).unwrap();
    s.create("/r/a".into(), obj("a", 1)).await.unwrap();
    s.update("/r/a".into(), obj("a", 2), None).await.unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    let e2 = w.next().await.unwrap().unwrap();
    assert!(e1.prev.is_none());
    assert_eq!(e2.prev.as_ref().unwrap().mod_revision, 1);
    let line = e2.framed();
    assert!(line.ends_with(b"}\n"));
    let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(parsed["type"], "MODIFIED");
    assert_eq!(parsed["object"]["metadata"]["resourceVersion"], "2");
    // Built once: the second call returns the same buffer.
    assert_eq!(line.as_ptr(), e2.framed().as_ptr());
}
