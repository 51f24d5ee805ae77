//! A terminal progress bar for `once` (objects and bytes, rate, ETA). Used only when stderr is
//! a terminal; otherwise the log lines say what happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sync::Progress;

/// indicatif behind [`Progress`].
#[derive(Debug)]
pub struct TerminalProgress {
    bar: ProgressBar,
    planned: AtomicU64,
    done: AtomicU64,
}

impl TerminalProgress {
    /// A bar drawn on stderr.
    #[must_use]
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {msg:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            planned: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn message(&self) {
        let (done, planned) = (
            self.done.load(Ordering::Relaxed),
            self.planned.load(Ordering::Relaxed),
        );
        self.bar.set_message(format!("{done}/{planned} objects"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for TerminalProgress {
    fn planned(&self, bytes: u64) {
        self.planned.fetch_add(1, Ordering::Relaxed);
        self.bar.inc_length(bytes);
        self.message();
    }

    fn transferred(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn discarded(&self, bytes: u64) {
        self.bar
            .set_position(self.bar.position().saturating_sub(bytes));
    }

    fn finished(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.message();
    }
}
