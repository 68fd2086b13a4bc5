//! A Kafka-API broker of a test's own (tansu), for the tests that stop, freeze or restart it
//! without disturbing the shared one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// tansu on `port`, storing in `dir` with `storage` (`sqlite://ledger.db`, `memory://tansu/`);
/// killed with the test.
pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    pub storage: String,
    child: Option<Child>,
}

impl Broker {
    /// A broker on a free port, storing in `dir` (created), not started yet.
    ///
    /// # Panics
    /// When `dir` cannot be created.
    #[must_use]
    pub fn new(dir: PathBuf, storage: &str) -> Self {
        std::fs::create_dir_all(&dir).expect("the broker's directory");
        Broker {
            dir,
            port: crate::free_port(),
            storage: storage.to_owned(),
            child: None,
        }
    }

    /// Its address for `kafka.brokers`.
    #[must_use]
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same storage).
    ///
    /// # Panics
    /// When tansu cannot be started.
    pub fn start(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        self.child = Some(
            Command::new(crate::tansu_binary())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", &self.storage])
                .current_dir(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting tansu"),
        );
    }

    /// Waits until it listens, and on SQLite adds the index its storage lacks, as
    /// `scripts/services.sh` does (ADR 0043).
    ///
    /// # Panics
    /// When it does not listen within 20 s or the index cannot be added.
    pub async fn ready(&self) {
        crate::listening(self.port, "the test's broker").await;
        if let Some(file) = self.storage.strip_prefix("sqlite://") {
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/tansu-sqlite-index.py");
            let db = self.dir.join(file);
            let indexed = db.clone();
            let status = tokio::task::spawn_blocking(move || {
                Command::new("python3").arg(script).arg(indexed).status()
            })
            .await
            .expect("the indexing task")
            .expect("python3");
            assert!(status.success(), "indexing {}", db.display());
        }
    }

    /// Sends it `signal` (`-STOP`, `-CONT`).
    ///
    /// # Panics
    /// When it is not running or the signal cannot be sent.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("a running broker")
            .id()
            .to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill")
            .success());
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A namespace of the test's own (topics, schema, MQTT root, queues) on a memory broker of its
/// own, started: the configuration, and the broker to freeze or stop.
///
/// # Panics
/// When the broker does not start.
pub async fn own_namespace(test: &str) -> (otaledger_ledger::config::Config, Broker) {
    own_namespace_on(test, "memory://tansu/").await
}

/// [`own_namespace`] on a broker storing with `storage` (`sqlite://ledger.db`: durable, so
/// the test may kill and restart it).
///
/// # Panics
/// When the broker does not start.
pub async fn own_namespace_on(
    test: &str,
    storage: &str,
) -> (otaledger_ledger::config::Config, Broker) {
    let name = crate::unique(test);
    let mut broker = Broker::new(std::env::temp_dir().join(&name), storage);
    broker.start();
    broker.ready().await;
    let mut cfg = crate::config(&crate::Services::get().await, &name);
    cfg.kafka.brokers = broker.address();
    (cfg, broker)
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A frozen broker is thawed first, so that the kill is not left pending.
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}
