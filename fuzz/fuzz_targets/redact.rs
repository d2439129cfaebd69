//! The secrets scanner (`artifacts::secrets`): over arbitrary bytes (and,
//! when they are UTF-8, over the same text through the `str` API) nothing
//! panics, every finding lies inside the input, redaction leaves no match
//! behind, and redacting redacted text changes nothing.

#![no_main]

use artifacts::secrets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (once, found) = secrets::scan_and_redact_bytes(data);
    for f in &found {
        assert!(f.start < f.end && f.end <= data.len(), "{f:?}");
    }
    let left = secrets::scan_bytes(&once);
    assert!(
        left.is_empty(),
        "a match survived redaction: {:?} in {:?}",
        left.iter()
            .map(|f| String::from_utf8_lossy(&once[f.start..f.end]))
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&once)
    );
    let (twice, _) = secrets::scan_and_redact_bytes(&once);
    assert_eq!(twice, once, "redaction is not idempotent");

    if let Ok(text) = std::str::from_utf8(data) {
        let (once, found) = secrets::scan_and_redact(text);
        for f in &found {
            assert!(f.start < f.end && f.end <= text.len(), "{f:?}");
        }
        let left = secrets::scan(&once);
        assert!(
            left.is_empty(),
            "a match survived redaction: {:?} in {once:?}",
            left.iter()
                .map(|f| &once[f.start..f.end])
                .collect::<Vec<_>>(),
        );
        let (twice, _) = secrets::scan_and_redact(&once);
        assert_eq!(twice, once, "redaction is not idempotent");
    }
});
