//! The pieces behind the `otaledger` command: the components it runs and supervises, and the
//! commands that read the ledger back (rebuild and verify, replay and audit, export).

pub mod components;
pub mod export;
pub mod rebuild;
pub mod replay;
