//! Properties of the secrets scanner over generated text: tokens of
//! several rule families (built from split prefixes, so no secret-looking
//! literal is committed) mixed with filler that looks like logs, config
//! and JSON. Redaction leaves no match behind, and redacting redacted text
//! changes nothing.

use artifacts::secrets;
use proptest::prelude::*;

const AN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn body(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(0..AN.len(), len)
        .prop_map(|ix| ix.into_iter().map(|i| AN.as_bytes()[i] as char).collect())
}

/// One fragment: a token of some family, a key = value pair, or filler.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        body(36..=36).prop_map(|b| format!("{}{}", ["gh", "p_"].concat(), b)),
        body(16..=16).prop_map(|b| format!("{}{}", ["AK", "IA"].concat(), b.to_uppercase())),
        body(24..=30).prop_map(|b| format!("{}{}", ["sk_", "live_"].concat(), b)),
        body(20..=40).prop_map(|b| format!("{}{}", ["glp", "at-"].concat(), b)),
        (
            prop::sample::select(vec!["password", "api_key", "secret", "token", "TOKEN"]),
            prop::sample::select(vec!["=", ": ", " = ", "\": \""]),
            body(8..=40),
        )
            .prop_map(|(k, s, v)| format!("{k}{s}{v}")),
        "[ -~\n\t]{0,40}",
        "[\\[\\]:=\"'{}A-Z_a-z0-9 \n]{0,30}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..12).prop_map(|v| v.join(""))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn redaction_leaves_no_match_and_is_idempotent(x in text()) {
        let (once, _) = secrets::scan_and_redact(&x);
        let left = secrets::scan(&once);
        prop_assert!(
            left.is_empty(),
            "a match survived redaction: {:?} in {:?}",
            left.iter().map(|f| &once[f.start..f.end]).collect::<Vec<_>>(),
            once
        );
        let (twice, _) = secrets::scan_and_redact(&once);
        prop_assert_eq!(&twice, &once);
    }

    #[test]
    fn the_scanner_never_panics_on_arbitrary_bytes(
        x in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        let (once, found) = secrets::scan_and_redact_bytes(&x);
        for f in &found {
            prop_assert!(f.start < f.end && f.end <= x.len());
        }
        prop_assert!(secrets::scan_bytes(&once).is_empty());
    }
}

/// The case the property found: a refused candidate (`password=` with a
/// low-entropy value that ends in another key name) used to swallow the
/// `password = <secret>` pair after it.
#[test]
fn a_refused_candidate_does_not_hide_the_secret_after_it() {
    let key = ["pass", "word"].concat();
    let secret = "AAEOBCOPBFCGH0IJ";
    let text = format!("{key}=AAAAAAAA{key} = {secret}\n");
    let (redacted, found) = secrets::scan_and_redact(&text);
    assert!(!found.is_empty(), "nothing found in {text:?}");
    assert!(!redacted.contains(secret), "{redacted:?}");
}
