//! The pieces behind the `otaledger` command: configuration and the components it runs.

pub mod bench;
pub mod bench_lag;
pub mod bench_rollout;
pub mod components;
pub mod config;
pub mod export;
pub mod rebuild;
pub mod replay;
