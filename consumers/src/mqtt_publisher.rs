//! A pipelined MQTT 3.1.1 QoS 1 publisher for bulk command delivery (ADR 0014).
//!
//! rumqttc's event loop writes and flushes every publish on its own, one request per poll, so
//! a dispatcher sending a 5,000-command batch pays 5,000 socket writes and 5,000 trips through
//! its event loop. This publisher encodes a window of publishes into one buffer, writes it at
//! once, and reads the broker's PUBACKs while it writes. It only publishes: no subscriptions,
//! no persistent session (clean session, as commands are never received back), so the protocol
//! it needs is CONNECT/CONNACK, PUBLISH/PUBACK and nothing else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use otaledger_ledger::mqtt::MqttConfig;

/// Publishes written before waiting for their acknowledgements. Packet ids are unique within a
/// window, and a window is fully acknowledged before the next one starts, so ids never collide.
const WINDOW: usize = 4096;
/// How long the broker may take to acknowledge a window (or to accept the connection).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent in CONNECT; a connection left idle for half of it is replaced before use rather than
/// trusted, so the publisher never needs PINGREQ.
const KEEP_ALIVE_SECS: u16 = 60;

/// Why a publish did not complete. After any error the connection is dropped and the next
/// publish connects again; which messages of a failed call arrived is unknown (resend them all).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the broker refused the connection: {0}")]
    Refused(&'static str),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// One outgoing message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
}

struct Connection {
    stream: TcpStream,
    used_at: Instant,
}

pub struct MqttPublisher {
    cfg: MqttConfig,
    client_id: String,
    conn: Option<Connection>,
    next_id: u16,
    buf: Vec<u8>,
}

impl std::fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttPublisher")
            .field("client_id", &self.client_id)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttPublisher {
    /// Connects lazily, on the first publish.
    #[must_use]
    pub fn new(cfg: MqttConfig, client_id: String) -> Self {
        MqttPublisher {
            cfg,
            client_id,
            conn: None,
            next_id: 0,
            buf: Vec::with_capacity(256 * 1024),
        }
    }

    /// Publishes every message with QoS 1 and returns once the broker acknowledged all of them.
    ///
    /// # Errors
    /// Connection, network or protocol failures, or no acknowledgement within 10 s.
    pub async fn publish_all(&mut self, msgs: &[Message<'_>]) -> Result<(), PublishError> {
        if msgs.is_empty() {
            return Ok(()); // nothing to send is no reason to connect
        }
        let outcome = self.publish_windows(msgs).await;
        if outcome.is_err() {
            self.conn = None;
        }
        outcome
    }

    async fn publish_windows(&mut self, msgs: &[Message<'_>]) -> Result<(), PublishError> {
        let stale = self.conn.as_ref().is_some_and(|c| {
            c.used_at.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE_SECS / 2))
        });
        if stale || self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        for window in msgs.chunks(WINDOW) {
            self.buf.clear();
            let first = self.next_id;
            for m in window {
                self.next_id = if self.next_id == u16::MAX {
                    1
                } else {
                    self.next_id + 1
                };
                encode_publish(&mut self.buf, m, self.next_id);
            }
            let conn = self.conn.as_mut().expect("connected above");
            let exchange = write_and_collect_acks(&mut conn.stream, &self.buf, first, window.len());
            tokio::time::timeout(ACK_TIMEOUT, exchange)
                .await
                .map_err(|_| PublishError::Timeout(ACK_TIMEOUT))??;
            conn.used_at = Instant::now();
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Connection, PublishError> {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let handshake = async {
            let mut stream =
                TcpStream::connect(&addr)
                    .await
                    .map_err(|source| PublishError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            stream.set_nodelay(true)?;
            let mut packet = Vec::with_capacity(64);
            encode_connect(
                &mut packet,
                &self.client_id,
                self.cfg.username.as_deref(),
                self.cfg.password.as_deref(),
            );
            stream.write_all(&packet).await?;
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).await?;
            match connack {
                [0x20, 2, _, 0] => Ok(stream),
                [0x20, 2, _, code] => Err(PublishError::Refused(connack_reason(code))),
                other => Err(PublishError::Protocol(format!(
                    "expected CONNACK, got {other:02x?}"
                ))),
            }
        };
        let stream = tokio::time::timeout(ACK_TIMEOUT, handshake)
            .await
            .map_err(|_| PublishError::Timeout(ACK_TIMEOUT))??;
        Ok(Connection {
            stream,
            used_at: Instant::now(),
        })
    }
}

/// Writes `packets` (`count` publishes with ids following `first`) while reading PUBACKs, until
/// every one of them is acknowledged.
async fn write_and_collect_acks(
    stream: &mut TcpStream,
    packets: &[u8],
    first: u16,
    count: usize,
) -> Result<(), PublishError> {
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(packets).await?;
        Ok::<_, PublishError>(())
    };
    let read = async {
        let mut acked = Acks::new(first, count);
        let mut inbox = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 16 * 1024];
        while !acked.complete() {
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Err(PublishError::Protocol(
                    "the broker closed the connection".into(),
                ));
            }
            inbox.extend_from_slice(&chunk[..n]);
            let used = parse_incoming(&inbox, &mut acked)?;
            inbox.drain(..used);
        }
        Ok(())
    };
    let (w, r) = tokio::join!(write, read);
    w.and(r)
}

/// Which packet ids of the current window the broker has acknowledged.
struct Acks {
    first: u16,
    seen: Vec<bool>,
    remaining: usize,
}

impl Acks {
    fn new(first: u16, count: usize) -> Self {
        Acks {
            first,
            seen: vec![false; count],
            remaining: count,
        }
    }

    /// The index of `id` in the window: ids run `first+1, first+2, …` and skip 0 on wrapping.
    fn index(&self, id: u16) -> Option<usize> {
        if id == 0 {
            return None;
        }
        let (id, first) = (usize::from(id), usize::from(self.first));
        let i = if id > first {
            id - first - 1
        } else {
            // Wrapped: 65535 - first ids before it, then 1..=id.
            (usize::from(u16::MAX) - first) + id - 1
        };
        (i < self.seen.len()).then_some(i)
    }

    fn ack(&mut self, id: u16) {
        if let Some(i) = self.index(id) {
            if !self.seen[i] {
                self.seen[i] = true;
                self.remaining -= 1;
            }
        }
    }

    fn complete(&self) -> bool {
        self.remaining == 0
    }
}

/// Consumes the complete packets at the start of `inbox`; returns how many bytes they took.
fn parse_incoming(inbox: &[u8], acks: &mut Acks) -> Result<usize, PublishError> {
    let mut at = 0;
    while let Some((kind, body, len)) = next_packet(&inbox[at..])? {
        match (kind >> 4, body) {
            (4, [hi, lo]) => acks.ack(u16::from_be_bytes([*hi, *lo])),
            // PINGRESP, or anything a publish-only client can ignore.
            (13, _) => {}
            (4, _) => return Err(PublishError::Protocol("malformed PUBACK".into())),
            (other, _) => {
                return Err(PublishError::Protocol(format!(
                    "unexpected packet type {other} from the broker"
                )))
            }
        }
        at += len;
    }
    Ok(at)
}

/// A whole packet at the start of a buffer: its first byte, its body and its total length.
type Packet<'b> = (u8, &'b [u8], usize);

/// The next whole packet, or `None` when the buffer holds only part of it.
fn next_packet(buf: &[u8]) -> Result<Option<Packet<'_>>, PublishError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            let end = start + remaining;
            return Ok((buf.len() >= end).then(|| (kind, &buf[start..end], end)));
        }
    }
    if buf.len() >= 5 {
        return Err(PublishError::Protocol(
            "remaining length over 4 bytes".into(),
        ));
    }
    Ok(None)
}

fn encode_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        #[allow(clippy::cast_possible_truncation)]
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    // Topics, client ids and credentials are short; longer ones are cut rather than corrupt
    // the stream, and the broker then refuses them as it would any wrong value.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s[..usize::from(len)]);
}

fn encode_publish(out: &mut Vec<u8>, m: &Message<'_>, id: u16) {
    out.push(0x32); // PUBLISH, QoS 1, not DUP, not retained
    let topic_len = m.topic.len().min(usize::from(u16::MAX));
    encode_remaining_length(out, 2 + topic_len + 2 + m.payload.len());
    encode_str(out, m.topic.as_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(m.payload);
}

fn encode_connect(out: &mut Vec<u8>, client_id: &str, user: Option<&str>, pass: Option<&str>) {
    let mut body = Vec::with_capacity(64);
    encode_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if let (Some(_), Some(_)) = (user, pass) {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    encode_str(&mut body, client_id.as_bytes());
    if let (Some(u), Some(p)) = (user, pass) {
        encode_str(&mut body, u.as_bytes());
        encode_str(&mut body, p.as_bytes());
    }
    out.push(0x10);
    encode_remaining_length(out, body.len());
    out.extend_from_slice(&body);
}

fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorised",
        _ => "unknown CONNACK return code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_round_trips_across_byte_boundaries() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut out = vec![0x40];
            encode_remaining_length(&mut out, len);
            out.resize(out.len() + len, 0);
            let (kind, body, total) = next_packet(&out).unwrap().unwrap();
            assert_eq!((kind, body.len(), total), (0x40, len, out.len()));
        }
    }

    #[test]
    fn a_partial_packet_waits_for_more_bytes() {
        assert!(next_packet(&[0x40]).unwrap().is_none());
        assert!(next_packet(&[0x40, 2, 0]).unwrap().is_none());
        assert!(next_packet(&[0x30, 0x80, 0x80]).unwrap().is_none());
        assert!(next_packet(&[0x30, 0x80, 0x80, 0x80, 0x80]).is_err());
    }

    #[test]
    fn publish_encodes_as_mqtt_3_1_1_qos_1() {
        let mut out = Vec::new();
        let m = Message {
            topic: "a/b",
            payload: b"hi",
        };
        encode_publish(&mut out, &m, 0x0102);
        assert_eq!(out, [0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i']);
    }

    #[test]
    fn acks_count_each_id_of_the_window_once_and_ignore_others() {
        let mut acks = Acks::new(10, 3);
        let mut inbox = Vec::new();
        for id in [11u16, 11, 12, 99, 13] {
            inbox.extend_from_slice(&[0x40, 2]);
            inbox.extend_from_slice(&id.to_be_bytes());
        }
        inbox.extend_from_slice(&[0x40, 2, 0]); // the next packet, cut short
        let used = parse_incoming(&inbox, &mut acks).unwrap();
        assert_eq!(used, 20);
        assert!(acks.complete());
    }

    #[test]
    fn ids_wrap_past_65535_skipping_zero() {
        let mut acks = Acks::new(65_534, 3);
        assert_eq!(acks.index(65_535), Some(0));
        assert_eq!(acks.index(1), Some(1));
        assert_eq!(acks.index(2), Some(2));
        assert_eq!(acks.index(0), None);
        assert_eq!(acks.index(3), None);
        for id in [65_535, 1, 2] {
            acks.ack(id);
        }
        assert!(acks.complete());
    }

    #[test]
    fn unexpected_packets_are_protocol_errors() {
        let mut acks = Acks::new(0, 1);
        assert!(parse_incoming(&[0x30, 0], &mut acks).is_err());
        assert!(parse_incoming(&[0x40, 1, 0], &mut acks).is_err());
        assert_eq!(parse_incoming(&[0xd0, 0], &mut acks).unwrap(), 2);
    }
}
