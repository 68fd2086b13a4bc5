#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The dispatcher's pipelined MQTT publisher against the real broker: every message of a
//! multi-window batch arrives intact, a dropped connection fails the call that saw it and the
//! next call reconnects, and an unreachable broker is a clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use otaledger_consumers::mqtt_publisher::{Message, MqttPublisher, PublishError};
use otaledger_tests::{config, unique, Services};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::mpsc;

/// A subscriber to `{root}/#` that forwards every (topic, payload) it receives.
async fn subscriber(services: &Services, root: &str) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut cfg = config(services, "unused").mqtt;
    cfg.topic_root = root.to_owned();
    let mut opts = cfg.options(&unique("sub"));
    opts.set_clean_session(true);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client
        .subscribe(format!("{root}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic, p.payload.to_vec())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap();
    rx
}

async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    n: usize,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for _ in 0..n {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a message within 20 s")
            .unwrap();
        got.entry(topic).or_default().push(payload);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_window_arrives_whole_and_in_order_per_topic() {
    let services = Services::get().await;
    let root = unique("pub");
    let mut rx = subscriber(&services, &root).await;
    let mut publisher = MqttPublisher::new(config(&services, &root).mqtt, unique("publisher"));

    // 10,000 messages: three windows, 500 topics with 20 messages each.
    let topics: Vec<String> = (0..500)
        .map(|i| format!("{root}/d{i:03}/commands"))
        .collect();
    let payloads: Vec<String> = (0..10_000).map(|i| format!("{{\"n\":{i}}}")).collect();
    let msgs: Vec<Message<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Message {
            topic: &topics[i % 500],
            payload: p.as_bytes(),
        })
        .collect();
    publisher.publish_all(&msgs).await.unwrap();
    let got = receive(&mut rx, 10_000).await;
    assert_eq!(got.len(), 500);
    for (i, topic) in topics.iter().enumerate() {
        let expected: Vec<Vec<u8>> = (0..20)
            .map(|k| format!("{{\"n\":{}}}", i + 500 * k).into_bytes())
            .collect();
        assert_eq!(got[topic], expected, "messages on {topic}");
    }

    // The connection is kept: a later small batch goes out on it too.
    publisher
        .publish_all(&[Message {
            topic: &topics[0],
            payload: b"again",
        }])
        .await
        .unwrap();
    let again = receive(&mut rx, 1).await;
    assert_eq!(again[&topics[0]], [b"again".to_vec()]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "nothing was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_that_call_and_the_next_call_reconnects() {
    let services = Services::get().await;
    let root = unique("pubdrop");
    let mut rx = subscriber(&services, &root).await;
    let client_id = unique("publisher");
    let cfg = config(&services, &root).mqtt;
    let mut publisher = MqttPublisher::new(cfg.clone(), client_id.clone());
    let topic = format!("{root}/d/commands");
    let msg = |payload: &'static [u8]| Message {
        topic: &topic,
        payload,
    };
    publisher.publish_all(&[msg(b"one")]).await.unwrap();
    assert_eq!(receive(&mut rx, 1).await[&topic], [b"one".to_vec()]);

    // Another client with the same id takes the session: the broker closes ours.
    let (thief, mut thief_loop): (AsyncClient, EventLoop) =
        AsyncClient::new(cfg.options(&client_id), 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = thief_loop.poll().await.unwrap() {
            break;
        }
    }
    drop((thief, thief_loop));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let err = publisher.publish_all(&[msg(b"lost")]).await.unwrap_err();
    assert!(
        matches!(err, PublishError::Io(_) | PublishError::Protocol(_)),
        "{err}"
    );
    publisher.publish_all(&[msg(b"two")]).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some((_, p))) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        got.push(p);
    }
    assert_eq!(got.last().unwrap(), b"two");
    assert!(
        got.len() <= 2,
        "at most the failed message and the resent one: {got:?}"
    );
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let services = Services::get().await;
    let mut cfg = config(&services, "unreachable").mqtt;
    cfg.host = "127.0.0.1".into();
    cfg.port = 1; // nothing listens on port 1
    let mut publisher = MqttPublisher::new(cfg, unique("publisher"));
    // Nothing to send does not connect, so it cannot fail.
    publisher.publish_all(&[]).await.unwrap();
    let err = publisher
        .publish_all(&[Message {
            topic: "x/y",
            payload: b"z",
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
