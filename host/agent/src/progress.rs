//! Progress bars for long work: shown on a terminal, silent otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar counting raw bytes; hidden when stderr is not a terminal
/// or output is JSON.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar for `total` bytes (a spinner when unknown), labelled `message`.
    pub fn new(total: Option<u64>, message: &str, visible: bool) -> Bar {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        if visible && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        } else {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let template = if total.is_some() {
            BAR_TEMPLATE
        } else {
            "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        Bar { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

const BAR_TEMPLATE: &str =
    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";

impl strata_core::vault::Progress for Bar {
    fn add(&self, raw_bytes: u64) {
        self.bar.inc(raw_bytes);
    }

    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_style(
            ProgressStyle::with_template(BAR_TEMPLATE)
                .expect("valid progress template")
                .progress_chars("=> "),
        );
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
