//! An indicatif progress bar behind imaging's `Progress` trait.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws a bar on stderr (bytes, rate, ETA) unless `quiet`; notes always reach stderr.
pub(crate) struct Bar {
    pb: ProgressBar,
}

impl Bar {
    pub(crate) fn new(quiet: bool) -> Self {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if quiet {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { pb }
    }

    pub(crate) fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl imaging::progress::Progress for Bar {
    fn start(&self, total: u64, what: &str) {
        self.pb.set_length(total);
        self.pb.set_position(0);
        self.pb.set_style(
            ProgressStyle::with_template(
                "{msg:8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            // The template above is a valid constant.
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.pb.set_message(what.to_string());
    }

    fn advance(&self, bytes: u64) {
        self.pb.inc(bytes);
    }

    fn note(&self, msg: &str) {
        if self.pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.pb.println(msg);
        }
    }
}
