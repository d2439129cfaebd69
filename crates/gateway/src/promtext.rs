//! Merging Prometheus text exposition from several processes into one
//! valid document. Runners and the scheduler each write a complete file
//! (`var/metrics/runner-<id>.prom`); simply concatenating them would repeat
//! `# TYPE` lines and split metric families, which Prometheus rejects. Here
//! samples are grouped by family (one `# HELP`/`# TYPE` each) and every
//! sample from a file gets a `process="<file stem>"` label, so two runners'
//! identical series stay distinct.

use std::collections::HashMap;

#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Families in first-seen order.
#[derive(Debug, Default)]
pub struct Families {
    order: Vec<String>,
    map: HashMap<String, Family>,
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Whether `sample` belongs to the family `family` (histogram and summary
/// parts carry suffixes).
fn belongs(sample: &str, family: &str) -> bool {
    match sample.strip_prefix(family) {
        Some("") => true,
        Some(suffix) => matches!(
            suffix,
            "_bucket" | "_sum" | "_count" | "_total" | "_created"
        ),
        None => false,
    }
}

/// Byte index of the `}` closing a label set that starts at `open`, minding
/// quoted values with escapes.
fn close_brace(line: &str, open: usize) -> Option<usize> {
    let (mut in_str, mut esc) = (false, false);
    for (i, c) in line[open + 1..].char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '}' {
            return Some(open + 1 + i);
        }
    }
    None
}

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str) -> &mut Family {
        if !self.map.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.map.entry(name.to_owned()).or_default()
    }

    /// The family a sample outside its `# TYPE` block belongs to: its own
    /// name when that family exists, else a known family it is a part of
    /// (`x_bucket` of histogram `x`), else a new one of its own name. So a
    /// family's samples from several texts always render together.
    fn family_of(&self, name: &str) -> String {
        if self.map.contains_key(name) {
            return name.to_owned();
        }
        for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.map.contains_key(base)
            {
                return base.to_owned();
            }
        }
        name.to_owned()
    }

    /// Adds one exposition text. With `process`, each sample gets that
    /// label (unless it already has one). Malformed lines are dropped.
    pub fn add(&mut self, text: &str, process: Option<&str>) {
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut parts = rest.trim_start().splitn(3, ' ');
                let (Some(kw), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if !valid_name(name) || !matches!(kw, "HELP" | "TYPE") {
                    continue;
                }
                let value = parts.next().unwrap_or("").to_owned();
                let fam = self.family(name);
                if kw == "HELP" {
                    fam.help.get_or_insert(value);
                } else {
                    fam.kind.get_or_insert(value);
                }
                current = Some(name.to_owned());
                continue;
            }
            let name_end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            let name = &line[..name_end];
            if !valid_name(name) || !has_numeric_value(line, name_end) {
                continue;
            }
            if line[name_end..].starts_with('{')
                && close_brace(line, name_end)
                    .and_then(|c| label_names(&line[name_end + 1..c]))
                    .is_none()
            {
                continue;
            }
            let sample = match process {
                None => line.to_owned(),
                Some(p) => match with_label(line, name_end, p) {
                    Some(s) => s,
                    None => continue,
                },
            };
            let fam_name = match &current {
                Some(c) if belongs(name, c) => c.clone(),
                _ => self.family_of(name),
            };
            self.family(&fam_name).samples.push(sample);
        }
    }

    /// The merged document.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let Some(f) = self.map.get(name) else {
                continue;
            };
            if f.samples.is_empty() {
                continue;
            }
            if let Some(h) = &f.help {
                out.push_str(&format!("# HELP {name} {h}\n"));
            }
            if let Some(k) = &f.kind {
                out.push_str(&format!("# TYPE {name} {k}\n"));
            }
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

/// Whether the text after the name (and label set) starts with a number.
fn has_numeric_value(line: &str, name_end: usize) -> bool {
    let rest = if line[name_end..].starts_with('{') {
        match close_brace(line, name_end) {
            Some(c) => &line[c + 1..],
            None => return false,
        }
    } else {
        &line[name_end..]
    };
    rest.split_whitespace()
        .next()
        .is_some_and(|v| v.parse::<f64>().is_ok())
}

/// `line` with `process="<p>"` added to its label set.
fn with_label(line: &str, name_end: usize, process: &str) -> Option<String> {
    let label = format!("process=\"{}\"", escape_label(process));
    let name = &line[..name_end];
    if line[name_end..].starts_with('{') {
        let close = close_brace(line, name_end)?;
        let labels = &line[name_end + 1..close];
        let rest = &line[close + 1..];
        if label_names(labels)?.contains(&"process") {
            return Some(line.to_owned());
        }
        let sep = if labels.trim().is_empty() { "" } else { "," };
        Some(format!("{name}{{{label}{sep}{labels}}}{rest}"))
    } else {
        Some(format!("{name}{{{label}}}{}", &line[name_end..]))
    }
}

/// The label names of a label set (`a="x",b="y"`, a trailing comma
/// allowed), or `None` when it is not well formed.
fn label_names(labels: &str) -> Option<Vec<&str>> {
    let mut names = Vec::new();
    let mut rest = labels.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        if !valid_name(name) || name.contains(':') {
            return None;
        }
        let after = rest[eq + 1..].trim_start();
        let body = after.strip_prefix('"')?;
        // The closing quote, minding escapes.
        let mut esc = false;
        let mut end = None;
        for (i, c) in body.char_indices() {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        names.push(name);
        rest = body[end? + 1..].trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(names)
}

/// Escapes a label value per the exposition format.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_families_and_labels_sources() {
        let runner = "# HELP orch_jobs_claimed_total Jobs claimed.\n# TYPE orch_jobs_claimed_total counter\norch_jobs_claimed_total 3\n# TYPE orch_step_seconds histogram\norch_step_seconds_bucket{agent=\"codex\",le=\"1\"} 2\norch_step_seconds_sum{agent=\"codex\"} 1.5\norch_step_seconds_count{agent=\"codex\"} 2\n";
        let mut f = Families::new();
        f.add(
            "# TYPE orch_queue_depth gauge\norch_queue_depth{state=\"pending\"} 4\n",
            None,
        );
        f.add(runner, Some("runner-a"));
        f.add(runner, Some("runner-b"));
        f.add("garbage line\n{bad} 1\n", Some("x"));
        let out = f.render();
        assert_eq!(out.matches("# TYPE orch_jobs_claimed_total").count(), 1);
        assert_eq!(out.matches("# HELP orch_jobs_claimed_total").count(), 1);
        assert!(out.contains("orch_jobs_claimed_total{process=\"runner-a\"} 3\n"));
        assert!(out.contains("orch_jobs_claimed_total{process=\"runner-b\"} 3\n"));
        assert!(out.contains(
            "orch_step_seconds_bucket{process=\"runner-b\",agent=\"codex\",le=\"1\"} 2\n"
        ));
        assert!(out.contains("orch_queue_depth{state=\"pending\"} 4\n"));
        assert!(!out.contains("garbage"));
        // Families stay contiguous: both runners' buckets come before the sums.
        let a = out
            .find("orch_step_seconds_count{process=\"runner-b\"")
            .unwrap();
        let b = out.find("# TYPE orch_step_seconds").unwrap();
        assert!(b < a);
    }

    #[test]
    fn a_familys_samples_from_several_texts_stay_together() {
        // The second text has no # TYPE: its a_bucket still joins `a`.
        let mut f = Families::new();
        f.add("# TYPE a histogram\na_bucket{le=\"1\"} 1\n", Some("p"));
        f.add("b 1\na_bucket{le=\"1\"} 2\n", Some("q"));
        let out = f.render();
        assert_eq!(
            out,
            "# TYPE a histogram\na_bucket{process=\"p\",le=\"1\"} 1\na_bucket{process=\"q\",le=\"1\"} 2\nb{process=\"q\"} 1\n"
        );
        let mut again = Families::new();
        again.add(&out, None);
        assert_eq!(again.render(), out);
    }

    #[test]
    fn malformed_label_sets_are_dropped() {
        let mut f = Families::new();
        f.add(
            "a{process=x=\"1\"} 2\nb{x=\"1\" y=\"2\"} 1\nc{=\"1\"} 1\nd{x=\"1\",} 1\n",
            Some("p"),
        );
        assert_eq!(f.render(), "d{process=\"p\",x=\"1\",} 1\n");
        let mut f = Families::new();
        f.add("e{process=\"own\",x=\"a\\\"b\"} 1\n", Some("p"));
        assert_eq!(f.render(), "e{process=\"own\",x=\"a\\\"b\"} 1\n");
    }

    #[test]
    fn braces_inside_label_values() {
        let mut f = Families::new();
        f.add("m{a=\"x}y\\\"\"} 1\n", Some("p"));
        assert_eq!(f.render(), "m{process=\"p\",a=\"x}y\\\"\"} 1\n");
    }
}
