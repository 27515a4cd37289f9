//! What a scenario prints: lines of accounting, and the checks that failed.

/// A scenario's findings.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// A line of the accounting.
    pub fn line(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Records a failure unless `ok`; returns `ok`.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            self.failures.push(what.into());
        }
        ok
    }

    /// Fails on each of `problems` (showing the first few), titled `what`.
    pub fn check_all(&mut self, what: &str, problems: &[String]) {
        if problems.is_empty() {
            return;
        }
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        self.failures.push(format!(
            "{} {what}: {}{}",
            problems.len(),
            shown.join("; "),
            if problems.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        ));
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}
