//! What a simulated device was provisioned with to check an update before it downloads it
//! (Uptane, ADR 0038): the image repository's root and the director's public key. A device
//! accepts an update command only if its director statement is signed by the director's key,
//! names this device and its model, counts above every statement it accepted before and has
//! not expired; and if the image repository's metadata (timestamp → snapshot → targets, each
//! signed by the keys its root names, none expired, after following any new root) lists the
//! same target, for this hardware. The downloaded bytes are then held to the statement's length
//! and hash.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use otaledger_domain::events::Release;
use otaledger_domain::tuf::director::{DeviceTrust, Statement};
use otaledger_domain::tuf::metadata::meta_version;
use otaledger_domain::tuf::{PublicKey, Root, Signed};
use otaledger_ledger::http_get::{fetch, Asked, GetError};

/// The most bytes of one metadata file a device reads.
const MAX_METADATA: usize = 4 << 20;
const WITHIN: Duration = Duration::from_secs(30);
/// The most roots a device follows in one update (a rotation chain).
const MAX_ROOTS: u64 = 32;

/// The provisioned keys and what each device remembers.
pub struct Trust {
    root: Mutex<Root>,
    director: PublicKey,
    /// The highest director statement number each device accepted.
    counters: Mutex<HashMap<String, u64>>,
    /// The highest timestamp, snapshot and targets versions seen: older ones, even validly
    /// signed, are a rollback of the repository.
    versions: Mutex<[u64; 3]>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("director", &self.director)
            .finish_non_exhaustive()
    }
}

/// The device a check is for.
#[derive(Debug, Clone)]
pub struct Device<'a> {
    pub device_id: &'a str,
    pub model: &'a str,
    pub hardware_rev: Option<&'a str>,
}

impl Trust {
    /// A fleet provisioned with `root` (a root metadata file as the repository serves it) and
    /// the director's key (as `GET /v1/tuf/keys` gives it under `director.key`).
    ///
    /// # Errors
    /// Either does not read, or the root is not signed by its own root keys.
    pub fn new(root: &[u8], director: &serde_json::Value) -> Result<Self, String> {
        let root = Signed::parse(root).map_err(|e| format!("the provisioned root: {e}"))?;
        let parsed = Root::parse(&root).map_err(|e| format!("the provisioned root: {e}"))?;
        root.verify(&parsed, "root")
            .map_err(|e| format!("the provisioned root: {e}"))?;
        let director =
            PublicKey::from_tuf(director).map_err(|e| format!("the director's key: {e}"))?;
        Ok(Trust {
            root: Mutex::new(parsed),
            director,
            counters: Mutex::new(HashMap::new()),
            versions: Mutex::new([0; 3]),
        })
    }

    /// Checks a command's statement and the image metadata behind it, at the server's
    /// `/v1/tuf/`; `Err` is the reason the device reports.
    ///
    /// # Errors
    /// The first check that fails.
    pub async fn check(
        &self,
        server: &str,
        ca_pem: Option<&str>,
        device: &Device<'_>,
        release: &Release,
        statement: Option<&str>,
    ) -> Result<Statement, String> {
        let Some(text) = statement else {
            return Err("the update command carries no director statement".into());
        };
        let now = otaledger_domain::time::now_micros().div_euclid(1_000_000);
        let last = self
            .counters
            .lock()
            .map(|c| c.get(device.device_id).copied().unwrap_or(0))
            .unwrap_or(0);
        let trust = DeviceTrust {
            device_id: device.device_id.to_owned(),
            hardware_id: device.model.to_owned(),
            hardware_rev: device.hardware_rev.map(str::to_owned),
            director: self.director,
            last_counter: last,
        };
        let st = trust
            .check_statement(text, now)
            .map_err(|e| format!("director: {e}"))?;
        if i64::try_from(st.target.length).ok() != Some(release.size_bytes)
            || !st.target.sha256.eq_ignore_ascii_case(&release.sha256)
        {
            return Err("the command's release is not the target the director signed".into());
        }
        let repo = Repo { server, ca_pem };
        let root = self.update_root(&repo, now).await?;
        let timestamp = repo.signed("timestamp.json").await?;
        let snapshot_v =
            meta_version(&timestamp.signed, "snapshot.json").map_err(|e| e.to_string())?;
        let snapshot = repo.signed(&format!("{snapshot_v}.snapshot.json")).await?;
        let targets_v =
            meta_version(&snapshot.signed, "targets.json").map_err(|e| e.to_string())?;
        let targets = repo.signed(&format!("{targets_v}.targets.json")).await?;
        trust
            .check_image(&root, &timestamp, &snapshot, &targets, &st, now)
            .map_err(|e| format!("image repository: {e}"))?;
        self.no_older(&timestamp, &snapshot, &targets)?;
        // Checked again where it is raised: two deliveries of one statement checked at once
        // must not both pass.
        let mut counters = self
            .counters
            .lock()
            .map_err(|_| "the device's counters are poisoned".to_owned())?;
        let n = counters.entry(device.device_id.to_owned()).or_default();
        if st.counter <= *n {
            return Err(format!(
                "director: director statement number {} is not above {}, the last accepted (a replay)",
                st.counter, *n
            ));
        }
        *n = st.counter;
        Ok(st)
    }

    /// Refuses metadata older than what was seen before, then remembers the newest.
    fn no_older(
        &self,
        timestamp: &Signed,
        snapshot: &Signed,
        targets: &Signed,
    ) -> Result<(), String> {
        let version =
            |m: &Signed, role| m.header(role).map(|h| h.version).map_err(|e| e.to_string());
        let now = [
            version(timestamp, "timestamp")?,
            version(snapshot, "snapshot")?,
            version(targets, "targets")?,
        ];
        let mut seen = self
            .versions
            .lock()
            .map_err(|_| "the device's versions are poisoned".to_owned())?;
        for ((role, got), was) in ["timestamp", "snapshot", "targets"]
            .iter()
            .zip(now)
            .zip(*seen)
        {
            if got < was {
                return Err(format!(
                    "image repository: {role} version {got} is older than {was}, seen before (a rollback)"
                ));
            }
        }
        *seen = now;
        Ok(())
    }

    /// Follows the repository's roots from the one the fleet trusts: each next version must
    /// be signed by the one before and by itself.
    async fn update_root(&self, repo: &Repo<'_>, now: i64) -> Result<Root, String> {
        let mut root = self
            .root
            .lock()
            .map_err(|_| "the trusted root is poisoned".to_owned())?
            .clone();
        for _ in 0..MAX_ROOTS {
            let next = match repo
                .signed(&format!("{}.root.json", root.version + 1))
                .await
            {
                Ok(m) => m,
                Err(e) if e.ends_with("answered 404") => break,
                Err(e) => return Err(e),
            };
            root = Root::next(Some(&root), &next).map_err(|e| format!("root: {e}"))?;
        }
        if root.expires <= now {
            return Err(format!("root: version {} has expired", root.version));
        }
        if let Ok(mut r) = self.root.lock() {
            if r.version < root.version {
                *r = root.clone();
            }
        }
        Ok(root)
    }
}

struct Repo<'a> {
    server: &'a str,
    ca_pem: Option<&'a str>,
}

impl Repo<'_> {
    async fn signed(&self, file: &str) -> Result<Signed, String> {
        let url = format!("{}/v1/tuf/{file}", self.server);
        let asked = Asked {
            ca_pem: self.ca_pem,
            headers: &[("accept", "application/json")],
            max_bytes: MAX_METADATA,
            within: WITHIN,
        };
        let body = fetch(&url, &asked, &[200]).await.map_err(|e| match e {
            GetError::Status { status, .. } => format!("metadata {file}: answered {status}"),
            e => format!("metadata {file}: {e}"),
        })?;
        Signed::parse(&body).map_err(|e| format!("metadata {file}: {e}"))
    }
}
