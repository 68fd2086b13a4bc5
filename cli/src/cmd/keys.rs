//! `otaledger keys …` and `otaledger release sign`: the image repository's offline half (ADR
//! 0038), run where the keys are, never on the server. The server holds only its online key
//! (snapshot, timestamp) and the director's; it verifies what these sign.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use otaledger_domain::tuf::metadata::{targets_json, targets_of, Root, Signed, Target};
use otaledger_domain::tuf::{PublicKey, SigningKey};

const DAY: i64 = 24 * 3600;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Print the server's public keys (its online key for snapshot and timestamp, the
    /// director's key devices are provisioned with) as `GET /v1/tuf/keys` answers them, read
    /// from its database; made on first use.
    Server,
    /// Make the image repository's offline keys and its first root: `root.key` (signs roots),
    /// `targets.key` (signs releases), and `1.root.json`, which gives snapshot and timestamp
    /// to the server's online key. Install the root with `POST /v1/tuf/root` (admin) and
    /// provision devices with it; keep the key files offline.
    Generate {
        /// Where the key files and the root are written (created; existing keys are never
        /// overwritten).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The server's keys, as `GET /v1/tuf/keys` answers (`online.key` is taken).
        #[arg(long, value_name = "FILE")]
        server_keys: PathBuf,
        /// How long the root stays valid.
        #[arg(long, default_value_t = 365)]
        root_days: i64,
    },
    /// Rotate the root key: a new `root.key` (the old one kept as `root.key.<version>`), and
    /// the next root, signed by the old key and the new, so that devices trusting the old root
    /// accept it. Install it with `POST /v1/tuf/root`.
    RotateRoot {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The current root (the latest `<version>.root.json`).
        #[arg(long, value_name = "FILE")]
        current: PathBuf,
        #[arg(long, default_value_t = 365)]
        root_days: i64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Sign the next targets metadata with the release key: the current targets (if any) plus
    /// the release, exactly as the catalogue holds it. Print it, for
    /// `POST /v1/releases/{release_id}/publish`.
    Sign {
        /// The release as `GET /v1/releases/{release_id}` answers it.
        #[arg(long, value_name = "FILE")]
        release: PathBuf,
        /// The repository's current targets (`GET /v1/tuf/targets.json`); absent before the
        /// first release.
        #[arg(long, value_name = "FILE")]
        current: Option<PathBuf>,
        /// The directory holding `targets.key`.
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// How long the targets metadata stays valid.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
    /// Renew the current targets before they expire: the same targets, the next version,
    /// signed with the release key. Print it, for `POST /v1/tuf/targets`.
    Renew {
        /// The repository's current targets (`GET /v1/tuf/targets.json`), which this key signed.
        #[arg(long, value_name = "FILE")]
        current: PathBuf,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

fn now() -> i64 {
    otaledger_domain::time::now_micros().div_euclid(1_000_000)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = String::from_utf8(read(path)?).context("a key file is UTF-8")?;
    SigningKey::from_file(&text).with_context(|| format!("reading the key {}", path.display()))
}

/// Writes a new file readable by its owner alone; never replaces one.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn pretty(m: &Signed) -> anyhow::Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(m)?;
    v.push(b'\n');
    Ok(v)
}

pub async fn keys(
    cfg: &otaledger_ledger::config::Config,
    command: KeysCommand,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::Server => {
            let pool = otaledger_projections::migrations::migrated_pool(
                &cfg.database.url,
                &cfg.database.schema,
                2,
            )
            .await
            .context("connecting to PostgreSQL")?;
            let keys = otaledger_api::tuf::public_keys(&pool)
                .await
                .map_err(|e| anyhow::anyhow!(e.reason))?;
            println!("{}", serde_json::to_string_pretty(&keys)?);
        }
        KeysCommand::Generate {
            dir,
            server_keys,
            root_days,
        } => {
            let keys: serde_json::Value = serde_json::from_slice(&read(&server_keys)?)
                .context("the server's keys are JSON")?;
            let online = keys
                .pointer("/online/key")
                .context("the server's keys have no online.key")?;
            let online = PublicKey::from_tuf(online).context("the server's online key")?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let root_key = SigningKey::generate()?;
            let targets_key = SigningKey::generate()?;
            let body = Root::build(
                1,
                now() + root_days * DAY,
                (&[root_key.public()], 1),
                (&[targets_key.public()], 1),
                online,
            );
            let root = Signed::sign(body, &[&root_key]);
            write_new(&dir.join("root.key"), root_key.to_file().as_bytes(), true)?;
            write_new(
                &dir.join("targets.key"),
                targets_key.to_file().as_bytes(),
                true,
            )?;
            write_new(&dir.join("1.root.json"), &pretty(&root)?, false)?;
            eprintln!(
                "wrote {0}/root.key, {0}/targets.key (keep them offline) and {0}/1.root.json \
                 (root key {1}, targets key {2}, online key {3})",
                dir.display(),
                root_key.public().key_id(),
                targets_key.public().key_id(),
                online.key_id()
            );
        }
        KeysCommand::RotateRoot {
            dir,
            current,
            root_days,
        } => {
            let old_key = read_key(&dir.join("root.key"))?;
            let current_root = Signed::parse(&read(&current)?)?;
            let parsed = Root::parse(&current_root)?;
            let targets: Vec<PublicKey> = keys_of(&parsed, "targets");
            let online = keys_of(&parsed, "snapshot")
                .into_iter()
                .next()
                .context("the current root has no snapshot key")?;
            let new_key = SigningKey::generate()?;
            let version = parsed.version + 1;
            let threshold = parsed.roles.get("targets").map_or(1, |r| r.threshold);
            let body = Root::build(
                version,
                now() + root_days * DAY,
                (&[new_key.public()], 1),
                (&targets, threshold),
                online,
            );
            let next = Signed::sign(body, &[&old_key, &new_key]);
            write_new(
                &dir.join(format!("{version}.root.json")),
                &pretty(&next)?,
                false,
            )?;
            std::fs::rename(
                dir.join("root.key"),
                dir.join(format!("root.key.{}", parsed.version)),
            )?;
            write_new(&dir.join("root.key"), new_key.to_file().as_bytes(), true)?;
            eprintln!(
                "wrote {}/{version}.root.json, signed by the old root key and the new",
                dir.display()
            );
        }
    }
    Ok(())
}

fn keys_of(root: &Root, role: &str) -> Vec<PublicKey> {
    root.keyids(role)
        .iter()
        .filter_map(|id| root.keys.get(id).copied())
        .collect()
}

/// The targets in `path`, once this release key is found to have signed them: what the server
/// says is current is signed again here only if this key signed it, so that a server cannot
/// slip a target of its own under the release key. Their version and targets.
fn signed_by(path: &Path, key: &SigningKey) -> anyhow::Result<(u64, Vec<Target>)> {
    let m = Signed::parse(&read(path)?)?;
    let h = m.header("targets")?;
    let id = key.public().key_id();
    let bytes = otaledger_domain::tuf::metadata::canonical(&m.signed);
    anyhow::ensure!(
        !bytes.is_empty(),
        "{} is not canonical JSON (a float)",
        path.display()
    );
    anyhow::ensure!(
        m.signatures
            .iter()
            .any(|s| s.keyid == id && key.public().verifies(&bytes, &s.sig)),
        "{} is not signed by this release key ({id}): refusing to sign it again",
        path.display()
    );
    Ok((h.version, targets_of(&m.signed)?.into_values().collect()))
}

fn print_signed(signed: &Signed, version: u64, list: &[Target]) -> anyhow::Result<()> {
    use std::io::Write as _;
    for t in list {
        eprintln!("  {} {} bytes sha256 {}", t.name, t.length, t.sha256);
    }
    std::io::stdout().write_all(&pretty(signed)?)?;
    eprintln!(
        "signed targets version {version} with {} target(s)",
        list.len()
    );
    Ok(())
}

pub fn release(command: ReleaseCommand) -> anyhow::Result<()> {
    let (release, current, keys, days) = match command {
        ReleaseCommand::Renew {
            current,
            keys,
            days,
        } => {
            let key = read_key(&keys.join("targets.key"))?;
            let (version, list) = signed_by(&current, &key)?;
            let signed = Signed::sign(
                targets_json(version + 1, now() + days * DAY, &list),
                &[&key],
            );
            return print_signed(&signed, version + 1, &list);
        }
        ReleaseCommand::Sign {
            release,
            current,
            keys,
            days,
        } => (release, current, keys, days),
    };
    let r: otaledger_domain::events::ReleaseRegistered = {
        let v: serde_json::Value =
            serde_json::from_slice(&read(&release)?).context("the release is JSON")?;
        serde_json::from_value(v).context("the release, as GET /v1/releases/{id} answers")?
    };
    let key = read_key(&keys.join("targets.key"))?;
    let (version, mut list): (u64, Vec<Target>) = match &current {
        Some(path) => {
            let (v, list) = signed_by(path, &key)?;
            (v + 1, list)
        }
        None => (1, Vec::new()),
    };
    let target = otaledger_domain::release::target(&r);
    anyhow::ensure!(
        list.iter().all(|t| t.name != target.name),
        "target {} is listed already: a published image is never replaced",
        target.name
    );
    list.push(target);
    let signed = Signed::sign(targets_json(version, now() + days * DAY, &list), &[&key]);
    print_signed(&signed, version, &list)
}
