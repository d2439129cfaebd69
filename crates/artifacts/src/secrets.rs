//! Secrets scanning and redaction (SPEC §7): everything a step publishes is
//! scanned here **before** it is written, found secrets are replaced in place
//! by `[REDACTED:<rule_id>]`, and the step records only rule ids and
//! locations — never the matched value (the MVP copied secret lines into
//! `logs.txt` and left the secrets in the artifacts, SPEC §15 defect 13).
//!
//! The scanner is deliberately small and in-house: a **keyword prefilter**
//! (a rule's regex runs only when one of its keywords occurs in the text,
//! case-insensitively), a **regex set** modelled on gitleaks' default rules
//! (<https://github.com/gitleaks/gitleaks>, `config/gitleaks.toml`, MIT
//! licensed; each rule names the gitleaks rule it follows), **entropy
//! floors** (a candidate whose Shannon entropy is below its rule's floor is
//! not a secret) and **allowlists** (placeholders, UUIDs, hashes, lock-file
//! integrity strings, variable references). The point of the allowlists is
//! that the *name* `OPENAI_API_KEY`, a UUID or a git hash is not a secret:
//! flagging them (as the MVP did) teaches operators to ignore the check.
//!
//! Matching uses `regex::bytes`, which runs in linear time, so scanning a
//! hostile multi-megabyte transcript cannot blow up, and raw agent streams
//! (which need not be UTF-8) are scanned as they are.
//!
//! [`redact_env_values`] handles `SENSITIVE_ENV_VARS`: only values of at
//! least [`MIN_ENV_VALUE_LEN`] characters are replaced, because replacing
//! short values (the MVP replaced any value, defect 14) corrupts text and
//! patches wherever `1` or `true` occurs.

use regex::bytes::{Regex, RegexBuilder};
use std::sync::OnceLock;

/// Shortest `SENSITIVE_ENV_VARS` value that is redacted (SPEC §7).
pub const MIN_ENV_VALUE_LEN: usize = 8;

/// One secret found in a text. Carries where it is and which rule found
/// it, never the value itself, so a finding can be logged and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule's id, e.g. `github-pat` (stable; documented in SECURITY.md).
    pub rule_id: &'static str,
    /// 1-based line number.
    pub line: usize,
    /// 1-based byte column within the line.
    pub column: usize,
    /// Byte range of the secret in the scanned text (for [`redact`]).
    pub start: usize,
    pub end: usize,
}

/// How a rule's regex reports the secret.
struct Rule {
    id: &'static str,
    /// Lowercase keywords; the regex runs only when one occurs.
    keywords: &'static [&'static str],
    pattern: &'static str,
    /// Which capture group is the secret (0 = the whole match).
    group: usize,
    /// Minimum Shannon entropy (bits per character) of the secret.
    entropy: f64,
    /// Generic rules yield to specific ones when they overlap.
    generic: bool,
}

/// The rule set. Patterns follow gitleaks' rules of the same (or the
/// named) id; deviations are noted. Prefixes such as `ghp_` make most of
/// them precise, so their entropy floors only reject obvious placeholders.
const RULES: &[Rule] = &[
    // gitleaks `aws-access-token`.
    Rule {
        id: "aws-access-token",
        keywords: &["a3t", "akia", "asia", "abia", "acca"],
        pattern: r"\b((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // Not a separate gitleaks rule (gitleaks relies on `generic-api-key`);
    // added because AWS secret keys are 40 characters of base64 that the
    // generic rule's assignment syntax does not always catch.
    Rule {
        id: "aws-secret-access-key",
        keywords: &["aws"],
        pattern: r#"(?i)aws_?(?:secret)?_?(?:access)?_?key[A-Za-z0-9_]{0,10}["']?\s{0,3}(?:=|:|=>)\s{0,3}["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        group: 1,
        entropy: 3.5,
        generic: false,
    },
    // gitleaks `gcp-api-key`.
    Rule {
        id: "gcp-api-key",
        keywords: &["aiza"],
        pattern: r"\b(AIza[A-Za-z0-9_-]{35})(?:[^A-Za-z0-9_-]|$)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `github-pat`, `github-oauth`, `github-app-token`,
    // `github-refresh-token` (one rule: same shape, different prefix).
    Rule {
        id: "github-token",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[0-9a-zA-Z]{36})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `github-fine-grained-pat`.
    Rule {
        id: "github-fine-grained-pat",
        keywords: &["github_pat_"],
        pattern: r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `gitlab-pat`, `gitlab-ptt`, `gitlab-rrt` (runner).
    Rule {
        id: "gitlab-token",
        keywords: &["glpat-", "glptt-", "gr1348941"],
        pattern: r"\b(glpat-[A-Za-z0-9_-]{20}|glptt-[0-9a-f]{40}|GR1348941[A-Za-z0-9_-]{20})(?:[^A-Za-z0-9_-]|$)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `slack-bot-token`, `slack-user-token`, `slack-app-token`,
    // `slack-legacy-*` (one rule for the `xox?-` family).
    Rule {
        id: "slack-token",
        keywords: &[
            "xoxb-", "xoxp-", "xoxe-", "xoxa-", "xoxs-", "xoxr-", "xapp-",
        ],
        pattern: r"\b(xox[baprse]-[0-9]{10,13}-[0-9]{10,13}[A-Za-z0-9-]*|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+)\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `slack-webhook-url`.
    Rule {
        id: "slack-webhook-url",
        keywords: &["hooks.slack.com"],
        pattern: r"(hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56})",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `stripe-access-token`.
    Rule {
        id: "stripe-access-token",
        keywords: &[
            "sk_test", "sk_live", "sk_prod", "rk_test", "rk_live", "rk_prod",
        ],
        pattern: r"\b((?:sk|rk)_(?:test|live|prod)_[a-zA-Z0-9]{10,99})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `npm-access-token`.
    Rule {
        id: "npm-access-token",
        keywords: &["npm_"],
        pattern: r"\b(npm_[a-zA-Z0-9]{36})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `pypi-upload-token`.
    Rule {
        id: "pypi-upload-token",
        keywords: &["pypi-ageichlwas5vcmc"],
        pattern: r"(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,1000})",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `huggingface-access-token`, `huggingface-organization-api-token`.
    Rule {
        id: "huggingface-token",
        keywords: &["hf_", "api_org_"],
        pattern: r"\b(hf_[a-zA-Z]{34}|api_org_[a-zA-Z]{34})\b",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `anthropic-api-key`, `anthropic-admin-api-key`.
    Rule {
        id: "anthropic-api-key",
        keywords: &["sk-ant-"],
        pattern: r"\b(sk-ant-(?:api03|admin01)-[a-zA-Z0-9_-]{93}AA)(?:[^A-Za-z0-9_-]|$)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `openai-api-key` (the `T3BlbkFJ` marker is base64 of
    // "OpenAI"), plus project/service-account keys without the marker,
    // which newer keys do not always carry (a deviation from gitleaks).
    Rule {
        id: "openai-api-key",
        keywords: &["t3blbkfj", "sk-proj-", "sk-svcacct-", "sk-admin-"],
        pattern: r"\b(sk-[a-zA-Z0-9]{20}T3BlbkFJ[a-zA-Z0-9]{20}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,200})(?:[^A-Za-z0-9_-]|$)",
        group: 1,
        entropy: 3.5,
        generic: false,
    },
    // gitleaks `private-key`. The whole block is the secret.
    Rule {
        id: "private-key",
        keywords: &["-----begin"],
        pattern: r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s:,.-]{64,}?-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // Unix crypt(3) password hashes: md5crypt `$1$`, sha256crypt `$5$`,
    // sha512crypt `$6$`, yescrypt `$y$` and bcrypt `$2a$`/`$2b$`/`$2y$`
    // (not in gitleaks; what an agent reading `/etc/shadow` would print).
    Rule {
        id: "crypt-hash",
        keywords: &["$1$", "$5$", "$6$", "$y$", "$2a$", "$2b$", "$2y$"],
        pattern: r"(\$1\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22}|\$[56]\$(?:rounds=[0-9]{1,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43,86}|\$y\$[./A-Za-z0-9]{1,32}\$[./A-Za-z0-9]{1,86}\$[./A-Za-z0-9]{43}|\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53})(?:[^./A-Za-z0-9$]|$)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // A whole `/etc/shadow` line (`name:hash:lastchg:min:max:warn:inactive:
    // expire:reserved`), whatever its hash field holds (`*` and `!` too: the
    // list of accounts and their ageing is host data). Not in gitleaks.
    Rule {
        id: "shadow-entry",
        keywords: &["::", ":*:", ":!"],
        pattern: r"(?m)^([a-z_][a-z0-9_.-]{0,31}\$?:[^:\r\n]{0,256}:[0-9]{0,8}:[0-9]{0,8}:[0-9]{0,8}:[0-9]{0,8}:[0-9]{0,8}:[0-9]{0,8}:[^:\r\n]{0,20})\r?$",
        group: 1,
        entropy: 0.0,
        generic: false,
    },
    // gitleaks `jwt` (header and payload are base64 JSON, hence `eyJ`).
    Rule {
        id: "jwt",
        keywords: &["eyj"],
        pattern: r"\b(eyJ[A-Za-z0-9_-]{15,}\.eyJ[A-Za-z0-9_-]{15,}\.[A-Za-z0-9_-]{10,}={0,2})(?:[^A-Za-z0-9_=-]|$)",
        group: 1,
        entropy: 3.0,
        generic: false,
    },
    // gitleaks `generic-api-key`, narrowed: the assignment's name must
    // contain a credential word and the value must be 16+ characters with
    // letters and digits and entropy >= 3.5 (gitleaks: 10+ and 3.5). See
    // `allowed_generic` for what is never a secret.
    Rule {
        id: "generic-secret",
        keywords: &[
            "key",
            "token",
            "secret",
            "passw",
            "pwd",
            "auth",
            "credential",
            "creds",
            "api",
        ],
        pattern: r#"(?i)([A-Za-z0-9_.-]{0,40}(?:key|token|secret|passwd|password|pwd|auth|credential|creds|api)[A-Za-z0-9_.-]{0,20})["']?[ \t]{0,3}(?:=|:=|:|=>|\?=)[ \t]{0,3}["'`]?([A-Za-z0-9_.+/=-]{16,200})(?:["'`;,\s]|\\[nr]|$)"#,
        group: 2,
        entropy: 3.5,
        generic: true,
    },
];

/// Compiled rules, built once.
/// One automaton over every rule's keywords, and the rule of each keyword.
fn keyword_index() -> &'static (aho_corasick::AhoCorasick, Vec<usize>) {
    static CELL: OnceLock<(aho_corasick::AhoCorasick, Vec<usize>)> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut words = Vec::new();
        let mut rule_of = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for k in r.keywords.iter().filter(|k| !k.is_empty()) {
                words.push(*k);
                rule_of.push(i);
            }
        }
        let ac = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&words)
            .expect("secret-rule keywords are plain strings");
        (ac, rule_of)
    })
}

fn compiled() -> &'static [(usize, Regex)] {
    static CELL: OnceLock<Vec<(usize, Regex)>> = OnceLock::new();
    CELL.get_or_init(|| {
        RULES
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                // Unicode off: every pattern is ASCII, and ASCII classes
                // keep the engines on their fast paths for any input.
                match RegexBuilder::new(r.pattern)
                    .unicode(false)
                    .size_limit(1 << 24)
                    .build()
                {
                    Ok(re) => Some((i, re)),
                    Err(e) => {
                        // A bad built-in pattern is a programming error the
                        // unit tests catch; never panic on a scan path.
                        tracing::error!(rule = r.id, error = %e, "secrets rule does not compile");
                        None
                    }
                }
            })
            .collect()
    })
}

/// The ids of every rule, for documentation and tests.
pub fn rule_ids() -> Vec<&'static str> {
    RULES.iter().map(|r| r.id).collect()
}

/// Scans UTF-8 text. See [`scan_bytes`].
pub fn scan(text: &str) -> Vec<Finding> {
    scan_bytes(text.as_bytes())
}

/// Scans bytes (raw agent streams need not be UTF-8) and returns the
/// findings sorted by position, without overlaps: where a generic finding
/// overlaps a specific one, the specific one wins.
pub fn scan_bytes(text: &[u8]) -> Vec<Finding> {
    // Which rules' keywords occur at all: one pass over the text for every
    // keyword of every rule (case-insensitive), instead of one search per
    // keyword; the regexes run only for rules with a hit.
    let (keywords, rule_of) = keyword_index();
    let mut wanted = vec![false; RULES.len()];
    for m in keywords.find_overlapping_iter(text) {
        wanted[rule_of[m.pattern().as_usize()]] = true;
    }
    let mut found: Vec<(usize, usize, &'static Rule)> = Vec::new();
    for (i, re) in compiled() {
        let rule = &RULES[*i];
        if !wanted[*i] {
            continue;
        }
        // Not `captures_iter`: a candidate that is refused (low entropy,
        // an allowed value) must not swallow the text after its start, or
        // `password=AAAAAAAApassword = <secret>` would hide the secret
        // behind the refused first value. The search goes on from the
        // refused candidate's value (matches are at most a few hundred
        // bytes long, so this stays linear in the text).
        let mut at = 0;
        while at <= text.len() {
            let Some(caps) = re.captures_at(text, at) else {
                break;
            };
            let whole = caps.get(0).expect("group 0 always matches");
            let Some(m) = caps.get(rule.group) else {
                at = whole.end().max(at + 1);
                continue;
            };
            let value = m.as_bytes();
            let accepted = shannon_entropy(value) >= rule.entropy
                && !allowed_value(value)
                && (!rule.generic || {
                    let name = caps.get(1).map_or(&[][..], |n| n.as_bytes());
                    !allowed_generic(name, value)
                });
            if accepted {
                found.push((m.start(), m.end(), rule));
                at = whole.end().max(at + 1);
            } else {
                at = m.start().max(whole.start() + 1);
            }
        }
    }
    // Specific rules first, then by position; drop anything overlapping an
    // already accepted finding.
    found.sort_by_key(|(s, e, r)| (r.generic, *s, std::cmp::Reverse(*e)));
    let mut kept: Vec<(usize, usize, &'static Rule)> = Vec::new();
    for f in found {
        if kept.iter().all(|k| f.1 <= k.0 || f.0 >= k.1) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|(s, _, _)| *s);
    kept.into_iter()
        .map(|(start, end, rule)| {
            let (line, column) = line_col(text, start);
            Finding {
                rule_id: rule.id,
                line,
                column,
                start,
                end,
            }
        })
        .collect()
}

/// Replaces every finding's bytes with `[REDACTED:<rule_id>]`. Findings
/// must come from scanning this very text (ranges outside it are ignored).
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let out = redact_bytes(text.as_bytes(), findings);
    // Every rule matches ASCII only, so cuts fall on character boundaries;
    // the lossy conversion is a belt for that brace and never changes text.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`redact`] for bytes.
pub fn redact_bytes(text: &[u8], findings: &[Finding]) -> Vec<u8> {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| f.start);
    let mut out = Vec::with_capacity(text.len());
    let mut pos = 0;
    for f in sorted {
        if f.start < pos || f.end > text.len() || f.start >= f.end {
            continue;
        }
        out.extend_from_slice(&text[pos..f.start]);
        out.extend_from_slice(format!("[REDACTED:{}]", f.rule_id).as_bytes());
        pos = f.end;
    }
    out.extend_from_slice(&text[pos..]);
    out
}

/// Scans and redacts in one go: the redacted text and what was found (with
/// positions in the *original* text).
pub fn scan_and_redact(text: &str) -> (String, Vec<Finding>) {
    let (out, findings) = scan_and_redact_bytes(text.as_bytes());
    if findings.is_empty() {
        return (text.to_owned(), findings);
    }
    // Every rule matches ASCII only, so cuts fall on character boundaries.
    let out = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (out, findings)
}

/// Most passes [`scan_and_redact_bytes`] makes before it gives up looking
/// for what a redaction exposed.
const MAX_REDACTION_PASSES: usize = 8;

/// [`scan_and_redact`] for bytes.
///
/// Redaction is repeated until a scan of the result finds nothing: a
/// marker can complete a match that its neighbours alone did not make (a
/// token glued to `name=<secret>` ends at `=` only once the secret is a
/// `[REDACTED:…]`). Findings of later passes are reported in the original
/// text's positions, spanning every original byte they were made of.
pub fn scan_and_redact_bytes(text: &[u8]) -> (Vec<u8>, Vec<Finding>) {
    let mut findings = scan_bytes(text);
    if findings.is_empty() {
        return (text.to_vec(), findings);
    }
    let mut current = redact_bytes(text, &findings);
    // Origin of each byte of `current` in `text`, built only when a later
    // pass finds something.
    let mut origin: Option<Vec<(usize, usize)>> = None;
    let mut prev_findings = findings.clone();
    for _ in 1..MAX_REDACTION_PASSES {
        let more = scan_bytes(&current);
        if more.is_empty() {
            break;
        }
        let o = origin.get_or_insert_with(|| origins(current.len(), &prev_findings, None));
        for f in &more {
            let (lo, hi) = o[f.start..f.end]
                .iter()
                .fold((usize::MAX, 0), |(lo, hi), &(a, b)| (lo.min(a), hi.max(b)));
            let (line, column) = line_col(text, lo);
            findings.push(Finding {
                rule_id: f.rule_id,
                line,
                column,
                start: lo,
                end: hi,
            });
        }
        let next = redact_bytes(&current, &more);
        origin = Some(origins(next.len(), &more, origin.as_deref()));
        prev_findings = more;
        current = next;
    }
    findings.sort_by_key(|f| (f.start, f.end));
    (current, findings)
}

/// Where each byte of a redacted text came from in the original: `prev`
/// gives the origin of each byte of the text that was redacted (`None`:
/// that text was the original), `findings` are the ranges replaced by
/// markers (each marker byte comes from its whole range).
fn origins(
    out_len: usize,
    findings: &[Finding],
    prev: Option<&[(usize, usize)]>,
) -> Vec<(usize, usize)> {
    let at = |i: usize| prev.map_or((i, i + 1), |p| p[i]);
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| f.start);
    let mut out = Vec::with_capacity(out_len);
    let mut pos = 0;
    let in_len = prev.map_or(usize::MAX, <[_]>::len);
    for f in sorted {
        if f.start < pos || f.start >= f.end || f.end > in_len {
            continue;
        }
        out.extend((pos..f.start).map(at));
        let span = (f.start..f.end)
            .map(at)
            .fold((usize::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
        let marker = format!("[REDACTED:{}]", f.rule_id).len();
        out.extend(std::iter::repeat_n(span, marker));
        pos = f.end;
    }
    while out.len() < out_len {
        out.push(at(pos));
        pos += 1;
    }
    out
}

/// Replaces every occurrence of the values of `vars` (name, value) that are
/// at least [`MIN_ENV_VALUE_LEN`] characters long by `[REDACTED:env:<name>]`,
/// and returns the names whose values occurred. Longer values are replaced
/// first, so a value containing another is redacted whole.
pub fn redact_env_values(text: &str, vars: &[(String, String)]) -> (String, Vec<String>) {
    let (out, hit) = redact_env_values_bytes(text.as_bytes(), vars);
    let out = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (out, hit)
}

/// [`redact_env_values`] for bytes.
pub fn redact_env_values_bytes(text: &[u8], vars: &[(String, String)]) -> (Vec<u8>, Vec<String>) {
    let mut vars: Vec<&(String, String)> = vars
        .iter()
        .filter(|(_, v)| v.chars().count() >= MIN_ENV_VALUE_LEN)
        .collect();
    vars.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = text.to_vec();
    let mut hit = Vec::new();
    for (name, value) in vars {
        let needle = value.as_bytes();
        if !contains(&out, needle) {
            continue;
        }
        let marker = format!("[REDACTED:env:{name}]");
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(needle) {
                next.extend_from_slice(marker.as_bytes());
                i += needle.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
        if !hit.contains(name) {
            hit.push(name.clone());
        }
    }
    (out, hit)
}

/// A finding in one named artifact, as a step result records it: rule and
/// place, never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    /// The artifact's file name (`report.md`, `raw_stdout.txt`, ...).
    pub artifact: String,
    /// A rule id, or `env:<NAME>` for a `SENSITIVE_ENV_VARS` value.
    pub rule_id: String,
    /// 1-based; 0 for env values (redacted wherever they occur).
    pub line: usize,
    pub column: usize,
}

/// Redacts one text artifact in place: first the `SENSITIVE_ENV_VARS`
/// values (so such a value is named by its variable), then the rules.
/// Appends what was found to `found`.
pub fn redact_artifact(
    artifact: &str,
    text: &mut String,
    env: &[(String, String)],
    found: &mut Vec<Located>,
) {
    let mut bytes = std::mem::take(text).into_bytes();
    redact_artifact_bytes(artifact, &mut bytes, env, found);
    *text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
}

/// [`redact_artifact`] for byte artifacts (raw agent streams).
pub fn redact_artifact_bytes(
    artifact: &str,
    bytes: &mut Vec<u8>,
    env: &[(String, String)],
    found: &mut Vec<Located>,
) {
    let (after_env, hit) = redact_env_values_bytes(bytes, env);
    for name in hit {
        found.push(Located {
            artifact: artifact.to_owned(),
            rule_id: format!("env:{name}"),
            line: 0,
            column: 0,
        });
    }
    let (redacted, findings) = scan_and_redact_bytes(&after_env);
    for f in findings {
        found.push(Located {
            artifact: artifact.to_owned(),
            rule_id: f.rule_id.to_owned(),
            line: f.line,
            column: f.column,
        });
    }
    *bytes = redacted;
}

/// Redacts every string of a JSON document in place, object keys included
/// (`metadata` keys are caller-chosen text): first the
/// `SENSITIVE_ENV_VARS` values, then the rules, exactly as
/// [`redact_artifact`] does for text. Working on the parsed document keeps
/// it valid JSON whatever a match spans (quotes, escapes). Returns the ids
/// of what was found (`env:<NAME>` or rule ids), one per occurrence.
pub fn redact_json_value(value: &mut serde_json::Value, env: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    redact_json_into(value, env, &mut found);
    found.into_iter().map(|l| l.rule_id).collect()
}

fn redact_json_into(
    value: &mut serde_json::Value,
    env: &[(String, String)],
    found: &mut Vec<Located>,
) {
    use serde_json::Value;
    match value {
        Value::String(s) => redact_artifact("json", s, env, found),
        Value::Array(items) => {
            for v in items {
                redact_json_into(v, env, found);
            }
        }
        Value::Object(map) => {
            // Rebuilt only when a key changes, so key order is kept.
            let keys_clean = map.keys().all(|k| {
                let mut probe = Vec::new();
                let mut k2 = k.clone();
                redact_artifact("json", &mut k2, env, &mut probe);
                probe.is_empty()
            });
            if keys_clean {
                for (k, v) in map.iter_mut() {
                    redact_json_into(v, env, found);
                    redact_by_key(k, v, found);
                }
            } else {
                let old = std::mem::take(map);
                for (mut k, mut v) in old {
                    redact_artifact("json", &mut k, env, found);
                    redact_json_into(&mut v, env, found);
                    redact_by_key(&k, &mut v, found);
                    map.insert(k, v);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Rules that need the name beside the value (`"db_password": "..."`,
/// the generic rule) see a key and its string value together, as they
/// would in text; what they find in the value is redacted.
fn redact_by_key(key: &str, value: &mut serde_json::Value, found: &mut Vec<Located>) {
    let serde_json::Value::String(v) = value else {
        return;
    };
    let probe = format!("{key}: {v}");
    let offset = key.len() + 2;
    let hits: Vec<Finding> = scan(&probe)
        .into_iter()
        .filter(|f| f.start >= offset)
        .map(|mut f| {
            f.start -= offset;
            f.end -= offset;
            f
        })
        .collect();
    if hits.is_empty() {
        return;
    }
    for f in &hits {
        found.push(Located {
            artifact: "json".to_owned(),
            rule_id: f.rule_id.to_owned(),
            line: f.line,
            column: f.column,
        });
    }
    *v = redact(v, &hits);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn line_col(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - line_start + 1)
}

/// Shannon entropy of the byte distribution, in bits per byte.
pub fn shannon_entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Values that are never secrets, whichever rule matched: placeholders and
/// obviously fake values.
fn allowed_value(v: &[u8]) -> bool {
    let lower = v.to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "example",
        "xxxxxxxx",
        "placeholder",
        "changeme",
        "redacted",
        "your_",
        "your-",
        "dummy",
        "sample",
        "0000000000",
    ];
    PLACEHOLDERS.iter().any(|p| contains(&lower, p.as_bytes()))
}

/// The allowlist of the generic rule: a value is not a secret when the name
/// says it is a hash/id, or the value is a UUID, a hex digest, an SRI
/// integrity string, a variable reference, a path, or a word-like
/// identifier (no digits).
fn allowed_generic(name: &[u8], v: &[u8]) -> bool {
    let name = name.to_ascii_lowercase();
    const HASHY_NAMES: &[&str] = &[
        "sha",
        "hash",
        "checksum",
        "digest",
        "integrity",
        "commit",
        "uuid",
        "etag",
        "revision",
        "keyword",
        "keyboard",
        "monkey",
        "keyring_backend",
        "author",
        "oauth_url",
    ];
    if HASHY_NAMES.iter().any(|h| contains(&name, h.as_bytes())) {
        return true;
    }
    let has_digit = v.iter().any(u8::is_ascii_digit);
    let has_alpha = v.iter().any(u8::is_ascii_alphabetic);
    if !has_digit || !has_alpha {
        return true;
    }
    if is_uuid(v) || is_hex(v) {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    // A value that spells out what it is ("...-SECRET-VALUE-...",
    // "fake-token-1") is a fixture or placeholder, not a credential.
    const SELF_DESCRIBING: &[&str] = &["secret", "password", "token", "fake", "test", "dummy"];
    if SELF_DESCRIBING
        .iter()
        .any(|w| contains(&lower, w.as_bytes()))
    {
        return true;
    }
    // SRI integrity (`sha512-...`), and dotted/pathy identifiers such as
    // `os.environ` or `crate::module`, are not credentials.
    if lower.starts_with(b"sha1-")
        || lower.starts_with(b"sha256-")
        || lower.starts_with(b"sha384-")
        || lower.starts_with(b"sha512-")
    {
        return true;
    }
    if v.starts_with(b"/") || v.starts_with(b"./") || v.starts_with(b"$") {
        return true;
    }
    // Identifiers made of words: snake/kebab/dotted names with few digits
    // (e.g. `step_result_v2_path`) rather than random strings.
    let separators = v
        .iter()
        .filter(|&&b| b == b'_' || b == b'.' || b == b'-')
        .count();
    let digits = v.iter().filter(|b| b.is_ascii_digit()).count();
    separators >= 2 && digits * 4 < v.len() && !looks_random(v)
}

/// True when a value mixes upper and lower case and digits the way random
/// tokens do (rather than identifiers in one case).
fn looks_random(v: &[u8]) -> bool {
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let lower = v.iter().any(u8::is_ascii_lowercase);
    let digit = v.iter().any(u8::is_ascii_digit);
    upper && lower && digit
}

fn is_hex(v: &[u8]) -> bool {
    v.len() >= 7 && v.iter().all(u8::is_ascii_hexdigit)
}

fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        assert_eq!(compiled().len(), RULES.len());
    }

    #[test]
    fn names_and_ids_are_not_secrets() {
        for text in [
            "export OPENAI_API_KEY",
            "OPENAI_API_KEY=${OPENAI_API_KEY}",
            "api_key = os.environ[\"OPENAI_API_KEY\"]",
            "token = \"550e8400-e29b-41d4-a716-446655440000\"",
            "commit_sha = \"3f82a11c9853a0500ab5d3f82a11c9853a0500ab\"",
            "\"integrity\": \"sha512-Q2FyZ28gbG9jayBpbnRlZ3JpdHkgaGFzaCBmb3IgdGVzdHM+\"",
            "secret_key: your_secret_key_here_123",
        ] {
            assert!(scan(text).is_empty(), "{text}: {:?}", scan(text));
        }
    }

    #[test]
    fn line_and_column_point_at_the_value() {
        let tok = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5");
        let text = format!("one\n  x = {tok}\n");
        let f = scan(&text);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].line, f[0].column), (2, 7));
        assert_eq!(redact(&text, &f), "one\n  x = [REDACTED:github-token]\n");
    }

    #[test]
    fn env_values_shorter_than_eight_are_kept() {
        let vars = vec![
            ("SHORT".to_owned(), "1234567".to_owned()),
            ("LONG".to_owned(), "hunter2-hunter2".to_owned()),
        ];
        let (out, hit) = redact_env_values("a 1234567 b hunter2-hunter2 c", &vars);
        assert_eq!(out, "a 1234567 b [REDACTED:env:LONG] c");
        assert_eq!(hit, vec!["LONG".to_owned()]);
    }
}
