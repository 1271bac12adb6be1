//! How `wisp pull` and `wisp deploy` show a pull the server runs: a bar a
//! layer on a terminal (stderr), and a plain line a layer otherwise. The
//! server's `GET /system/pulls` (or the function's status) is read a few
//! times a second; [`PullView`] draws what it says.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::Client;
use crate::api::{FunctionState, PullStatus};

/// How often the server is asked how far a pull is.
const POLL: Duration = Duration::from_millis(200);

/// Draws one pull's layers.
pub struct PullView {
    bars: Option<MultiProgress>,
    layers: HashMap<String, Layer>,
    phase: String,
}

struct Layer {
    bar: Option<ProgressBar>,
    reported: bool,
}

impl PullView {
    pub fn new() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        PullView {
            bars,
            layers: HashMap::new(),
            phase: String::new(),
        }
    }

    /// Shows what `pull` says now.
    pub fn update(&mut self, pull: &PullStatus) {
        for layer in &pull.layers {
            let short = short(&layer.digest);
            let entry = self.layers.entry(layer.digest.clone()).or_insert_with(|| {
                let bar = self.bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new(layer.size));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(short.clone());
                    bar
                });
                Layer {
                    bar,
                    reported: false,
                }
            });
            let complete = layer.present || layer.done >= layer.size;
            if let Some(bar) = &entry.bar {
                bar.set_position(layer.done.min(layer.size));
                if complete && !bar.is_finished() {
                    bar.finish_with_message(if layer.present {
                        "already stored"
                    } else {
                        "done"
                    });
                }
            } else if complete && !entry.reported {
                let what = if layer.present {
                    "already stored".to_owned()
                } else {
                    format!("downloaded {} bytes", layer.size)
                };
                eprintln!("{short}: {what}");
            }
            entry.reported |= complete;
        }
        if pull.phase != self.phase {
            if self.bars.is_none() && pull.phase != "resolving" {
                eprintln!("{}: {}", pull.reference, pull.phase);
            }
            self.phase.clone_from(&pull.phase);
        }
    }

    /// Ends the view: on `success`, every layer shown is complete.
    pub fn finish(&mut self, success: bool) {
        for (digest, layer) in &mut self.layers {
            match &layer.bar {
                Some(bar) if !bar.is_finished() => {
                    if success {
                        bar.finish_with_message("done");
                    } else {
                        bar.abandon();
                    }
                }
                None if success && !layer.reported => {
                    eprintln!("{}: downloaded", short(digest));
                    layer.reported = true;
                }
                _ => {}
            }
        }
        // The bars stay; what is printed next goes below them.
        if self.bars.is_some() && !self.layers.is_empty() {
            eprintln!();
        }
    }
}

impl Default for PullView {
    fn default() -> Self {
        Self::new()
    }
}

/// `sha256:0123456789ab`.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Runs `work` (a request the server answers when its pull is done) while
/// showing the pull `pick` chooses from `GET /system/pulls`.
pub async fn while_pulling<T>(
    client: &Client,
    pick: impl Fn(&PullStatus) -> bool,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut view = PullView::new();
    tokio::pin!(work);
    let mut tick = tokio::time::interval(POLL);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => {
                // Progress is a courtesy: a failed poll is not an error.
                if let Ok(pulls) = client.pulls().await
                    && let Some(pull) = pulls.iter().find(|p| pick(p))
                {
                    view.update(pull);
                }
            }
        }
    };
    view.finish(result.is_ok());
    result
}

/// Waits for the deploy of `name` that the server answered with 202 (it
/// goes on pulling) to finish, showing its pull; fails with its error.
pub async fn until_deployed(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut view = PullView::new();
    let mut tick = tokio::time::interval(POLL);
    let result = loop {
        tick.tick().await;
        let status = match client.function(name).await {
            Ok(status) => status,
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        match status.deploying {
            None if status.state == FunctionState::Ready => break Ok(()),
            None => {
                break Err(anyhow::anyhow!(
                    "the deploy of {name} ended, but the function is {}",
                    status.state.as_str()
                ));
            }
            Some(deploying) => {
                if let Some(error) = deploying.error {
                    break Err(anyhow::anyhow!("the deploy of {name} failed: {error}"));
                }
                if let Some(pull) = &deploying.pull {
                    view.update(pull);
                }
            }
        }
    };
    view.finish(result.is_ok());
    result
}
