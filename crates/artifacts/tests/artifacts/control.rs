//! Operator actions: each is one queue move, and the ones that end a job
//! leave artifacts that say so.

use artifacts::ArtifactStore;
use artifacts::control::{Action, Outcome, apply};
use contracts::{JobId, Status};
use fsqueue::{Queue, QueueError, State};

fn setup(state: State) -> (tempfile::TempDir, Queue, ArtifactStore, JobId) {
    let d = tempfile::tempdir().unwrap();
    let q = Queue::open(d.path().join("queue")).unwrap();
    let store = ArtifactStore::new(d.path().join("artifacts"));
    let entry = contracts::EntryPoint::Manual { file: "t".into() };
    let job = contracts::normalize(
        serde_json::json!({"goal": "operator actions"}),
        &entry,
        &contracts::NormalizeOptions::default(),
    )
    .unwrap();
    q.enqueue(
        job.job_id.as_str(),
        &serde_json::to_vec(&job).unwrap(),
        5,
        state,
    )
    .unwrap();
    (d, q, store, job.job_id)
}

#[test]
fn reject_ends_a_waiting_job_as_cancelled_with_artifacts() {
    let (_d, q, store, id) = setup(State::AwaitingApproval);
    // Approve-only actions refuse the wrong state with the actual one.
    let err = apply(&q, &store, &id, Action::Retry).unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::WrongState {
                actual: State::AwaitingApproval,
                ..
            }
        ),
        "{err}"
    );
    match apply(&q, &store, &id, Action::Reject).unwrap() {
        Outcome::Moved(l) => assert_eq!(l.state, State::Failed),
        o => panic!("{o:?}"),
    }
    let arts = store.job(&id);
    assert_eq!(
        arts.read_state().unwrap().unwrap().status,
        Status::Cancelled
    );
    let r = arts.read_result().unwrap().unwrap();
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(r.error.unwrap().code, "rejected");
    // Retry brings it back to pending.
    assert!(
        matches!(apply(&q, &store, &id, Action::Retry).unwrap(), Outcome::Moved(l) if l.state == State::Pending)
    );
}

#[test]
fn cancel_of_a_running_job_is_a_request() {
    let (_d, q, store, id) = setup(State::Pending);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let claimer = rt.block_on(async { fsqueue::Claimer::new(q.clone(), "r1").unwrap() });
    let claim = claimer.try_claim().unwrap().unwrap();
    assert!(matches!(
        apply(&q, &store, &id, Action::Cancel).unwrap(),
        Outcome::CancelRequested
    ));
    assert!(q.has_request(&claim.loc, "cancel", false));
    // Unlock forces it out of running/ and records the failure.
    apply(&q, &store, &id, Action::Unlock).unwrap();
    assert_eq!(q.find(id.as_str()).unwrap().unwrap().state, State::Failed);
    assert_eq!(
        store
            .job(&id)
            .read_result()
            .unwrap()
            .unwrap()
            .error
            .unwrap()
            .code,
        "unlocked"
    );
    // Unknown ids are NotFound.
    let other = JobId::parse("0123456789abcdef0123456789abcdef").unwrap();
    assert!(matches!(
        apply(&q, &store, &other, Action::Approve),
        Err(QueueError::NotFound { .. })
    ));
}

#[test]
fn requests_belong_to_one_claim_and_retry_clears_them() {
    let (_d, q, store, id) = setup(State::Pending);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let claimer = rt.block_on(async { fsqueue::Claimer::new(q.clone(), "r1").unwrap() });
    let first = claimer.try_claim().unwrap().unwrap();
    // Nobody consumes the unlock's cancel (its runner is gone).
    apply(&q, &store, &id, Action::Unlock).unwrap();
    assert!(q.has_request(&first.loc, "cancel", false));
    apply(&q, &store, &id, Action::Retry).unwrap();
    let control = q.internal_dir(fsqueue::queue::CONTROL_DIR);
    assert_eq!(
        std::fs::read_dir(&control).unwrap().count(),
        0,
        "retry clears"
    );
    claimer.rescan().unwrap();
    let second = claimer.try_claim().unwrap().unwrap();
    assert_eq!(second.loc.entry.attempt, first.loc.entry.attempt + 1);
    assert!(!q.has_request(&second.loc, "cancel", false));
    // A late request for the first claim (a cancel that lost a race) is
    // not seen by the second, and the sweep prunes it; the second claim's
    // own request survives the sweep.
    q.request(&first.loc, "cancel").unwrap();
    assert!(!q.has_request(&second.loc, "cancel", false));
    q.request(&second.loc, "cancel").unwrap();
    assert_eq!(q.prune_requests(), 1);
    assert!(q.has_request(&second.loc, "cancel", false));
    // Old-form names (no attempt) are never obeyed and always stale.
    std::fs::write(control.join(format!("{id}.cancel")), b"").unwrap();
    assert_eq!(q.clear_requests(id.as_str(), None), 2);
}
