//! The Prometheus text format (version 0.0.4), written straight into one buffer.
//!
//! A thousand veths make some 20,000 series. Building them as `prometheus` crate objects first
//! cost a `String` per label name and value and a struct per series, all allocated and freed at
//! every scrape: most of a scrape's time. Here a series is written where it is produced and
//! nothing is kept. The output is byte for byte what `prometheus::TextEncoder` writes for the same
//! families (the tests compare the two): same escaping, same number formatting, and a family
//! without series is left out.

use std::fmt::Write as _;

/// What `# TYPE` says.
#[derive(Debug, Clone, Copy)]
pub enum Type {
    Counter,
    Gauge,
    /// Written with [`Family::sample_as`]: `_bucket` series with an `le` label, `_sum`, `_count`.
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A sample value. Counts stay integers until written: below 2^53 an `f64` holds them exactly
/// and prints the same digits, so they skip the float formatting.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Count(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::Count(n as u64)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Count(u64::from(n))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

/// The whole exposition being written.
pub struct Exposition {
    buf: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
        }
    }

    /// Starts a family; its `# HELP` and `# TYPE` lines are written with its first sample.
    pub fn family(&mut self, name: &'static str, help: &'static str, ty: Type) -> Family<'_> {
        Family {
            buf: &mut self.buf,
            name,
            help,
            ty,
            started: false,
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf.into_bytes()
    }
}

/// One metric family: its series must be written one after the other, as the format requires.
pub struct Family<'a> {
    buf: &'a mut String,
    name: &'static str,
    help: &'static str,
    ty: Type,
    started: bool,
}

impl Family<'_> {
    /// Writes one series: `name{l1="v1",...} value`. Label names are ours and need no
    /// escaping; label values come from pod and interface names and are escaped.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.sample_as("", labels, value);
    }

    /// [`Family::sample`] of the series `name` + `suffix` (a histogram's `_bucket`, `_sum`,
    /// `_count`).
    pub fn sample_as(
        &mut self,
        suffix: &'static str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) {
        if !self.started {
            self.started = true;
            self.header();
        }
        let buf = &mut *self.buf;
        buf.push_str(self.name);
        buf.push_str(suffix);
        let mut sep = '{';
        for (name, value) in labels {
            buf.push(sep);
            buf.push_str(name);
            buf.push_str("=\"");
            escape_into(buf, value, true);
            buf.push('"');
            sep = ',';
        }
        if !labels.is_empty() {
            buf.push('}');
        }
        buf.push(' ');
        // Writing to a String cannot fail.
        let _ = match value.into() {
            Value::Count(n) if n < 1 << 53 => write!(buf, "{n}"),
            Value::Count(n) => write!(buf, "{}", n as f64),
            Value::Real(v) => write!(buf, "{v}"),
        };
        buf.push('\n');
    }

    fn header(&mut self) {
        let buf = &mut *self.buf;
        if !self.help.is_empty() {
            buf.push_str("# HELP ");
            buf.push_str(self.name);
            buf.push(' ');
            escape_into(buf, self.help, false);
            buf.push('\n');
        }
        buf.push_str("# TYPE ");
        buf.push_str(self.name);
        buf.push(' ');
        buf.push_str(self.ty.as_str());
        buf.push('\n');
    }
}

/// Escapes as the format wants: backslash and newline always, the double quote in label values
/// (a `# HELP` text may hold quotes as they are).
fn escape_into(buf: &mut String, s: &str, quote: bool) {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !s.contains(special) {
        buf.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '"' if quote => buf.push_str("\\\""),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(labels: &[(&str, &str)], value: impl Into<Value>) -> String {
        let mut e = Exposition::with_capacity(0);
        e.family("m", "a \\ \"help\"\nline", Type::Counter)
            .sample(labels, value);
        String::from_utf8(e.into_bytes()).unwrap()
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quotes() {
        assert!(one(&[], 1u64).starts_with("# HELP m a \\\\ \"help\"\\nline\n# TYPE m counter\n"));
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let t = one(&[("a", "x\\y\"z\nw ü"), ("b", "")], 2u64);
        assert!(t.ends_with("m{a=\"x\\\\y\\\"z\\nw ü\",b=\"\"} 2\n"), "{t}");
    }

    #[test]
    fn numbers_print_as_f64_display_does() {
        for n in [0, 1, 1 << 53, (1 << 53) - 1, (1 << 53) + 1, u64::MAX] {
            assert!(one(&[], n).ends_with(&format!("m {}\n", n as f64)), "{n}");
        }
        assert!(one(&[], 0.25).ends_with("m 0.25\n"));
    }

    #[test]
    fn a_family_without_samples_writes_nothing() {
        let mut e = Exposition::with_capacity(0);
        e.family("m", "h", Type::Gauge);
        assert!(e.into_bytes().is_empty());
    }
}
