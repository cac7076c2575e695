//! Progress on stderr for long commands (indicatif): a bar with rate and
//! ETA when the amount of work is known (views to materialize, seconds of
//! load), a spinner with the current step and the time taken when it is
//! not (a pipeline, a drill, a historical retrieval). Nothing is drawn
//! when stderr is not a terminal; the step lines are still printed, so a
//! log file or CI output reads the same as before.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// One command's progress display (clones share it; it is cleared when
/// finished or when the last clone is dropped, an error path included).
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` units of work (e.g. views), with rate and ETA.
    pub fn bar(total: u64, unit: &str) -> Progress {
        let bar = ProgressBar::new(total).with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// A bar that fills over `duration` of wall time (a timed run, such
    /// as a benchmark), with the time left.
    pub fn timed(duration: Duration, what: &str) -> Progress {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::new(millis).with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {what} [{{elapsed_precise}}] [{{bar:30}}] {{percent}}% (eta {{eta}}) {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
        );
        if !bar.is_hidden() {
            let ticking = bar.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                while !ticking.is_finished() {
                    tick.tick().await;
                    let done = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    ticking.set_position(done.min(millis));
                }
            });
        }
        Progress { bar }
    }

    /// A spinner with the current step and the time so far.
    pub fn spinner(what: &str) -> Progress {
        let bar = ProgressBar::new_spinner().with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {what} [{{elapsed_precise}}] {{wide_msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// Print a line above the display (plainly when nothing is drawn) and
    /// make it the current step.
    pub fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
            self.bar.set_message(first_line(text));
        }
    }

    /// Set the current step without printing it.
    pub fn message(&self, text: &str) {
        self.bar.set_message(first_line(text));
    }

    /// One more unit of work done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// A line callback for the library's long operations (each line is
    /// printed and becomes the current step).
    pub fn lines(&self) -> Arc<dyn Fn(&str) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |line: &str| me.line(line))
    }

    /// Remove the display (the printed lines stay).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A step message is one line.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn step_messages_are_one_line() {
        assert_eq!(first_line("  step 1\nmore"), "step 1");
        assert_eq!(first_line(""), "");
    }

    #[tokio::test]
    async fn nothing_is_drawn_off_a_terminal_and_lines_still_count() {
        // Tests run with stderr captured (not a terminal): hidden bars.
        let p = Progress::bar(3, "views");
        p.inc();
        p.line("materializing user_profile ...");
        assert_eq!(p.bar.position(), 1);
        p.finish();
        assert!(p.bar.is_finished());
        let t = Progress::timed(Duration::from_millis(10), "bench");
        t.finish();
        assert!(t.bar.is_finished());
    }
}
