//! Progress reporting from the sync pipelines to whatever shows it (a CLI bar, the daemon's
//! event stream). The pipelines call it from several threads.

/// Receives progress from a pipeline.
pub trait Progress: Sync {
    /// The work is `total` bytes (used bytes for capture and restore, stored bytes for verify).
    fn start(&self, total: u64, what: &str);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// A line for the operator (a warning, a phase change).
    fn note(&self, msg: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: u64, _what: &str) {}
    fn advance(&self, _bytes: u64) {}
    fn note(&self, _msg: &str) {}
}
