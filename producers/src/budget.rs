//! What a bridge may hold between reading a message and Kafka's acknowledgement (ADR 0040):
//! payload bytes and messages. A message takes its share when read and gives it back when
//! acknowledged to its broker, so a Kafka stall fills the budget and then stops the reading,
//! instead of the bridge's memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use otaledger_ledger::metrics::{Gauge, REGISTRY};

/// The budget of one bridge.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    messages: Arc<Semaphore>,
    max_bytes: u32,
    held: Gauge,
}

/// A message's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Share {
    _bytes: OwnedSemaphorePermit,
    _message: OwnedSemaphorePermit,
    held: Gauge,
    len: u32,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.held.add(-i64::from(self.len));
    }
}

impl Budget {
    /// `max_bytes` of payload and `max_messages` messages (each at least one); `bridge` names it
    /// in `/metrics`.
    #[must_use]
    pub fn new(bridge: &str, max_bytes: u64, max_messages: u32) -> Self {
        let max_bytes = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        Budget {
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            messages: Arc::new(Semaphore::new(max_messages.max(1) as usize)),
            max_bytes,
            held: REGISTRY.gauge(
                "otaledger_bridge_held_bytes",
                "Payload bytes a bridge holds until Kafka acknowledges them",
                &[("bridge", bridge)],
            ),
        }
    }

    /// A message larger than the whole budget takes all of it.
    fn cost(&self, len: usize) -> u32 {
        u32::try_from(len)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes)
    }

    fn share(&self, bytes: OwnedSemaphorePermit, message: OwnedSemaphorePermit) -> Share {
        let len = u32::try_from(bytes.num_permits()).unwrap_or(u32::MAX);
        self.held.add(i64::from(len));
        Share {
            _bytes: bytes,
            _message: message,
            held: self.held.clone(),
            len,
        }
    }

    /// The share of a message of `len` bytes if the budget has it now.
    #[must_use]
    pub fn try_take(&self, len: usize) -> Option<Share> {
        let message = self.messages.clone().try_acquire_owned().ok()?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.cost(len))
            .ok()?;
        Some(self.share(bytes, message))
    }

    /// The share of a message of `len` bytes, waiting until acknowledgements give enough back.
    pub async fn take(&self, len: usize) -> Share {
        // Never closed: the semaphores live as long as the budget.
        let message = self
            .messages
            .clone()
            .acquire_owned()
            .await
            .expect("budget semaphore open");
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(len))
            .await
            .expect("budget semaphore open");
        self.share(bytes, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_and_messages_both_bound_it() {
        let b = Budget::new("t1", 100, 2);
        let a = b.try_take(60).unwrap();
        assert!(b.try_take(41).is_none(), "101 bytes");
        let c = b.try_take(40).unwrap();
        assert!(b.try_take(0).is_none(), "a third message");
        drop(a);
        assert!(b.try_take(61).is_none(), "101 bytes again");
        let d = b.try_take(60).unwrap();
        drop((c, d));
        assert!(b.try_take(100).is_some());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_takes_all_of_it() {
        let b = Budget::new("t2", 100, 10);
        let big = b.try_take(10_000).unwrap();
        assert!(b.try_take(1).is_none());
        drop(big);
        assert!(b.try_take(1).is_some());
    }

    #[tokio::test]
    async fn take_waits_for_a_share_given_back() {
        let b = Budget::new("t3", 100, 10);
        let held = b.try_take(100).unwrap();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.take(50).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing given back yet");
        drop(held);
        let share = waiting.await.unwrap();
        assert_eq!(share.len, 50);
    }
}
