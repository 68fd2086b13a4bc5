#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report
//! What the artifact and release tests share: a namespace with its own artifact store and the
//! API's state over it, the API listening as devices reach it, and a provisioned fleet.

use std::future::IntoFuture as _;
use std::sync::Arc;

use otaledger_cli::components::{prepare, Component};
use otaledger_ledger::kafka::EventProducer;
use otaledger_simulator::{self as simulator, DeviceCredentials, SimConfig};

use crate::{config, migrated_test_pool, unique, Services};

/// The components a rollout needs, from device reports to commands and the rollout view.
pub const ROLLOUT_STACK: [Component; 6] = [
    Component::MqttBridge,
    Component::Projector,
    Component::Router,
    Component::Saga,
    Component::Dispatcher,
    Component::RolloutProjector,
];

/// A test's namespace, its artifact store in a directory of its own, and the API's state.
pub struct Fixture {
    pub name: String,
    pub cfg: otaledger_ledger::config::Config,
    pub pool: sqlx::PgPool,
    pub producer: EventProducer,
    /// The store's directory (`sha256/…`, `incoming/`); the test may keep files beside them.
    pub dir: std::path::PathBuf,
    pub state: otaledger_api::AppState,
}

/// A fixture for `test` whose store takes artifacts of at most `max_bytes`.
pub async fn fixture(test: &str, max_bytes: u64) -> Fixture {
    let name = unique(test);
    let cfg = config(&Services::get().await, &name);
    prepare(&cfg).await.unwrap();
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let dir = std::env::temp_dir().join(&name);
    let store = otaledger_artifacts::FsStore::open(&dir).await.unwrap();
    let state = crate::app_state(&cfg, &pool, &producer).with_artifacts(Arc::new(store), max_bytes);
    Fixture {
        name,
        cfg,
        pool,
        producer,
        dir,
        state,
    }
}

impl Fixture {
    /// The stored file of artifact `digest`, for a test that tampers with it.
    #[must_use]
    pub fn stored(&self, digest: &str) -> std::path::PathBuf {
        self.dir.join("sha256").join(&digest[..2]).join(digest)
    }
}

/// Serves the API on a loopback port, as devices reach it; its base URL.
pub async fn listen(state: otaledger_api::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, otaledger_api::app(state)).into_future());
    base
}

/// Provisions every device of `sim`'s fleet through the API; their credentials and ids.
pub async fn provision_fleet(
    app: &axum::Router,
    sim: &SimConfig,
) -> (DeviceCredentials, Vec<String>) {
    let mut credentials = DeviceCredentials::default();
    let mut ids = Vec::new();
    for d in simulator::fleet(sim) {
        let token = crate::rollouts::provision(app, &d.device_id).await;
        credentials.insert(d.device_id.clone(), token, None);
        ids.push(d.device_id);
    }
    (credentials, ids)
}
