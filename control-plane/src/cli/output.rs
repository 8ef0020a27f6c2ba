//! Printing results and errors, as text or JSON.

use std::process::ExitCode;

use serde::Serialize;

use super::CliError;

#[derive(Clone, Copy, Debug)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    /// Prints `value` as JSON, or `human()` as text.
    pub fn print<T: Serialize>(
        self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json {
            let text = serde_json::to_string_pretty(value).map_err(|e| {
                CliError::new(super::ErrorKind::Server, format!("cannot encode JSON: {e}"))
            })?;
            println!("{text}");
        } else {
            let text = human();
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
        }
        Ok(())
    }

    /// Reports `e` and returns its exit code.
    pub fn error(self, e: &CliError) -> ExitCode {
        if self.json {
            match &e.json {
                Some(body) => println!("{body}"),
                None => println!(
                    "{}",
                    serde_json::json!({"error": {"type": e.kind.as_str(), "message": e.message}})
                ),
            }
        } else {
            eprintln!("error: {}", e.message);
        }
        ExitCode::from(e.kind.exit_code())
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC; `-` for 0.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    crate::calendar::format_time(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
