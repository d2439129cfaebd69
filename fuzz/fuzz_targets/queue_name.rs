//! Queue file names (`fsqueue::name`): `Entry::parse` never panics; any
//! name it accepts yields an entry whose `file_name` parses back to the
//! same entry; and every entry the protocol can make (built here from the
//! input bytes) survives `file_name` → `parse` unchanged, also once claimed
//! and once the claim is dropped.

#![no_main]

use arbitrary::{Result, Unstructured};
use fsqueue::name::{Entry, is_valid_job_id, is_valid_runner_id};
use libfuzzer_sys::fuzz_target;

const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
const RUNNER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A string of `len` bytes drawn from `alphabet`.
fn word(u: &mut Unstructured, alphabet: &[u8], len: usize) -> Result<String> {
    (0..len)
        .map(|_| Ok(alphabet[u.choose_index(alphabet.len())?] as char))
        .collect()
}

/// An entry within the ranges the name format carries.
fn entry(u: &mut Unstructured) -> Result<Entry> {
    let len = u.int_in_range(8..=64)?;
    let job_id = word(u, ID, len)?;
    let runner = if u.arbitrary()? {
        let len = u.int_in_range(1..=64)?;
        Some(word(u, RUNNER, len)?)
    } else {
        None
    };
    Ok(Entry {
        prio: u.int_in_range(0..=9)?,
        seq: u.int_in_range(0..=9_999_999_999_999_999_999)?,
        job_id,
        attempt: u.int_in_range(0..=999_999_999)?,
        reaps: u.int_in_range(0..=999_999_999)?,
        runner,
        not_before: if u.arbitrary()? {
            Some(u.int_in_range(0..=999_999_999_999)?)
        } else {
            None
        },
    })
}

fuzz_target!(|data: &[u8]| {
    // Any text: refused, or a fixed point of parse ∘ file_name.
    let text = String::from_utf8_lossy(data);
    for name in [text.to_string(), format!("{text}.json")] {
        if let Some(e) = Entry::parse(&name) {
            let again = e.file_name();
            assert_eq!(Entry::parse(&again), Some(e), "{name:?} -> {again:?}");
        }
    }

    // An entry built from the same bytes round-trips.
    let mut u = Unstructured::new(data);
    let Ok(e) = entry(&mut u) else { return };
    if !is_valid_job_id(&e.job_id) || !e.runner.as_deref().is_none_or(is_valid_runner_id) {
        return; // e.g. a job id with "..": not a name the protocol makes.
    }
    let name = e.file_name();
    assert_eq!(Entry::parse(&name), Some(e.clone()), "{name}");
    assert!(!e.unowned().file_name().contains('@'), "{name}");
    // Counts stop at the largest the name format holds (999999999), so
    // even a claim at that attempt makes a name `parse` reads back.
    let claimed = e.claimed_by("r-1");
    assert_eq!(Entry::parse(&claimed.file_name()), Some(claimed), "{name}");
});
