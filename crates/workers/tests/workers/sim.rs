//! The simulated agents: realistic artifacts, determinism, scripted
//! failures through markers, and prompt cancellation.

use crate::support::{put, request, step};
use contracts::Status;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use workers::{Registry, Snapshot, StepOutcome, StepRequest, change_status, diff};

async fn run(reg: &Registry, req: &StepRequest) -> StepOutcome {
    let worker = reg.get(&req.step.agent).expect("agent registered");
    worker.run(req, CancellationToken::new()).await
}

#[tokio::test]
async fn registry_holds_the_three_agents() {
    let reg = Registry::simulated(Some(0));
    assert_eq!(reg.names(), ["claude", "codex", "opencode"]);
    assert!(reg.get("gemini").is_none());
    assert!(format!("{reg:?}").contains("codex"));
}

#[tokio::test]
async fn planner_reports_goal_and_task_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let req = request(
        step("01_plan", "opencode", "planner", "plan the greeting"),
        "add a greeting",
        tmp.path(),
    );
    let a = run(&reg, &req).await;
    let b = run(&reg, &req).await;
    assert_eq!(a.status, Status::Success, "{a:?}");
    assert!(a.report_md.contains("add a greeting"), "{}", a.report_md);
    assert!(a.report_md.contains("plan the greeting"), "{}", a.report_md);
    assert_eq!(a.report_md, b.report_md);
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.metrics["simulated"], true);
    assert_eq!(a.metrics["cost_usd"], 0.0);
    assert_eq!(a.metrics["tokens_in"], 0);
    assert!(a.metrics["duration_ms"].is_u64());
    assert!(a.error.is_none());
    assert!(a.logs.contains("step=01_plan"), "{}", a.logs);
    // A planner touches nothing.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn implementer_makes_a_real_change_and_reviewer_sees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    put(&work, "src/main.rs", "fn main() {}\n");
    let reg = Registry::simulated(Some(0));

    let before = Snapshot::take(&work).unwrap();
    let req = request(
        step("02_implement", "codex", "implementer", "implement it"),
        "add a greeting",
        &work,
    );
    let out = run(&reg, &req).await;
    assert_eq!(out.status, Status::Success, "{out:?}");
    let after = Snapshot::take(&work).unwrap();
    let patch = diff(&before, &after);
    assert_eq!(change_status(&patch), "changed");
    assert!(
        patch.starts_with("diff --git a/orch-sim/02_implement.md b/orch-sim/02_implement.md\nnew file mode 100644\n"),
        "{patch}"
    );
    assert!(patch.contains("+add a greeting\n"), "{patch}");
    assert!(out.report_md.contains("orch-sim/02_implement.md"));

    let review = request(
        step("03_review", "claude", "reviewer", "review it"),
        "add a greeting",
        &work,
    );
    let out = run(&reg, &review).await;
    assert_eq!(out.status, Status::Success, "{out:?}");
    assert!(
        out.report_md.contains("- `orch-sim/02_implement.md`"),
        "{}",
        out.report_md
    );
    assert!(
        out.report_md.contains("- `src/main.rs`"),
        "{}",
        out.report_md
    );
    // The reviewer is read-only.
    assert_eq!(diff(&after, &Snapshot::take(&work).unwrap()), "");
}

#[tokio::test]
async fn role_decides_behaviour_not_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let req = request(
        step("impl", "claude", "implementer", "do it"),
        "goal",
        tmp.path(),
    );
    assert_eq!(run(&reg, &req).await.status, Status::Success);
    assert!(tmp.path().join("orch-sim/impl.md").is_file());
}

#[tokio::test]
async fn no_changes_marker_leaves_the_workspace_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let before = Snapshot::take(tmp.path()).unwrap();
    let req = request(
        step(
            "02_implement",
            "codex",
            "implementer",
            "do it [sim:no_changes]",
        ),
        "g",
        tmp.path(),
    );
    assert_eq!(run(&reg, &req).await.status, Status::Success);
    assert_eq!(
        change_status(&diff(&before, &Snapshot::take(tmp.path()).unwrap())),
        "no_changes"
    );
}

#[tokio::test]
async fn markers_script_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let cases = [
        ("plan [sim:fail]", "goal", Status::Retryable, "sim_failure"),
        ("plan [sim:fatal]", "goal", Status::Failed, "sim_fatal"),
        (
            "plan [sim:needs_human]",
            "goal",
            Status::NeedsHuman,
            "needs_human",
        ),
        ("plan", "goal [sim:fatal]", Status::Failed, "sim_fatal"),
        (
            "plan",
            "goal [sim:fatal@01_plan]",
            Status::Failed,
            "sim_fatal",
        ),
        (
            "plan [sim:fail] [sim:needs_human]",
            "goal",
            Status::NeedsHuman,
            "needs_human",
        ),
    ];
    for (prompt, goal, status, code) in cases {
        let req = request(
            step("01_plan", "opencode", "planner", prompt),
            goal,
            tmp.path(),
        );
        let out = run(&reg, &req).await;
        assert_eq!(out.status, status, "{prompt} / {goal}");
        assert_eq!(out.error.as_ref().map(|e| e.code.as_str()), Some(code));
        assert!(!out.report_md.is_empty());
        assert_eq!(out.metrics["simulated"], true);
    }
    // Targeted at another step: no effect.
    let req = request(
        step("01_plan", "opencode", "planner", "plan"),
        "goal [sim:fatal@03_review]",
        tmp.path(),
    );
    assert_eq!(run(&reg, &req).await.status, Status::Success);
    // Markers only in the built prompt (e.g. an earlier step's prompt in the
    // context window) do not apply.
    let mut req = request(
        step("01_plan", "opencode", "planner", "plan"),
        "goal",
        tmp.path(),
    );
    req.prompt.push_str("\n[context] user: fix it [sim:fatal]");
    assert_eq!(run(&reg, &req).await.status, Status::Success);
}

#[tokio::test]
async fn fail_attempts_fails_then_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let mut req = request(
        step(
            "01_plan",
            "opencode",
            "planner",
            "plan [sim:fail_attempts=2]",
        ),
        "g",
        tmp.path(),
    );
    for (attempt, status) in [
        (1, Status::Retryable),
        (2, Status::Retryable),
        (3, Status::Success),
    ] {
        req.attempt = attempt;
        let out = run(&reg, &req).await;
        assert_eq!(out.status, status, "attempt {attempt}");
        assert_eq!(out.is_retryable(), status == Status::Retryable);
    }
}

#[tokio::test]
async fn cancellation_interrupts_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(None);
    for prompt in ["plan [sim:sleep=600000]", "plan [sim:hang]"] {
        let req = request(
            step("01_plan", "opencode", "planner", prompt),
            "g",
            tmp.path(),
        );
        let worker = reg.get("opencode").unwrap();
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            canceller.cancel();
        });
        let out = tokio::time::timeout(Duration::from_secs(10), worker.run(&req, cancel))
            .await
            .expect("cancelled promptly");
        assert_eq!(out.status, Status::Cancelled, "{prompt}");
        assert_eq!(out.error.unwrap().code, "cancelled");
    }
    // Already cancelled with no sleep at all: still cancelled, never success.
    let req = request(
        step("01_plan", "opencode", "planner", "plan"),
        "g",
        tmp.path(),
    );
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = Registry::simulated(Some(0))
        .get("opencode")
        .unwrap()
        .run(&req, cancel)
        .await;
    assert_eq!(out.status, Status::Cancelled);
}

#[tokio::test]
async fn sleep_marker_sets_the_duration() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::simulated(Some(0));
    let req = request(
        step("01_plan", "opencode", "planner", "plan [sim:sleep=30]"),
        "g",
        tmp.path(),
    );
    let out = run(&reg, &req).await;
    assert!(
        out.metrics["duration_ms"].as_u64().unwrap() >= 30,
        "{:?}",
        out.metrics
    );
}

#[tokio::test]
async fn implementer_refuses_a_symlinked_sim_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, work.join("orch-sim")).unwrap();
    let reg = Registry::simulated(Some(0));
    let req = request(
        step("02_implement", "codex", "implementer", "do"),
        "g",
        &work,
    );
    let out = run(&reg, &req).await;
    assert_eq!(out.status, Status::Failed);
    assert_eq!(out.error.unwrap().code, "sim_write_failed");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}
