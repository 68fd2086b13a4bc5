//! Why a message from a device, a gateway or the ledger itself was refused: a short stable
//! reason (a metric label and the `dlq-reason` header) and a readable detail.

/// Why it was rejected: a short stable reason for metrics and a human-readable detail.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}
