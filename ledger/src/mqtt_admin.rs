//! Device logins in Mosquitto's dynamic-security plugin (ADR 0026): otaledger adds a device's
//! login when it provisions the device and deletes it when the credential is revoked, over the
//! plugin's control topic. The broker then refuses unknown devices, and its acl_file confines a
//! device to its own topics by user name.
//!
//! The plugin answers every command on one shared response topic, so each request carries a
//! `correlationData` and waits for the answer that echoes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::mqtt::MqttConfig;

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";
/// How long the broker may take to answer a request (it rewrites its file on every change).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no MQTT admin login is configured (mqtt.admin_username, mqtt.admin_password)")]
    NotConfigured,
    #[error("the MQTT broker did not answer within {0:?} (is the dynamic-security plugin loaded and the admin login right?)")]
    Timeout(Duration),
    #[error("the MQTT broker refused {command}: {error}")]
    Refused { command: String, error: String },
    #[error("mqtt: {0}")]
    Client(#[from] rumqttc::ClientError),
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Value>>>>>;

/// A connection of otaledger's admin login to the broker's control topic.
pub struct MqttAdmin {
    client: AsyncClient,
    waiting: Waiting,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MqttAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAdmin").finish_non_exhaustive()
    }
}

impl Drop for MqttAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttAdmin {
    /// Connects with the configured admin login; `NotConfigured` without one. Must be called
    /// within a Tokio runtime. The connection is made (and remade) in the background; a request
    /// made while it is down waits for it up to the timeout.
    pub fn connect(cfg: &MqttConfig) -> Result<Self, AdminError> {
        let (Some(user), Some(password)) = (&cfg.admin_username, &cfg.admin_password) else {
            return Err(AdminError::NotConfigured);
        };
        let client_id = format!(
            "otaledger-admin-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        );
        let mut opts = cfg.options(&client_id);
        opts.set_credentials(user, password);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let waiting: Waiting = Arc::default();
        let answers = waiting.clone();
        let resubscribe = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // A new session after every (re)connection: subscribe before any request's
                    // answer can come.
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscribe.try_subscribe(RESPONSE, QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == RESPONSE => {
                        deliver(&answers, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT admin connection");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(MqttAdmin {
            client,
            waiting,
            task,
        })
    }

    /// Sends `commands` as one request; the answers, in order.
    async fn request(&self, mut commands: Vec<Value>) -> Result<Vec<Value>, AdminError> {
        let id = uuid::Uuid::new_v4().to_string();
        for c in &mut commands {
            c["correlationData"] = json!(id);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id.clone(), tx);
        let body = json!({ "commands": commands }).to_string();
        // Resent until answered: a request published before the connection (and its response
        // subscription) came up is lost, and every command here is safe to repeat.
        let answer = async {
            let mut rx = rx;
            loop {
                self.client
                    .publish(CONTROL, QoS::AtLeastOnce, false, body.clone())
                    .await?;
                match tokio::time::timeout(Duration::from_secs(3), &mut rx).await {
                    Ok(Ok(answers)) => return Ok(answers),
                    Ok(Err(_)) => return Err(AdminError::Timeout(TIMEOUT)),
                    Err(_) => continue,
                }
            }
        };
        let result = tokio::time::timeout(TIMEOUT, answer).await;
        lock(&self.waiting).remove(&id);
        result.map_err(|_| AdminError::Timeout(TIMEOUT))?
    }

    /// Gives `device` the login `password` (replacing any earlier one, whose connections the
    /// broker closes). The client id must be the device id, so a device has one session.
    pub async fn add_device(&self, device: &str, password: &str) -> Result<(), AdminError> {
        let answers = self
            .request(vec![
                json!({"command": "deleteClient", "username": device}),
                json!({
                    "command": "createClient", "username": device, "password": password,
                    "clientid": device, "textname": "otaledger device",
                }),
            ])
            .await?;
        refused(answers.get(1), "createClient")
    }

    /// Deletes `device`'s login: the broker closes its connections and refuses it from now on.
    /// A device without a login is no error.
    pub async fn remove_device(&self, device: &str) -> Result<(), AdminError> {
        let answers = self
            .request(vec![json!({"command": "deleteClient", "username": device})])
            .await?;
        match answers.first() {
            Some(a) if a["error"] == "Client not found" => Ok(()),
            other => refused(other, "deleteClient"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands a response message's answers to the request that carries its correlation data.
fn deliver(waiting: &Waiting, payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let Some(answers) = v["responses"].as_array() else {
        return;
    };
    let Some(id) = answers.iter().find_map(|a| a["correlationData"].as_str()) else {
        return;
    };
    if let Some(tx) = lock(waiting).remove(id) {
        let _ = tx.send(answers.clone());
    }
}

/// `Ok` when the answer carries no error.
fn refused(answer: Option<&Value>, command: &str) -> Result<(), AdminError> {
    match answer.map(|a| &a["error"]) {
        Some(Value::Null) => Ok(()),
        Some(e) => Err(AdminError::Refused {
            command: command.into(),
            error: e.as_str().unwrap_or("unknown").into(),
        }),
        None => Err(AdminError::Refused {
            command: command.into(),
            error: "no answer for it".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_to_their_request_and_errors_are_read() {
        let waiting: Waiting = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        lock(&waiting).insert("a".into(), tx);
        deliver(
            &waiting,
            br#"{"responses":[{"command":"x","correlationData":"b"}]}"#,
        );
        assert!(rx.try_recv().is_err(), "another request's answer");
        deliver(&waiting, b"not json");
        deliver(
            &waiting,
            br#"{"responses":[{"command":"deleteClient","correlationData":"a","error":"Client not found"},{"command":"createClient","correlationData":"a"}]}"#,
        );
        let answers = rx.try_recv().unwrap();
        assert_eq!(answers.len(), 2);
        assert!(lock(&waiting).is_empty());
        assert!(refused(answers.get(1), "createClient").is_ok());
        let err = refused(answers.first(), "deleteClient").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the MQTT broker refused deleteClient: Client not found"
        );
        assert!(refused(None, "createClient").is_err());
    }
}
