//! Text shown to a person: job documents carry caller-chosen strings (a
//! webhook's goal, an agent's summary) that may hold terminal escape
//! sequences (clear the screen, retitle the window, hide text), bidi
//! overrides that reorder what is read, or secrets. Everything such a
//! string passes through on its way to a human-facing line goes through
//! here: secrets are redacted first (a cut secret no longer matches its
//! rule), then every control, bidi and invisible formatting character is
//! shown escaped (`\u{1b}`), then the text is cut to its column.

use std::fmt::Write as _;

/// Characters never written raw to a terminal: C0 and C1 controls, DEL,
/// bidirectional controls, zero-width and other invisible formatting
/// characters, line and paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// Escapes every unsafe character as `\u{..}`, except those in `keep`.
fn escape(s: &str, keep: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe_char(c) && !keep.contains(&c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of at most `max` characters for a table cell or a `key value`
/// line: redacted, line breaks and tabs turned into spaces, every other
/// unsafe character escaped, then cut (with `…`).
pub fn one_line(s: &str, max: usize) -> String {
    let (redacted, _) = artifacts::secrets::scan_and_redact(s);
    let flat: String = redacted
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let escaped = escape(&flat, &[]);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A block of text (logs) for a terminal: controls escaped, newlines and
/// tabs kept. Invalid UTF-8 is shown as U+FFFD.
pub fn block(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes), &['\n', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_bidi_and_invisibles() {
        let s = one_line("a\u{1b}[2J\u{7}b\u{202e}c\u{200b}d\ne\u{9b}f", 100);
        assert_eq!(s, "a\\u{1b}[2J\\u{7}b\\u{202e}c\\u{200b}d e\\u{9b}f");
        assert!(!s.chars().any(is_unsafe_char));
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(block(b"x\x1b]0;t\x07\n\ty"), "x\\u{1b}]0;t\\u{7}\n\ty");
    }
}
