//! `normalize` per SPEC §2.3: what each entry point fills, honours and
//! overrides, and that only runnable jobs come out.

use crate::support::{pointers, valid_job, with};
use contracts::normalize::{DEFAULT_PIPELINE, PipelineStep};
use contracts::{
    ArtifactHandoff, ContextStrategy, EntryPoint, NetworkPolicy, NormalizeOptions, SourceType,
    normalize, validate_job,
};
use serde_json::{Value, json};

fn webhook() -> EntryPoint {
    EntryPoint::Webhook {
        remote: "203.0.113.7".into(),
        delivery: Some("d-1".into()),
    }
}

fn manual() -> EntryPoint {
    EntryPoint::Manual {
        file: "job.json".into(),
    }
}

fn cron() -> EntryPoint {
    EntryPoint::Cron {
        schedule_id: "nightly".into(),
        slot: "2025-01-15T03:00:00Z".into(),
    }
}

fn opts() -> NormalizeOptions {
    NormalizeOptions::default()
}

#[test]
fn goal_only_payload_gets_the_default_pipeline() {
    let job = normalize(
        json!({ "goal": "  Add a health endpoint \n" }),
        &webhook(),
        &opts(),
    )
    .expect("valid");
    assert_eq!(job.schema_version, "1.0");
    assert_eq!(job.goal, "Add a health endpoint", "goal is trimmed");
    assert_eq!(job.job_id.as_str().len(), 32);
    assert!(
        job.job_id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(
        contracts::validate::is_rfc3339(&job.created_at),
        "{}",
        job.created_at
    );
    assert_eq!(job.source.kind, SourceType::Webhook);
    assert_eq!(job.source.meta["remote"], "203.0.113.7");
    assert_eq!(job.source.meta["delivery_id"], "d-1");
    assert_eq!(job.workdir, ".");
    assert_eq!(job.artifact_handoff, ArtifactHandoff::Manual);
    assert_eq!(job.context_strategy, ContextStrategy::Sliding);
    assert!(job.tags.is_empty() && job.metadata.is_empty() && job.context_window.is_empty());

    let table = [
        ("01_plan", "opencode", "planner", 120, vec![]),
        (
            "02_implement",
            "codex",
            "implementer",
            300,
            vec!["steps/01_plan/report.md"],
        ),
        (
            "03_review",
            "claude",
            "reviewer",
            180,
            vec![
                "steps/01_plan/report.md",
                "steps/02_implement/report.md",
                "steps/02_implement/patch.diff",
            ],
        ),
    ];
    assert_eq!(job.steps.len(), 3);
    for (step, (id, agent, role, timeout, inputs)) in job.steps.iter().zip(table) {
        assert_eq!(step.step_id.as_str(), id);
        assert_eq!(step.agent, agent);
        assert_eq!(step.role, role);
        assert_eq!(step.timeout_sec, timeout);
        assert_eq!(step.input_artifacts, inputs);
        assert_eq!((step.max_retries, step.retry_backoff_sec), (1, 2));
        assert_eq!(step.on_failure.as_string(), "stop");
        assert!(
            step.prompt.contains("Add a health endpoint"),
            "{}",
            step.prompt
        );
        assert!(!step.prompt.contains("{goal}"));
    }
}

#[test]
fn default_artifact_handoff_comes_from_options_unless_given() {
    let o = NormalizeOptions {
        default_artifact_handoff: Some(ArtifactHandoff::PatchFirst),
        ..opts()
    };
    let job = normalize(json!({ "goal": "g" }), &manual(), &o).expect("valid");
    assert_eq!(job.artifact_handoff, ArtifactHandoff::PatchFirst);
    let job = normalize(
        json!({ "goal": "g", "artifact_handoff": "workspace_first" }),
        &manual(),
        &o,
    )
    .expect("valid");
    assert_eq!(job.artifact_handoff, ArtifactHandoff::WorkspaceFirst);
}

#[test]
fn webhook_never_honours_client_job_id_or_workdir() {
    let payload = json!({ "goal": "g", "job_id": "client-chosen-id", "workdir": "/etc" });
    let job = normalize(payload, &webhook(), &opts()).expect("valid");
    assert_ne!(job.job_id.as_str(), "client-chosen-id");
    assert_eq!(job.job_id.as_str().len(), 32);
    assert_eq!(job.metadata["client_job_id"], "client-chosen-id");
    assert_eq!(job.workdir, ".");
    assert_eq!(job.metadata["ignored_workdir"], "/etc");

    // Even a hostile client id is just recorded: it never names anything.
    let job = normalize(
        json!({ "goal": "g", "job_id": "../../evil" }),
        &webhook(),
        &opts(),
    )
    .expect("valid");
    assert_eq!(job.metadata["client_job_id"], "../../evil");

    // The same holds for a complete job from the webhook.
    let job = normalize(valid_job(), &webhook(), &opts()).expect("valid");
    assert_ne!(job.job_id.as_str(), "0123456789abcdef0123456789abcdef");
    assert_eq!(
        job.metadata["client_job_id"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(job.metadata["k"], "v", "client metadata is kept");
}

#[test]
fn trusted_entry_points_honour_a_valid_client_job_id_and_refuse_an_invalid_one() {
    for entry in [manual(), cron()] {
        let job = normalize(
            json!({ "goal": "g", "job_id": "my-job-0001", "workdir": "/srv/repo" }),
            &entry,
            &opts(),
        )
        .expect("valid");
        assert_eq!(job.job_id.as_str(), "my-job-0001");
        assert_eq!(job.workdir, "/srv/repo");
        assert!(job.metadata.is_empty());

        let err = normalize(
            json!({ "goal": "g", "job_id": "../../evil" }),
            &entry,
            &opts(),
        )
        .expect_err("invalid id is a violation, not silently replaced");
        assert_eq!(pointers(&err), ["/job_id"]);
    }
}

#[test]
fn source_is_always_the_entry_points_truth() {
    let spoof =
        json!({ "goal": "g", "source": { "type": "cron", "meta": { "schedule_id": "x" } } });
    let job = normalize(spoof.clone(), &webhook(), &opts()).expect("valid");
    assert_eq!(job.source.kind, SourceType::Webhook);
    assert!(job.source.meta.get("schedule_id").is_none());

    let job = normalize(spoof.clone(), &manual(), &opts()).expect("valid");
    assert_eq!(job.source.kind, SourceType::Manual);
    assert_eq!(job.source.meta["file"], "job.json");

    let job = normalize(spoof, &cron(), &opts()).expect("valid");
    assert_eq!(job.source.kind, SourceType::Cron);
    assert_eq!(job.source.meta["schedule_id"], "nightly");
    assert_eq!(job.source.meta["slot"], "2025-01-15T03:00:00Z");

    // A malformed client source is dropped, not reported: it is not used.
    normalize(json!({ "goal": "g", "source": "evil" }), &manual(), &opts()).expect("valid");
    let no_delivery = EntryPoint::Webhook {
        remote: "r".into(),
        delivery: None,
    };
    let job = normalize(json!({ "goal": "g" }), &no_delivery, &opts()).expect("valid");
    assert_eq!(job.source.meta["delivery_id"], Value::Null);
}

#[test]
fn a_complete_job_is_taken_as_is() {
    let job = normalize(valid_job(), &manual(), &opts()).expect("valid");
    let reference = validate_job(&valid_job(), contracts::BUILTIN_AGENTS).expect("valid");
    assert_eq!(job.job_id, reference.job_id);
    assert_eq!(job.created_at, reference.created_at);
    // Taken as is, except that every step now says its access explicitly.
    let mut explicit = reference.steps.clone();
    for step in &mut explicit {
        step.access = Some(step.access());
    }
    assert_eq!(job.steps, explicit);
    assert_eq!(job.policy, reference.policy);
    assert_eq!(job.callback_url, reference.callback_url);
    assert_eq!(job.context_window, reference.context_window);
}

#[test]
fn every_optional_field_is_honoured_on_a_partial_payload() {
    let payload = json!({
        "goal": "g",
        "callback_url": "https://example.com/cb",
        "context_window": [{ "role": "user", "content": "c" }],
        "context_strategy": "full",
        "artifact_handoff": "patch_first",
        "tags": ["x"],
        "metadata": { "m": 1 },
        "policy": { "requires_approval": true, "network": "allow" },
        "project_id": "backend",
        "created_at": "2025-01-01T00:00:00Z"
    });
    let o = NormalizeOptions {
        project_ids: vec!["backend".into()],
        ..opts()
    };
    for entry in [webhook(), manual(), cron()] {
        let job = normalize(payload.clone(), &entry, &o).expect("valid");
        assert_eq!(job.callback_url.as_deref(), Some("https://example.com/cb"));
        assert_eq!(job.context_window.len(), 1);
        assert_eq!(job.context_strategy, ContextStrategy::Full);
        assert_eq!(job.artifact_handoff, ArtifactHandoff::PatchFirst);
        assert_eq!(job.tags, ["x"]);
        assert_eq!(job.metadata["m"], 1);
        assert!(job.policy.requires_approval && job.policy.sandbox);
        assert_eq!(job.policy.network, NetworkPolicy::Allow);
        assert_eq!(job.project_id.as_deref(), Some("backend"));
        assert_eq!(job.created_at, "2025-01-01T00:00:00Z");
        assert_eq!(job.steps.len(), 3);
    }
}

#[test]
fn partial_steps_get_their_defaults() {
    let payload = json!({
        "goal": "g",
        "steps": [{ "step_id": "only", "agent": "claude", "role": "reviewer", "prompt": "look" }]
    });
    let job = normalize(payload, &manual(), &opts()).expect("valid");
    let s = &job.steps[0];
    assert_eq!(
        (s.timeout_sec, s.max_retries, s.retry_backoff_sec),
        (600, 1, 2)
    );
    assert!(s.input_artifacts.is_empty() && s.apply_patches_from.is_empty());
    assert_eq!(s.allowed_tools, None);
    assert_eq!(s.on_failure.as_string(), "stop");
}

#[test]
fn project_id_must_be_configured() {
    let o = NormalizeOptions {
        project_ids: vec!["backend".into()],
        ..opts()
    };
    let err = normalize(
        json!({ "goal": "g", "project_id": "frontend" }),
        &webhook(),
        &o,
    )
    .expect_err("unknown project");
    assert_eq!(pointers(&err), ["/project_id"]);
    assert!(
        !err.0[0].message.contains("backend"),
        "lists configured projects: {err}"
    );
    // With no projects configured every project id is unknown; null is fine.
    normalize(
        json!({ "goal": "g", "project_id": "backend" }),
        &webhook(),
        &opts(),
    )
    .expect_err("no projects configured");
    normalize(
        json!({ "goal": "g", "project_id": null }),
        &webhook(),
        &opts(),
    )
    .expect("null");
    // A syntactically bad id is reported once, by validation.
    let err =
        normalize(json!({ "goal": "g", "project_id": "../x" }), &webhook(), &o).expect_err("bad");
    assert_eq!(pointers(&err), ["/project_id"]);
}

#[test]
fn normalize_reports_every_violation_together() {
    let o = NormalizeOptions {
        project_ids: vec!["backend".into()],
        ..opts()
    };
    let payload = json!({
        "goal": " ",
        "tags": "a,b",
        "metadata": "m",
        "project_id": "nope",
        "surprise": 1,
        "steps": [{ "step_id": "a", "agent": "codex", "role": "r", "prompt": "p", "timeout_sec": 0 }]
    });
    let err = normalize(payload, &webhook(), &o).expect_err("refused");
    let mut got = pointers(&err);
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "/goal",
            "/metadata",
            "/project_id",
            "/steps/0/timeout_sec",
            "/surprise",
            "/tags"
        ],
        "{err}"
    );
}

#[test]
fn a_missing_or_bad_goal_is_the_only_violation_of_a_goal_only_payload() {
    let huge = "g".repeat(30_000);
    for payload in [
        json!({}),
        json!({ "goal": null }),
        json!({ "goal": "" }),
        json!({ "goal": huge }),
    ] {
        let err = normalize(payload, &webhook(), &opts()).expect_err("no goal");
        assert_eq!(pointers(&err), ["/goal"], "{err}");
    }
}

#[test]
fn non_object_payloads_are_refused_at_the_root() {
    for payload in [json!([]), json!("goal"), json!(42), json!(null)] {
        let err = normalize(payload, &manual(), &opts()).expect_err("not an object");
        assert_eq!(pointers(&err), [""]);
        assert!(err.0[0].message.contains("JSON object"), "{err}");
    }
}

#[test]
fn explicit_nulls_of_optional_fields_mean_default() {
    let payload = json!({
        "goal": "g", "job_id": null, "tags": null, "metadata": null, "steps": null,
        "policy": null, "context_window": null, "workdir": null, "created_at": null
    });
    let job = normalize(payload, &manual(), &opts()).expect("valid");
    assert_eq!(job.steps.len(), 3);
    assert_eq!(job.workdir, ".");
}

#[test]
fn configured_agents_replace_the_builtin_list() {
    let payload = json!({
        "goal": "g",
        "steps": [{ "step_id": "a", "agent": "gemini", "role": "r", "prompt": "p" }]
    });
    let err = normalize(payload.clone(), &manual(), &opts()).expect_err("unknown agent");
    assert_eq!(pointers(&err), ["/steps/0/agent"]);
    let o = NormalizeOptions {
        known_agents: vec!["gemini".into()],
        ..opts()
    };
    normalize(payload, &manual(), &o).expect("configured agent");
}

#[test]
fn extra_metadata_is_merged_and_wins() {
    let mut extra = serde_json::Map::new();
    extra.insert("gateway".into(), json!("gw-1"));
    extra.insert("k".into(), json!("server"));
    let o = NormalizeOptions {
        extra_metadata: extra,
        ..opts()
    };
    let job = normalize(
        json!({ "goal": "g", "metadata": { "k": "client", "c": 1 } }),
        &webhook(),
        &o,
    )
    .expect("valid");
    assert_eq!(job.metadata["gateway"], "gw-1");
    assert_eq!(job.metadata["k"], "server");
    assert_eq!(job.metadata["c"], 1);
}

#[test]
fn prompts_dir_overrides_templates_file_by_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("01_plan.md"),
        "CUSTOM PLAN for {goal} ({goal})",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("03_review.md"),
        "Review without placeholder",
    )
    .expect("write");
    let o = NormalizeOptions {
        prompts_dir: Some(dir.path().to_owned()),
        ..opts()
    };
    let job = normalize(json!({ "goal": "G1" }), &manual(), &o).expect("valid");
    assert_eq!(job.steps[0].prompt, "CUSTOM PLAN for G1 (G1)");
    assert_eq!(
        job.steps[1].prompt,
        PipelineStep::render(DEFAULT_PIPELINE[1].embedded_template, "G1"),
        "missing override falls back to the embedded template"
    );
    assert!(
        job.steps[2]
            .prompt
            .starts_with("Review without placeholder")
    );
    assert!(job.steps[2].prompt.contains("G1"), "the goal is appended");
}

#[test]
fn an_unreadable_template_is_an_error_not_a_silent_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where a file is expected: exists, but cannot be read.
    std::fs::create_dir(dir.path().join("02_implement.md")).expect("mkdir");
    let o = NormalizeOptions {
        prompts_dir: Some(dir.path().to_owned()),
        ..opts()
    };
    let err = normalize(json!({ "goal": "g" }), &manual(), &o).expect_err("unreadable");
    assert_eq!(pointers(&err), ["/steps"]);
    assert!(err.0[0].message.contains("02_implement.md"));
    assert!(
        !err.0[0].message.contains(&dir.path().display().to_string()),
        "leaks the path"
    );
}

#[test]
fn normalised_jobs_round_trip_through_validation_and_the_schema() {
    for payload in [
        json!({ "goal": "g" }),
        valid_job(),
        with(valid_job(), "/workdir", json!("/x")),
    ] {
        for entry in [webhook(), manual(), cron()] {
            let job = normalize(payload.clone(), &entry, &opts()).expect("valid");
            let v = serde_json::to_value(&job).expect("serialises");
            contracts::schema::check(contracts::SchemaKind::Job, &v)
                .unwrap_or_else(|e| panic!("{e}\n{v:#}"));
            let again = validate_job(&v, contracts::BUILTIN_AGENTS).expect("revalidates");
            assert_eq!(again, job);
            // Normalising a normalised job from a trusted entry point changes nothing.
            if entry != webhook() {
                let twice = normalize(v, &entry, &opts()).expect("valid");
                assert_eq!(twice, job);
            }
        }
    }
}

/// Every normalised step carries `access`: the explicit value when given,
/// else its role's from the exact table, and read for any other role (a
/// misspelt reviewer never gets write access). Other values are refused.
#[test]
fn every_step_gets_an_explicit_access() {
    use contracts::Access;
    let step = |id: &str, role: &str, access: Option<&str>| {
        let mut s = json!({ "step_id": id, "agent": "codex", "role": role, "prompt": "p" });
        if let Some(a) = access {
            s["access"] = json!(a);
        }
        s
    };
    let payload = json!({ "goal": "g", "steps": [
        step("a", "implementer", None),
        step("b", "reviwer", None),
        step("c", "Implementer ", None),
        step("d", "reviewer", Some("write")),
        step("e", "implementer", Some("read")),
        step("f", "senior implementer", None),
    ]});
    let job = normalize(payload, &manual(), &opts()).expect("valid");
    let got: Vec<Option<Access>> = job.steps.iter().map(|s| s.access).collect();
    use Access::{Read, Write};
    assert_eq!(
        got,
        [
            Some(Write),
            Some(Read),
            Some(Write),
            Some(Write),
            Some(Read),
            Some(Read)
        ]
    );
    let doc = serde_json::to_value(&job).unwrap();
    assert_eq!(doc["steps"][1]["access"], "read");
    for bad in [json!("admin"), json!(true), json!("READ")] {
        let mut s = step("a", "implementer", None);
        s["access"] = bad.clone();
        let err = normalize(json!({ "goal": "g", "steps": [s] }), &manual(), &opts()).unwrap_err();
        assert_eq!(pointers(&err), ["/steps/0/access"], "{bad}");
    }
}
