//! What the commands print: aligned tables and values for people, JSON for scripts, and
//! progress of long operations on stderr.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

/// A table printed with its columns aligned; numeric columns align right.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a header starting with `>` is aligned right (the `>` is not
    /// shown).
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|row| row[i].chars().count())
                .chain([self.headers[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `2024-05-01T12:00:00Z`, or `-` for none.
pub(crate) fn time(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// `1h 30m 5s` to the second, or `-` for none.
pub(crate) fn age(age: Option<Duration>) -> String {
    match age {
        Some(age) => humantime::format_duration(Duration::from_secs(age.as_secs())).to_string(),
        None => "-".to_owned(),
    }
}

/// At most `max` characters of `text`'s first line, with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max && !text.contains('\n') {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Prints `value` as one line of JSON.
pub(crate) fn json(out: &mut impl Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// The running total of a long operation, on stderr: redrawn in place on a terminal, a line
/// at most every few seconds otherwise (a log).
pub(crate) struct Progress {
    verb: &'static str,
    terminal: bool,
    last: Option<Instant>,
}

impl Progress {
    const LOG_EVERY: Duration = Duration::from_secs(5);

    pub fn new(verb: &'static str) -> Self {
        Self {
            verb,
            terminal: io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn update(&mut self, total: u64) {
        let mut err = io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{} {total} jobs…", self.verb);
        } else if self
            .last
            .is_none_or(|last| last.elapsed() >= Self::LOG_EVERY)
        {
            let _ = writeln!(err, "{} {total} jobs so far", self.verb);
            self.last = Some(Instant::now());
        }
        let _ = err.flush();
    }

    pub fn finish(self) {
        if self.terminal {
            // Clears the in-place line, so the result is printed on a clean one.
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_align_right() {
        let mut table = Table::new(&["QUEUE", ">READY", "OLDEST"]);
        table.row(vec!["apples".into(), "12".into(), "1m".into()]);
        table.row(vec!["a".into(), "3".into(), "-".into()]);
        let mut out = Vec::new();
        table.print(&mut out).unwrap();

        assert_eq!(
            String::from_utf8(out).unwrap(),
            "QUEUE   READY  OLDEST\n\
             apples     12  1m\n\
             a           3  -\n"
        );
    }

    #[test]
    fn long_or_multiline_text_is_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long error message", 7), "a long…");
        assert_eq!(truncate("first\nsecond", 10), "first…");
    }

    #[test]
    fn ages_read_to_the_second() {
        assert_eq!(age(Some(Duration::from_millis(5_400_700))), "1h 30m");
        assert_eq!(age(None), "-");
    }
}
