//! Properties of queue file names: every entry the protocol can make
//! survives `file_name` → `parse` unchanged, and `parse` of any string
//! either refuses it or yields an entry whose name parses back to itself.

use fsqueue::name::Entry;
use proptest::prelude::*;

fn job_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{7,63}"
        .prop_filter("valid job id", |s| fsqueue::name::is_valid_job_id(s))
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        0u8..=9,
        0u64..10_000_000_000_000_000_000,
        job_id(),
        0u32..=999_999_999,
        0u32..=999_999_999,
        proptest::option::of("[A-Za-z0-9_-]{1,64}"),
        proptest::option::of(0u64..=999_999_999_999),
    )
        .prop_map(
            |(prio, seq, job_id, attempt, reaps, runner, not_before)| Entry {
                prio,
                seq,
                job_id,
                attempt,
                reaps,
                runner,
                not_before,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_entry_round_trips_through_its_file_name(e in entry()) {
        let name = e.file_name();
        prop_assert_eq!(Entry::parse(&name), Some(e.clone()), "{}", name);
        prop_assert_eq!(e.unowned().file_name().contains('@'), false);
        let claimed = e.claimed_by("r-1");
        prop_assert_eq!(Entry::parse(&claimed.file_name()), Some(claimed));
    }

    #[test]
    fn parse_of_any_string_is_none_or_a_fixed_point(
        s in "[0-9A-Za-z._~+@-]{0,90}(\\.json)?"
    ) {
        if let Some(e) = Entry::parse(&s) {
            let again = Entry::parse(&e.file_name());
            prop_assert_eq!(again, Some(e), "{}", s);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = Entry::parse(&s);
        let _ = Entry::parse(&format!("{s}.json"));
    }
}
