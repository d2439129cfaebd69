//! Integration tests of the artifacts tree against real temporary
//! directories: the layout and modes SPEC §4 promises, resume behaviour, and
//! the hostile cases (planted symlinks, `..`, FIFOs, symlinked job dirs).

mod budget;
mod control;
mod secrets;
mod secrets_props;
mod support;

use artifacts::{ArtifactError, ArtifactStore, StepOutput, layout};
use contracts::{JobId, ResultDoc, Status, StepId};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use support::{job_fixture, state_fixture, step_result, validate_result};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_all_seven_files_with_group_readable_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path().join("artifacts"));
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();

    for name in layout::JOB_FILES {
        let p = arts.dir().join(name);
        assert!(p.is_file(), "{name} missing");
        assert_eq!(mode(&p), 0o640, "{name}");
    }
    assert_eq!(mode(arts.dir()), 0o750);
    assert_eq!(mode(&arts.dir().join("steps")), 0o750);
    assert_eq!(arts.read_job().unwrap().unwrap(), job);
    let ctx = arts.read_context().unwrap().unwrap();
    assert_eq!(ctx.messages, job.context_window);
    assert_eq!(ctx.strategy, job.context_strategy);
    let result = arts.read_result().unwrap().unwrap();
    assert_eq!(result.status, Status::Running);
    validate_result(&arts.dir().join("result.json"));
    assert_eq!(arts.read_state().unwrap().unwrap().job_id, "job-00000001");
    assert!(store.exists(&job.job_id));
}

#[test]
fn init_refuses_a_job_of_another_id() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let other = store.job(&JobId::parse("job-00000002").unwrap());
    let err = other.init(&job, &state_fixture(&job)).unwrap_err();
    assert!(matches!(err, ArtifactError::Mismatch { .. }), "{err}");
    assert!(!other.dir().exists());
}

#[test]
fn resume_keeps_step_artifacts_and_context() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let step = &job.steps[0];
    arts.begin_step(step, 1).unwrap();
    arts.publish_step(
        &step.step_id,
        &StepOutput {
            report_md: "the plan\n".into(),
            patch_diff: String::new(),
            logs_txt: "log\n".into(),
            result: step_result(&job, 0, Status::Success),
            raw_stdout: None,
            raw_stderr: None,
        },
    )
    .unwrap();
    let mut ctx = arts.read_context().unwrap().unwrap();
    ctx.messages.push(contracts::ContextMessage {
        role: "assistant".into(),
        content: "step 01_plan: success".into(),
        extra: Default::default(),
    });
    arts.write_context(&ctx).unwrap();
    let mut failed = contracts::ResultDoc {
        status: Status::Failed,
        ..artifacts::running_job_result(&job.job_id)
    };
    failed.finished_at = contracts::now_rfc3339();
    arts.write_result(&failed).unwrap();

    // A second runner resumes the job.
    arts.init(&job, &state_fixture(&job)).unwrap();
    assert_eq!(
        std::fs::read_to_string(arts.step_dir(&step.step_id).join("report.md")).unwrap(),
        "the plan\n"
    );
    let kept = arts.read_step_result(&step.step_id).unwrap().unwrap();
    assert_eq!(kept.status, Status::Success);
    assert_eq!(arts.read_context().unwrap().unwrap(), ctx);
    let again = arts.read_result().unwrap().unwrap();
    assert_eq!(again.status, Status::Running);
    assert_eq!(again.finished_at, "");
}

#[test]
fn begin_step_creates_four_files_and_keeps_earlier_attempt_until_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let step = &job.steps[1];
    let running = arts.begin_step(step, 1).unwrap();
    assert_eq!(running.status, Status::Running);
    assert_eq!(running.artifacts.report_md, "steps/02_implement/report.md");
    let dir = arts.step_dir(&step.step_id);
    for name in layout::STEP_FILES {
        assert!(dir.join(name).is_file(), "{name}");
        assert_eq!(mode(&dir.join(name)), 0o640);
    }
    validate_result(&dir.join("result.json"));

    let mut failed = step_result(&job, 1, Status::Retryable);
    failed.error = Some(contracts::ErrorInfo::new("agent_crash", "boom"));
    arts.publish_step(
        &step.step_id,
        &StepOutput {
            report_md: "attempt 1\n".into(),
            patch_diff: "diff\n".into(),
            logs_txt: "crashed\n".into(),
            result: failed,
            raw_stdout: Some(b"out".to_vec()),
            raw_stderr: Some(b"err".to_vec()),
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.join("raw_stdout.txt")).unwrap(), b"out");

    let second = arts.begin_step(step, 2).unwrap();
    assert_eq!(second.attempts, 2);
    assert_eq!(
        arts.read_step_result(&step.step_id)
            .unwrap()
            .unwrap()
            .status,
        Status::Running
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("report.md")).unwrap(),
        "attempt 1\n"
    );

    let mut ok = step_result(&job, 1, Status::Success);
    ok.attempts = 2;
    arts.publish_step(
        &step.step_id,
        &StepOutput {
            report_md: "attempt 2\n".into(),
            patch_diff: String::new(),
            logs_txt: String::new(),
            result: ok,
            raw_stdout: None,
            raw_stderr: None,
        },
    )
    .unwrap();
    // Stale raw streams of the failed attempt are gone.
    assert!(!dir.join("raw_stdout.txt").exists());
    assert!(!dir.join("raw_stderr.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("report.md")).unwrap(),
        "attempt 2\n"
    );
    validate_result(&dir.join("result.json"));
}

#[test]
fn publish_step_refuses_foreign_results() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let out = |result: ResultDoc| StepOutput {
        report_md: String::new(),
        patch_diff: String::new(),
        logs_txt: String::new(),
        result,
        raw_stdout: None,
        raw_stderr: None,
    };
    let wrong_step = step_result(&job, 1, Status::Success);
    let err = arts
        .publish_step(&job.steps[0].step_id, &out(wrong_step))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::Mismatch {
                what: "step_id",
                ..
            }
        ),
        "{err}"
    );
    let mut wrong_job = step_result(&job, 0, Status::Success);
    wrong_job.job_id = "job-99999999".into();
    let err = arts
        .publish_step(&job.steps[0].step_id, &out(wrong_job))
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::Mismatch { what: "job_id", .. }),
        "{err}"
    );
}

#[test]
fn finish_job_writes_aggregates_then_result() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let mut steps = Vec::new();
    for (i, step) in job.steps.iter().enumerate().take(2) {
        arts.begin_step(step, 1).unwrap();
        let r = step_result(&job, i, Status::Success);
        arts.publish_step(
            &step.step_id,
            &StepOutput {
                report_md: format!("report of {}", step.step_id),
                patch_diff: format!("diff --git a/{0} b/{0}\n", step.step_id),
                logs_txt: format!("log of {}\n", step.step_id),
                result: r.clone(),
                raw_stdout: None,
                raw_stderr: None,
            },
        )
        .unwrap();
        steps.push(arts.read_step_result(&step.step_id).unwrap().unwrap());
    }
    let mut result = artifacts::running_job_result(&job.job_id);
    result.status = Status::Success;
    result.finished_at = contracts::now_rfc3339();
    result.steps = Some(steps);
    arts.finish_job(&job, &result).unwrap();

    let report = std::fs::read_to_string(arts.dir().join("report.md")).unwrap();
    assert!(
        report.starts_with("# Job job-00000001\n\nadd a greeting\n"),
        "{report}"
    );
    assert!(
        report.contains("## Step 01_plan (opencode:planner)\n"),
        "{report}"
    );
    assert!(report.contains("report of 01_plan\n"), "{report}");
    assert!(
        report.contains("## Step 02_implement (codex:implementer)\n"),
        "{report}"
    );
    assert!(
        !report.contains("03_review"),
        "only executed steps: {report}"
    );
    let patch = std::fs::read_to_string(arts.dir().join("patch.diff")).unwrap();
    assert_eq!(
        patch,
        "# step 01_plan (opencode:planner) status=success\ndiff --git a/01_plan b/01_plan\n\
         # step 02_implement (codex:implementer) status=success\ndiff --git a/02_implement b/02_implement\n"
    );
    let logs = std::fs::read_to_string(arts.dir().join("logs.txt")).unwrap();
    assert!(
        logs.contains(
            "# step 02_implement (codex:implementer) status=success\nlog of 02_implement\n"
        )
    );
    let back = arts.read_result().unwrap().unwrap();
    assert_eq!(back.status, Status::Success);
    assert_eq!(back.steps.as_ref().unwrap().len(), 2);
    validate_result(&arts.dir().join("result.json"));
}

#[test]
fn finish_job_survives_a_planted_symlink_in_a_step_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path().join("a"));
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    arts.begin_step(&job.steps[0], 1).unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "TOP SECRET").unwrap();
    let report = arts.step_dir(&job.steps[0].step_id).join("report.md");
    std::fs::remove_file(&report).unwrap();
    symlink(&secret, &report).unwrap();
    let mut result = artifacts::running_job_result(&job.job_id);
    result.status = Status::Failed;
    result.steps = Some(vec![step_result(&job, 0, Status::Failed)]);
    arts.finish_job(&job, &result).unwrap();
    let agg = std::fs::read_to_string(arts.dir().join("report.md")).unwrap();
    assert!(!agg.contains("TOP SECRET"), "{agg}");
    assert!(agg.contains("[invalid_path]"), "{agg}");
}

#[test]
fn read_file_refuses_escapes_and_planted_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path().join("artifacts"));
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    arts.begin_step(&job.steps[0], 1).unwrap();
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "root:x:0:0").unwrap();

    for rel in [
        "../outside.txt",
        "/etc/passwd",
        "steps/../../outside.txt",
        "",
        "..",
    ] {
        let err = arts.read_file(rel, 1000).unwrap_err();
        assert!(
            matches!(err, ArtifactError::Escape { .. }),
            "{rel:?}: {err}"
        );
        assert!(err.is_invalid_path());
    }

    // A symlink planted at a step file.
    let x = tmp.path().join("artifacts/job-00000001/steps/x");
    std::fs::create_dir(&x).unwrap();
    symlink("/etc/passwd", x.join("report.md")).unwrap();
    let err = arts.read_file("steps/x/report.md", 1000).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");

    // A symlinked directory in the middle of the path.
    symlink(tmp.path(), arts.dir().join("steps/y")).unwrap();
    let err = arts.read_file("steps/y/outside.txt", 1000).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");

    // A relative symlink that would resolve inside the tree is still refused.
    symlink("report.md", arts.dir().join("alias.md")).unwrap();
    let err = arts.read_file("alias.md", 1000).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");

    // Directories and FIFOs are not files (and a FIFO must not block).
    let err = arts.read_file("steps", 1000).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongType { .. }), "{err}");
    let fifo = arts.dir().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = arts.read_file("fifo", 1000).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongType { .. }), "{err}");

    let err = arts
        .read_file("steps/01_plan/nothing.md", 1000)
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!err.is_invalid_path());
}

#[test]
fn read_file_reads_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    arts.begin_step(&job.steps[0], 1).unwrap();
    arts.publish_step(
        &job.steps[0].step_id,
        &StepOutput {
            report_md: "0123456789".into(),
            patch_diff: String::new(),
            logs_txt: String::new(),
            result: step_result(&job, 0, Status::Success),
            raw_stdout: None,
            raw_stderr: None,
        },
    )
    .unwrap();
    let r = arts.read_file("./steps/01_plan/report.md", 4).unwrap();
    assert_eq!(
        (r.data.as_slice(), r.truncated, r.size),
        (&b"0123"[..], true, 10)
    );
    let r = arts.read_file("steps/01_plan/report.md", 10).unwrap();
    assert_eq!(
        (r.data.as_slice(), r.truncated),
        (&b"0123456789"[..], false)
    );
}

#[test]
fn a_symlinked_job_dir_is_neither_read_nor_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("artifacts");
    std::fs::create_dir(&root).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("state.json"), "{}").unwrap();
    let id = JobId::parse("job-00000001").unwrap();
    symlink(&elsewhere, root.join(id.as_str())).unwrap();
    let store = ArtifactStore::new(&root);
    let job = job_fixture(id.as_str());
    let arts = store.job(&id);

    assert!(!store.exists(&id));
    assert!(store.list_job_ids().unwrap().is_empty());
    let err = arts.init(&job, &state_fixture(&job)).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");
    let err = arts.read_state().unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");
    let err = arts.read_file("state.json", 100).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");
    // Nothing was written through the link.
    let names: Vec<_> = std::fs::read_dir(&elsewhere)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.json"]);
}

#[test]
fn writes_refuse_a_symlinked_steps_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path().join("artifacts"));
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(arts.dir().join("steps")).unwrap();
    symlink(&elsewhere, arts.dir().join("steps")).unwrap();

    let err = arts.begin_step(&job.steps[0], 1).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let err = arts.read_step_result(&job.steps[0].step_id).unwrap_err();
    assert!(matches!(err, ArtifactError::Symlink { .. }), "{err}");
}

#[test]
fn a_symlink_planted_at_a_file_name_is_replaced_not_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path().join("artifacts"));
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let step_dir = arts.step_dir(&job.steps[0].step_id);
    std::fs::create_dir_all(&step_dir).unwrap();
    symlink(&victim, step_dir.join("logs.txt")).unwrap();
    std::fs::remove_file(arts.dir().join("state.json")).unwrap();
    symlink(&victim, arts.dir().join("state.json")).unwrap();

    arts.begin_step(&job.steps[0], 1).unwrap();
    arts.write_state(&state_fixture(&job)).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    for p in [step_dir.join("logs.txt"), arts.dir().join("state.json")] {
        assert!(
            std::fs::symlink_metadata(&p).unwrap().is_file(),
            "{}",
            p.display()
        );
    }
}

#[test]
fn list_job_ids_skips_strays_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = ArtifactStore::new(root);
    for id in ["job-00000002", "job-00000001"] {
        let job = job_fixture(id);
        store
            .job(&job.job_id)
            .init(&job, &state_fixture(&job))
            .unwrap();
    }
    std::fs::create_dir(root.join("..hidden")).unwrap();
    std::fs::create_dir(root.join(".orch-tmp-x")).unwrap();
    std::fs::create_dir(root.join("short")).unwrap();
    std::fs::write(root.join("job-00000003"), "a file").unwrap();
    symlink(root.join("job-00000001"), root.join("job-00000004")).unwrap();
    let ids: Vec<String> = store
        .list_job_ids()
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids, ["job-00000001", "job-00000002"]);
    assert!(
        ArtifactStore::new(root.join("missing"))
            .list_job_ids()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn delete_job_removes_the_tree_without_following_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("artifacts");
    let store = ArtifactStore::new(&root);
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    arts.begin_step(&job.steps[0], 1).unwrap();
    let precious = tmp.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("data"), "keep").unwrap();
    symlink(&precious, arts.step_dir(&job.steps[0].step_id).join("link")).unwrap();

    assert!(store.delete_job(&job.job_id).unwrap());
    assert!(!arts.dir().exists());
    assert_eq!(
        std::fs::read_to_string(precious.join("data")).unwrap(),
        "keep"
    );
    assert!(!store.delete_job(&job.job_id).unwrap());
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "no tombstone left"
    );

    // A symlink in place of a job directory: the link goes, the target stays.
    let id = JobId::parse("job-00000002").unwrap();
    symlink(&precious, root.join(id.as_str())).unwrap();
    assert!(store.delete_job(&id).unwrap());
    assert!(precious.join("data").exists());

    // A tombstone left by a crash is swept.
    std::fs::create_dir_all(root.join(".orch-deleting-job-00000003-1-0/steps")).unwrap();
    assert_eq!(store.remove_stale_tombstones().unwrap(), 1);
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[test]
fn step_ids_build_the_only_paths() {
    // The relative paths in result.json agree with where the files are.
    let tmp = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(tmp.path());
    let job = job_fixture("job-00000001");
    let arts = store.job(&job.job_id);
    arts.init(&job, &state_fixture(&job)).unwrap();
    let r = arts.begin_step(&job.steps[2], 1).unwrap();
    for rel in [
        &r.artifacts.report_md,
        &r.artifacts.patch_diff,
        &r.artifacts.logs_txt,
        &r.artifacts.result_json,
    ] {
        arts.read_file(rel, 1 << 20).unwrap();
    }
    let id = StepId::parse("03_review").unwrap();
    assert_eq!(arts.step_dir(&id), arts.dir().join("steps/03_review"));
}
