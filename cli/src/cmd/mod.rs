//! One module per command of `otaledger`.

pub mod access;
pub mod artifact;
pub mod dead_letters;
pub mod export;
pub mod keys;
pub mod rebuild;
pub mod replay;
pub mod simulate;
pub mod stack;
