//! Merges the instances' stdout and stderr into ours, one line at a time, each prefixed with
//! the instance's name in its own colour (no colour when stdout is not a terminal or
//! `NO_COLOR` is set).

use std::io::{IsTerminal, Write};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

const COLOURS: [u8; 6] = [36, 33, 35, 32, 34, 31];

/// The prefix of instance number `index` named `name`.
pub fn prefix(index: usize, name: &str) -> String {
    let plain = format!("{name:<11}|");
    if !colour() {
        return plain;
    }
    format!("\x1b[{}m{plain}\x1b[0m", COLOURS[index % COLOURS.len()])
}

/// Whether our output is coloured: on a terminal, unless `NO_COLOR` is set.
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// Copies `stream` line by line to stdout behind `prefix`, until it ends.
pub fn relay(prefix: String, stream: impl AsyncRead + Unpin + Send + 'static) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix} {line}");
        }
    });
}

/// Copies `stream` line by line into `file` behind `prefix`, until it ends.
pub fn relay_to(
    prefix: String,
    stream: impl AsyncRead + Unpin + Send + 'static,
    file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut file) = file.lock() {
                let _ = writeln!(file, "{prefix} {line}");
            }
        }
    });
}

/// A line from the stack itself.
pub fn say(message: &str) {
    let _ = writeln!(
        std::io::stdout().lock(),
        "{} {message}",
        prefix(6, "devstack")
    );
}
