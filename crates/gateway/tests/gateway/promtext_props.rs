//! Properties of the Prometheus text merge (`gateway::promtext`): over
//! generated expositions from several processes, the merged document has
//! one `# TYPE` per family, every family's samples together under it,
//! every input sample once with its `process` label, and merging the
//! merged document again changes nothing. Arbitrary text never panics.

use gateway::promtext::Families;
use proptest::prelude::*;
use std::collections::BTreeMap;

const NAMES: [&str; 4] = ["orch_a_total", "orch_b", "orch_c_seconds", "orch_d_total"];

/// One process's exposition: (family, kind, samples as (labels, value)).
type Doc = Vec<(usize, Vec<(Option<String>, f64)>)>;

fn doc() -> impl Strategy<Value = Doc> {
    proptest::collection::vec(
        (
            0..NAMES.len(),
            proptest::collection::vec((proptest::option::of("[a-z]{1,6}"), -1e9f64..1e9), 1..4),
        ),
        0..4,
    )
    .prop_map(|mut v| {
        // A family appears once per exposition, as an exporter writes it.
        v.sort_by_key(|(f, _)| *f);
        v.dedup_by_key(|(f, _)| *f);
        v
    })
}

fn kind(f: usize) -> &'static str {
    if NAMES[f].ends_with("_total") {
        "counter"
    } else {
        "gauge"
    }
}

fn render_doc(d: &Doc) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut samples = Vec::new();
    for (f, ss) in d {
        let name = NAMES[*f];
        text.push_str(&format!(
            "# HELP {name} Help of {name}.\n# TYPE {name} {}\n",
            kind(*f)
        ));
        for (i, (label, v)) in ss.iter().enumerate() {
            let line = match label {
                Some(l) => format!("{name}{{k=\"{l}{i}\"}} {v}"),
                None => format!("{name}{{i=\"{i}\"}} {v}"),
            };
            text.push_str(&line);
            text.push('\n');
            samples.push(line);
        }
    }
    (text, samples)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_merge_keeps_every_sample_once_under_one_type_per_family(
        docs in proptest::collection::vec(doc(), 1..4)
    ) {
        let mut fam = Families::new();
        let mut expected = 0;
        for (p, d) in docs.iter().enumerate() {
            let (text, samples) = render_doc(d);
            expected += samples.len();
            fam.add(&text, Some(&format!("runner-{p}")));
        }
        let out = fam.render();
        let mut types: BTreeMap<&str, usize> = BTreeMap::new();
        let mut current: Option<&str> = None;
        let mut seen_families = Vec::new();
        let mut sample_lines = 0;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                *types.entry(name).or_default() += 1;
                prop_assert!(!seen_families.contains(&name), "family {} split:\n{}", name, out);
                seen_families.push(name);
                current = Some(name);
            } else if !line.starts_with('#') {
                sample_lines += 1;
                let name = line.split('{').next().unwrap();
                prop_assert_eq!(Some(name), current, "sample outside its family:\n{}", out);
                prop_assert!(line.contains("process=\"runner-"), "{}", line);
            }
        }
        prop_assert!(types.values().all(|&n| n == 1), "{:?}\n{}", types, out);
        prop_assert_eq!(sample_lines, expected, "{}", out);
        // Every input sample is there, labelled with its process.
        for (p, d) in docs.iter().enumerate() {
            for s in render_doc(d).1 {
                let (name, rest) = s.split_once('{').unwrap();
                let want = format!("{name}{{process=\"runner-{p}\",{rest}");
                prop_assert!(out.lines().any(|l| l == want), "missing {}:\n{}", want, out);
            }
        }
        // Merging the merged document again changes nothing.
        let mut again = Families::new();
        again.add(&out, None);
        prop_assert_eq!(again.render(), out);
    }

    #[test]
    fn the_merge_never_panics_on_arbitrary_text(
        texts in proptest::collection::vec("[ -~\n{}\"\\\\#]{0,200}", 0..4),
        p in "[ -~]{0,12}",
    ) {
        let mut fam = Families::new();
        for t in &texts {
            fam.add(t, Some(&p));
        }
        let out = fam.render();
        let mut again = Families::new();
        again.add(&out, None);
        let _ = again.render();
    }
}
