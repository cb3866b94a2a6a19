//! How answers are printed: aligned tables for a person (the default), or the API's own JSON
//! or YAML for a script (`-o json|yaml`). Progress bars and spinners only when stderr is a
//! terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::error::CliError;

/// `-o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for a person.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
}

/// The output flag of subcommands that print data.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: Format,
}

/// Prints `value` as JSON or YAML (`Format::Table` is the caller's own rendering).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> Result<(), CliError> {
    let text = match format {
        Format::Yaml => {
            yaml_serde::to_string(value).map_err(|e| CliError::Usage(format!("cannot render YAML: {e}")))?
        }
        _ => {
            let mut text = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::Usage(format!("cannot render JSON: {e}")))?;
            text.push('\n');
            text
        }
    };
    write_stdout(text.as_bytes())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::io("writing to stdout", e)),
        _ => Ok(()),
    }
}

/// Rows under headers, each column as wide as its widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    text
}

/// How long ago (or from now) an RFC 3339 time is, as `42s`, `5m`, `3h`, `2d`; `-` when it
/// does not parse.
pub fn age(rfc3339: &str, now_ms: i64) -> String {
    match crate::wire::time::parse_ms(rfc3339) {
        Some(at) => short_duration((now_ms - at).unsigned_abs() / 1000),
        None => "-".into(),
    }
}

/// `s` seconds in the largest unit that keeps it at least 1.
pub fn short_duration(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A spinner with `message` on a terminal; hidden otherwise.
pub fn spinner(message: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A byte progress bar of `len` bytes (unknown: a byte counter) on a terminal; hidden otherwise.
pub fn byte_bar(len: Option<u64>, message: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATE"],
            &[vec!["a".into(), "Running".into()], vec!["bcd".into(), "-".into()]],
        );
        assert_eq!(t, "ID   STATE\na    Running\nbcd  -\n");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(3 * 86_400), "3d");
        assert_eq!(age("nonsense", 0), "-");
    }
}
