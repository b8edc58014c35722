//! Test support shared by the controllers' tests (compiled only for tests).

use std::sync::Arc;
use std::time::Duration;

use sluice_store::{RedbStore, Store, StoreOptions};

use crate::registry::{Registry, RegistryConfig};

/// A registry over a fresh in-memory store, with the bootstrap namespaces.
pub async fn registry() -> Arc<Registry> {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory(StoreOptions::default()).unwrap());
    let reg = Arc::new(Registry::new(store, RegistryConfig::default()));
    reg.bootstrap().await.unwrap();
    reg
}

/// Polls `f` every 25 ms for up to 5 s; panics naming `what` when it never holds.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
