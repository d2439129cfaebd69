//! The secrets scanner against synthetic tokens of every rule family and
//! against the project's own tree. Tokens are generated at test time from
//! split prefixes and a seeded generator, so no real-looking secret is ever
//! committed (and this file itself scans clean).

use artifacts::secrets::{self, Finding};
use std::path::{Path, PathBuf};

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` characters drawn from `alphabet`.
    fn chars(&mut self, alphabet: &str, n: usize) -> String {
        let a: Vec<char> = alphabet.chars().collect();
        (0..n)
            .map(|_| a[(self.next() % a.len() as u64) as usize])
            .collect()
    }
}

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const DIGITS: &str = "0123456789";

fn alnum() -> String {
    [UPPER, LOWER, DIGITS].concat()
}

/// (expected rule id, text containing the token, the token).
fn synthetic(seed: u64) -> Vec<(&'static str, String, String)> {
    let mut g = Gen(seed);
    let an = alnum();
    let b64 = [an.as_str(), "+/"].concat();
    let url = [an.as_str(), "_-"].concat();
    let letters = [UPPER, LOWER].concat();
    let mut out: Vec<(&'static str, String, String)> = Vec::new();
    let mut push = |rule: &'static str, prefix: &str, token: String, suffix: &str| {
        out.push((rule, format!("{prefix}{token}{suffix}"), token));
    };
    let aws_alpha = [UPPER, "234567"].concat();
    push(
        "aws-access-token",
        "id: ",
        ["AK", "IA"].concat() + &g.chars(&aws_alpha, 16),
        "\n",
    );
    push(
        "aws-secret-access-key",
        "aws_secret_access_key = ",
        g.chars(&b64, 40),
        "\n",
    );
    push(
        "gcp-api-key",
        "key=",
        ["AI", "za"].concat() + &g.chars(&url, 35),
        " ",
    );
    for kind in ["p", "o", "s", "r", "u"] {
        let prefix = format!("g{}{kind}_", "h");
        push("github-token", "GH=", prefix + &g.chars(&an, 36), "\n");
    }
    push(
        "github-fine-grained-pat",
        "",
        ["github_", "pat_"].concat() + &g.chars(&[an.as_str(), "_"].concat(), 82),
        "",
    );
    push(
        "gitlab-token",
        "",
        ["glp", "at-"].concat() + &g.chars(&url, 20),
        "\n",
    );
    push(
        "gitlab-token",
        "",
        ["glp", "tt-"].concat() + &g.chars("0123456789abcdef", 40),
        "\n",
    );
    push(
        "slack-token",
        "",
        format!(
            "{}{}-{}-{}",
            "xo",
            "xb",
            g.chars(DIGITS, 12),
            g.chars(DIGITS, 12)
        ) + "-"
            + &g.chars(&an, 24),
        " ",
    );
    push(
        "slack-webhook-url",
        "https://",
        ["hooks.sl", "ack.com/services/"].concat() + &g.chars(&an, 44),
        "\n",
    );
    push(
        "stripe-access-token",
        "",
        ["sk_", "live_"].concat() + &g.chars(&an, 24),
        "\n",
    );
    push(
        "npm-access-token",
        "//registry:_authToken=",
        ["np", "m_"].concat() + &g.chars(&an, 36),
        "\n",
    );
    push(
        "pypi-upload-token",
        "password = ",
        ["pypi-", "AgEIcHlwaS5vcmc"].concat() + &g.chars(&url, 60),
        "\n",
    );
    push(
        "huggingface-token",
        "",
        ["h", "f_"].concat() + &g.chars(&letters, 34),
        "\n",
    );
    push(
        "anthropic-api-key",
        "ANTHROPIC=",
        ["sk-", "ant-", "api03-"].concat() + &g.chars(&url, 93) + "AA",
        "\n",
    );
    push(
        "openai-api-key",
        "",
        ["sk-", "proj-"].concat() + &g.chars(&url, 120),
        "\n",
    );
    push(
        "openai-api-key",
        "",
        format!(
            "sk-{}{}{}",
            g.chars(&an, 20),
            ["T3Blbk", "FJ"].concat(),
            g.chars(&an, 20)
        ),
        "\n",
    );
    let body: Vec<String> = (0..4).map(|_| g.chars(&b64, 64)).collect();
    let pem = format!(
        "{dash}BEGIN RSA {pk}{dash}\n{}\n{dash}END RSA {pk}{dash}",
        body.join("\n"),
        dash = "-----",
        pk = ["PRIVATE", " KEY"].concat()
    );
    push("private-key", "key file:\n", pem, "\n");
    // crypt(3) hashes, `$` split so this file holds none.
    let crypt = [an.as_str(), "./"].concat();
    let d = "$";
    for (id, salt, hash) in [("1", 8, 22), ("5", 16, 43), ("6", 16, 86)] {
        push(
            "crypt-hash",
            "hash: ",
            format!(
                "{d}{id}{d}{}{d}{}",
                g.chars(&crypt, salt),
                g.chars(&crypt, hash)
            ),
            "\n",
        );
    }
    push(
        "crypt-hash",
        "hash: ",
        format!(
            "{d}y{d}j9T{d}{}{d}{}",
            g.chars(&crypt, 22),
            g.chars(&crypt, 43)
        ),
        "\n",
    );
    push(
        "crypt-hash",
        "pw=",
        format!("{d}2b{d}12{d}{}", g.chars(&crypt, 53)),
        "\n",
    );
    let user = g.chars(LOWER, 6);
    push(
        "shadow-entry",
        "",
        format!(
            "{user}:{d}6{d}{}{d}{}:19700:0:99999:7:::",
            g.chars(&crypt, 16),
            g.chars(&crypt, 86)
        ),
        "",
    );
    push("shadow-entry", "", "daemon:*:19700:0:99999:7:::".into(), "");
    let jwt = format!(
        "{}{}.{}{}.{}",
        "ey",
        ["J", &g.chars(&an, 30)].concat(),
        "ey",
        ["J", &g.chars(&url, 60)].concat(),
        g.chars(&url, 43)
    );
    push("jwt", "Authorization: Bearer ", jwt, "\n");
    push(
        "generic-secret",
        "db_password = \"",
        g.chars(&an, 24),
        "\"\n",
    );
    push("generic-secret", "client_secret: ", g.chars(&an, 32), "\n");
    out
}

#[test]
fn every_rule_family_is_found_and_redacted() {
    let families = synthetic(0x9E37_79B9_7F4A_7C15);
    let ids: std::collections::BTreeSet<&str> = families.iter().map(|(r, _, _)| *r).collect();
    for rule in secrets::rule_ids() {
        assert!(ids.contains(rule), "no synthetic token for rule {rule}");
    }
    for seed in [1u64, 42, 0xDEAD_BEEF, 0x9E37_79B9_7F4A_7C15] {
        for (rule, text, token) in synthetic(seed) {
            let text = format!("some context before\n{text}\nand after\n");
            let findings = secrets::scan(&text);
            assert!(
                findings.iter().any(|f| f.rule_id == rule),
                "seed {seed}: rule {rule} missed; got {findings:?}"
            );
            let red = secrets::redact(&text, &findings);
            assert!(
                !red.contains(&token),
                "seed {seed}: {rule} not redacted: {red}"
            );
            assert!(red.contains("[REDACTED:"), "{red}");
            assert!(red.starts_with("some context before\n") && red.ends_with("and after\n"));
            // Findings carry locations, never the value.
            let dbg = format!("{findings:?}");
            assert!(!dbg.contains(&token));
            // Bytes API agrees.
            let (red_b, f_b) = secrets::scan_and_redact_bytes(text.as_bytes());
            assert_eq!(f_b, findings);
            assert_eq!(red_b, red.as_bytes());
        }
    }
}

#[test]
fn all_tokens_in_one_document_are_redacted() {
    let families = synthetic(7);
    let doc: String = families
        .iter()
        .map(|(_, t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let (red, findings) = secrets::scan_and_redact(&doc);
    assert!(findings.len() >= families.len(), "{findings:?}");
    for (rule, _, token) in &families {
        assert!(!red.contains(token.as_str()), "{rule} leaked");
    }
}

#[test]
fn ids_hashes_and_variable_names_are_not_secrets() {
    let mut g = Gen(3);
    let hex = "0123456789abcdef";
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        g.chars(hex, 8),
        g.chars(hex, 4),
        g.chars(hex, 4),
        g.chars(hex, 4),
        g.chars(hex, 12)
    );
    let sha1 = g.chars(hex, 40);
    let sha256 = g.chars(hex, 64);
    let sri = format!(
        "sha512-{}==",
        g.chars(&[alnum().as_str(), "+/"].concat(), 86)
    );
    let texts = [
        "OPENAI_API_KEY".to_owned(),
        "set OPENAI_API_KEY and ANTHROPIC_API_KEY in the environment".to_owned(),
        "export OPENAI_API_KEY=\"$OPENAI_API_KEY\"".to_owned(),
        format!("job_id: {uuid}\nrequest token = {uuid}\n"),
        format!(
            "commit {sha1}\nindex {}..{} 100644\n",
            &sha1[..7],
            &sha256[..7]
        ),
        format!("checksum = \"{sha256}\"\n"),
        format!("\"integrity\": \"{sri}\",\n"),
        format!("api_key_hash = \"{sha256}\"\n"),
        "let token = read_token(&path)?;\n".to_owned(),
        "password = \"${DB_PASSWORD}\"\n".to_owned(),
    ];
    for t in &texts {
        let f = secrets::scan(t);
        assert!(f.is_empty(), "false positive in {t:?}: {f:?}");
    }
}

#[test]
fn sensitive_env_values_are_redacted_only_when_long_enough() {
    let vars = vec![
        ("API_TOKEN".to_owned(), "tok-0123456789".to_owned()),
        ("FLAG".to_owned(), "true".to_owned()),
    ];
    let (out, hit) = secrets::redact_env_values("x tok-0123456789 y true z", &vars);
    assert_eq!(out, "x [REDACTED:env:API_TOKEN] y true z");
    assert_eq!(hit, vec!["API_TOKEN".to_owned()]);
}

#[test]
fn huge_input_scans_in_reasonable_time() {
    let mut g = Gen(11);
    let mut text = g.chars(&alnum(), 2_000_000);
    text.push_str("\napi_key = \"");
    text.push_str(&g.chars(&alnum(), 30));
    text.push_str("\"\n");
    let t0 = std::time::Instant::now();
    let f: Vec<Finding> = secrets::scan(&text);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].line, 2);
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's own source tree, docs, examples and lock file scan clean:
/// a scanner that flags its own repository would be ignored by operators.
#[test]
fn the_repository_scans_clean() {
    let root = repo_root();
    let skip = [
        "target",
        ".git",
        "var",
        "artifacts",
        "workspaces",
        "node_modules",
        // The fuzz targets' seeds and findings are secret-shaped on purpose.
        "corpus",
        // The image build's cache (a root filesystem while it is built).
        ".cache",
    ];
    let mut problems = Vec::new();
    let mut files = 0;
    for entry in walkdir::WalkDir::new(&root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !skip.contains(&e.file_name().to_string_lossy().as_ref())
        })
        .flatten()
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue; // binary files are not part of the check
        };
        files += 1;
        for f in secrets::scan(&text) {
            problems.push(format!(
                "{}:{}:{} {}",
                entry
                    .path()
                    .strip_prefix(&root)
                    .unwrap_or(entry.path())
                    .display(),
                f.line,
                f.column,
                f.rule_id
            ));
        }
    }
    assert!(
        files > 20,
        "walked only {files} files under {}",
        root.display()
    );
    assert!(
        problems.is_empty(),
        "findings in the repository:\n{}",
        problems.join("\n")
    );
}

#[test]
fn artifacts_are_redacted_in_place_with_locations_only() {
    let families = synthetic(5);
    let (_, text, token) = &families[3];
    let mut report = format!("intro\n{text}");
    let mut raw = format!("key value: a-sensitive-value\n{text}").into_bytes();
    let env = vec![("MY_KEY".to_owned(), "a-sensitive-value".to_owned())];
    let mut found = Vec::new();
    secrets::redact_artifact("report.md", &mut report, &env, &mut found);
    secrets::redact_artifact_bytes("raw_stdout.txt", &mut raw, &env, &mut found);
    assert!(!report.contains(token.as_str()));
    let raw = String::from_utf8(raw).unwrap();
    assert!(
        !raw.contains(token.as_str()) && !raw.contains("a-sensitive-value"),
        "{raw}"
    );
    let ids: Vec<(&str, &str, usize)> = found
        .iter()
        .map(|l| (l.artifact.as_str(), l.rule_id.as_str(), l.line))
        .collect();
    assert_eq!(
        ids,
        [
            ("report.md", "github-token", 2),
            ("raw_stdout.txt", "env:MY_KEY", 0),
            ("raw_stdout.txt", "github-token", 2)
        ]
    );
    let json = serde_json::to_string(&found).unwrap();
    assert!(!json.contains(token.as_str()));
}

/// Every file the store publishes is redacted, job-level documents
/// included: a job whose goal, metadata (as values, as keys, and as
/// `name: value` pairs the generic rule needs both halves of) and context
/// carry a token of every rule family leaves none of them, nor a
/// 12-character prefix of one, anywhere in its directory — and every JSON
/// document stays valid. `SENSITIVE_ENV_VARS` values are redacted too.
#[test]
fn every_file_the_store_publishes_is_redacted() {
    use crate::support::{job_fixture, state_fixture, step_result};
    let families = synthetic(0x5EED);
    let env_value = "env-only-value-Zq81xYw3";
    let goal = families
        .iter()
        .map(|(_, text, _)| text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
        + "\nand "
        + env_value;
    let mut job = job_fixture("job-secrets-01");
    job.goal = goal.clone();
    for (i, (rule, text, token)) in families.iter().enumerate() {
        job.metadata
            .insert(format!("{rule}-{i}"), serde_json::json!(text));
        // As a key, a token is only recognisable by its own shape (a bare
        // 40-character AWS secret needs its name beside it, in a key as in
        // text).
        if !secrets::scan(token).is_empty() {
            job.metadata
                .insert(format!("k{i}-{token}"), serde_json::json!(i));
        }
    }
    // The generic rule only fires with the name beside the value.
    let pw = "Xr7pQ2mZk9LwT4vB8nC3";
    job.metadata
        .insert("db_password".into(), serde_json::json!(pw));
    job.context_window[0].content = goal.clone();
    let tmp = tempfile::tempdir().unwrap();
    let store = artifacts::ArtifactStore::new(tmp.path())
        .with_sensitive_env(vec![("DEPLOY_TOKEN".into(), env_value.into())]);
    let arts = store.job(&job.job_id);
    let mut state = state_fixture(&job);
    arts.init(&job, &state).unwrap();
    state.steps.get_mut("01_plan").unwrap().summary = goal.clone();
    arts.write_state(&state).unwrap();
    let step = &job.steps[0];
    arts.begin_step(step, 1).unwrap();
    let mut result = step_result(&job, 0, contracts::Status::Success);
    result.summary = goal.clone();
    arts.publish_step(
        &step.step_id,
        &artifacts::StepOutput {
            report_md: goal.clone(),
            patch_diff: String::new(),
            logs_txt: goal.clone(),
            result,
            raw_stdout: Some(goal.clone().into_bytes()),
            raw_stderr: None,
        },
    )
    .unwrap();
    let mut job_result = artifacts::running_job_result(&job.job_id);
    job_result.status = contracts::Status::Success;
    job_result.summary = goal.clone();
    job_result.steps = Some(vec![arts.read_step_result(&step.step_id).unwrap().unwrap()]);
    arts.finish_job(&job, &job_result).unwrap();

    let mut needles: Vec<String> = families.iter().map(|(_, _, t)| t.clone()).collect();
    needles.push(pw.to_owned());
    needles.push(env_value.to_owned());
    let prefixes: Vec<String> = needles
        .iter()
        .map(|n| n.chars().take(12).collect())
        .collect();
    needles.extend(prefixes);
    let mut files = 0;
    for entry in walkdir::WalkDir::new(arts.dir()) {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        files += 1;
        let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "{} holds {n:?}",
                entry.path().display()
            );
        }
        if entry.path().extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        }
    }
    assert!(files >= 12, "{files} files");
    let stored = arts.read_job().unwrap().unwrap();
    assert!(
        stored.goal.contains("[REDACTED:env:DEPLOY_TOKEN]"),
        "{}",
        stored.goal
    );
    assert!(
        stored.metadata["db_password"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:generic-secret]")
    );
}

/// A token glued to `name=<secret>` only ends (at `=`) once the secret is
/// a marker: redaction goes on until nothing matches, so the token does not
/// survive the first pass and redacting again changes nothing. (Found by
/// the `redact` fuzz target: `fuzz/artifacts/redact/`.)
#[test]
fn what_a_redaction_exposes_is_redacted_too() {
    let text = "Authorization: Bearer eyJ0123456789abcdefghij.eyJ3456789abcdefghijklmn.6789abcdefghijklmnopqrstuvwxyzIC_API_KEY=sk2a9f3b7c1d8e4f6a5b0c =1";
    let (once, found) = secrets::scan_and_redact(text);
    assert!(!once.contains("eyJ"), "{once}");
    assert!(secrets::scan(&once).is_empty(), "{once}");
    assert_eq!(secrets::scan_and_redact(&once).0, once);
    let ids: Vec<&str> = found.iter().map(|f| f.rule_id).collect();
    assert!(ids.contains(&"jwt"), "{ids:?}");
    for f in &found {
        assert!(f.start < f.end && f.end <= text.len(), "{f:?}");
    }
    let (bytes, _) = secrets::scan_and_redact_bytes(text.as_bytes());
    assert_eq!(bytes, once.as_bytes());
}
