//! The Prometheus text merge (`gateway::promtext::Families`, public): the
//! input is split on NUL bytes into a process name and up to four
//! expositions. Merging never panics; every sample line of the merged
//! document carries a `process` label; and the merged document re-parses
//! to itself (merging it again, without a process, changes nothing).

#![no_main]

use gateway::promtext::Families;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let process = parts.next().unwrap_or_default();
    let mut fam = Families::new();
    for t in parts.take(4) {
        fam.add(t, Some(process));
    }
    let out = fam.render();
    for line in out.lines() {
        if !line.starts_with('#') {
            assert!(
                line.contains("process=\""),
                "unlabelled sample {line:?} in\n{out}"
            );
        }
    }
    let mut again = Families::new();
    again.add(&out, None);
    assert_eq!(
        again.render(),
        out,
        "merging the merged document changed it"
    );
});
