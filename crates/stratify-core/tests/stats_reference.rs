//! The statistics against reference values from scipy and statsmodels
//! (`fixtures/stats/reference.json`, written by `generate_reference.py`
//! beside it): every number agrees to 1e-9 relative, and every null is null.

use serde_json::Value;
use stratify_core::stats::{self, Arm, CompareInput, Method, SampleSizeInput};

const REL: f64 = 1e-9;

fn reference() -> Value {
    let text = include_str!("fixtures/stats/reference.json");
    serde_json::from_str(text).expect("reference.json parses")
}

/// Walks `expected`; every key it has must be in `actual` with the same
/// value (numbers to `REL` relative). Extra keys in `actual` are allowed.
fn assert_matches(
    case: &str,
    path: &str,
    expected: &Value,
    actual: &Value,
    failures: &mut Vec<String>,
) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let av = a.get(key).unwrap_or(&Value::Null);
                assert_matches(case, &format!("{path}/{key}"), ev, av, failures);
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_matches(case, &format!("{path}/{i}"), ev, av, failures);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (e.as_f64().unwrap(), a.as_f64().unwrap());
            if (e - a).abs() > REL * e.abs().max(a.abs()) {
                failures.push(format!(
                    "{case}: {path}: expected {e:e}, got {a:e} (rel {:e})",
                    (e - a).abs() / e.abs().max(a.abs())
                ));
            }
        }
        (e, a) if e == a => {}
        (e, a) => failures.push(format!("{case}: {path}: expected {e}, got {a}")),
    }
}

fn cases<'a>(reference: &'a Value, kind: &str) -> &'a Vec<Value> {
    reference[kind].as_array().expect("a list of cases")
}

#[test]
fn there_are_enough_cases_of_every_kind() {
    let r = reference();
    let total: usize = ["compare", "srm", "sample_size", "multi_arm"]
        .iter()
        .map(|k| cases(&r, k).len())
        .sum();
    assert!(total >= 50, "{total} reference cases");
    let names: Vec<&str> = cases(&r, "compare")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for needed in [
        "zero conversions in both",
        "full conversion in both",
        "tiny samples",
        "very unequal arms",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(needed)),
            "no case {needed}"
        );
    }
    for arms in 3..=5 {
        assert!(cases(&r, "multi_arm").iter().any(|c| c["input"]["arms"]
            .as_array()
            .unwrap()
            .len()
            == arms));
    }
}

#[test]
fn comparisons_match_scipy_and_statsmodels() {
    let r = reference();
    let mut failures = Vec::new();
    for case in cases(&r, "compare") {
        let name = case["name"].as_str().unwrap();
        let input: CompareInput = serde_json::from_value(case["input"].clone()).unwrap();
        let result = input.run().unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual = serde_json::to_value(&result).unwrap();
        assert_matches(name, "", &case["expected"], &actual, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn srm_matches_scipy_chisquare() {
    let r = reference();
    let mut failures = Vec::new();
    for (i, case) in cases(&r, "srm").iter().enumerate() {
        let observed: Vec<u64> = serde_json::from_value(case["input"]["observed"].clone()).unwrap();
        let weights: Vec<f64> = serde_json::from_value(case["input"]["weights"].clone()).unwrap();
        let result = stats::srm(&observed, &weights).unwrap();
        let actual = serde_json::to_value(&result).unwrap();
        assert_matches(
            &format!("srm {i} {observed:?}"),
            "",
            &case["expected"],
            &actual,
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sample_sizes_match_the_closed_form_checked_by_statsmodels() {
    let r = reference();
    let mut failures = Vec::new();
    for (i, case) in cases(&r, "sample_size").iter().enumerate() {
        let input: SampleSizeInput = serde_json::from_value(case["input"].clone()).unwrap();
        let result = stats::sample_size(&input).unwrap();
        let actual = serde_json::to_value(result).unwrap();
        assert_matches(
            &format!("sample size {i}"),
            "",
            &case["expected"],
            &actual,
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn multi_arm_comparisons_and_holm_match_statsmodels() {
    let r = reference();
    let mut failures = Vec::new();
    for case in cases(&r, "multi_arm") {
        let name = case["name"].as_str().unwrap();
        let method: Method = serde_json::from_value(case["input"]["method"].clone()).unwrap();
        let arms: Vec<Arm> = case["input"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                serde_json::from_value::<stats::ArmInput>(a.clone())
                    .unwrap()
                    .to_arm("")
                    .unwrap()
            })
            .collect();
        let comparisons: Vec<_> = arms[1..]
            .iter()
            .map(|t| stats::compare(method, 0.95, &arms[0], t))
            .collect();
        let adjusted = stats::holm(
            &comparisons
                .iter()
                .map(|c| c.absolute.p_value)
                .collect::<Vec<_>>(),
        );
        let observed: Vec<u64> = arms.iter().map(Arm::n).collect();
        let weights: Vec<f64> = serde_json::from_value(case["input"]["weights"].clone()).unwrap();
        let srm = stats::srm(&observed, &weights).unwrap();
        let actual = serde_json::json!({
            "comparisons": comparisons,
            "holm": adjusted,
            "srm_p_value": srm.p_value,
            "srm_chi2": srm.chi2,
        });
        assert_matches(name, "", &case["expected"], &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn calculator_inputs_are_validated() {
    let bad = [
        (
            r#"{"control":{"n":0,"conversions":0},"treatment":{"n":5,"conversions":1}}"#,
            "/control/n",
        ),
        (
            r#"{"control":{"n":5,"conversions":6},"treatment":{"n":5,"conversions":1}}"#,
            "/control/conversions",
        ),
        (
            r#"{"control":{"n":5,"conversions":1},"treatment":{"n":5,"mean":1.0,"variance":1.0}}"#,
            "/treatment",
        ),
        (
            r#"{"control":{"n":5,"mean":1.0},"treatment":{"n":5,"mean":1.0,"variance":1.0}}"#,
            "/control",
        ),
        (
            r#"{"control":{"n":5,"mean":1.0,"variance":-1.0},"treatment":{"n":5,"mean":1.0,"variance":1.0}}"#,
            "/control/variance",
        ),
        (
            r#"{"confidence_level":1.0,"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":1}}"#,
            "/confidence_level",
        ),
        // Issue 20's forms and options.
        (
            r#"{"control":{"n":4,"sum":10,"sum_squares":1},"treatment":{"n":5,"sum":5,"sum_squares":9}}"#,
            "/control/sum_squares",
        ),
        (
            r#"{"control":{"n":4,"sum":10,"sum_squares":30,"conversions":1},"treatment":{"n":5,"sum":5,"sum_squares":9}}"#,
            "/control",
        ),
        (
            r#"{"control":{"n":4,"sum":10,"sum_squares":30},"treatment":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"conversions":2},"sum_of_products":7}}}"#,
            "/treatment",
        ),
        (
            r#"{"control":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"conversions":6},"sum_of_products":7}},"treatment":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"conversions":2},"sum_of_products":7}}}"#,
            "/control/cuped/pre/conversions",
        ),
        (
            r#"{"control":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"sum":1},"sum_of_products":7}},"treatment":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"sum":1,"sum_squares":1},"sum_of_products":7}}}"#,
            "/control/cuped/pre",
        ),
        (
            r#"{"control":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"conversions":2},"sum_of_products":7}},"treatment":{"n":5,"cuped":{"post":{"sum":5,"sum_squares":9},"pre":{"sum":1,"sum_squares":1},"sum_of_products":7}}}"#,
            "/treatment",
        ),
        (
            r#"{"prior":{"mean":0,"variance":1,"proper":true},"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":2}}"#,
            "/prior",
        ),
        (
            r#"{"engine":"bayesian","prior":{"variance":0},"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":2}}"#,
            "/prior",
        ),
        (
            r#"{"engine":"bayesian","sequential":{"tuning":5000},"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":2}}"#,
            "/sequential",
        ),
        (
            r#"{"sequential":{"tuning":0},"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":2}}"#,
            "/sequential/tuning",
        ),
        (
            r#"{"method":"z","sequential":{"tuning":100},"control":{"n":5,"conversions":1},"treatment":{"n":5,"conversions":2}}"#,
            "/method",
        ),
        (
            r#"{"method":"z_pooled","control":{"n":5,"ratio":{"numerator":{"sum":5,"sum_squares":9},"denominator":{"sum":3,"sum_squares":3},"sum_of_products":5}},"treatment":{"n":5,"ratio":{"numerator":{"sum":5,"sum_squares":9},"denominator":{"sum":3,"sum_squares":3},"sum_of_products":5}}}"#,
            "/method",
        ),
    ];
    for (body, field) in bad {
        let input: CompareInput = serde_json::from_str(body).unwrap();
        let err = input.run().unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{body}");
    }
    assert!(serde_json::from_str::<CompareInput>(
        r#"{"control":{"n":1,"conversions":0},"treatment":{"n":1,"conversions":0},"x":1}"#
    )
    .is_err());
    let srm_err = stats::srm(&[1, 2], &[1.0]).unwrap_err();
    assert_eq!(srm_err.field.as_deref(), Some("/weights"));
    let size_err = stats::sample_size(&SampleSizeInput {
        baseline_rate: 0.95,
        mde: 0.1,
        relative: false,
        alpha: 0.05,
        power: 0.8,
        ratio: 1.0,
    })
    .unwrap_err();
    assert_eq!(size_err.field.as_deref(), Some("/mde"));
}

/// GrowthBook's engine (`fixtures/stats/gbstats.json`, written by
/// `generate_gbstats.py` with gbstats 0.8.0): arms from sums, ratio and
/// CUPED arms under the t-test, the sequential test and the Bayesian engine
/// with improper and proper priors, to 1e-9 relative.
#[test]
fn every_arm_form_under_every_engine_matches_gbstats() {
    let r: Value = serde_json::from_str(include_str!("fixtures/stats/gbstats.json"))
        .expect("gbstats.json parses");
    let all = cases(&r, "compare");
    let mut failures = Vec::new();
    for case in all {
        let name = case["name"].as_str().unwrap();
        let input: CompareInput =
            serde_json::from_value(case["input"].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let result = input.run().unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual = serde_json::to_value(&result).unwrap();
        let mut here = Vec::new();
        assert_matches(name, "", &case["expected"], &actual, &mut here);
        // gbstats computes p = 2(1 − F(|t|)): below about 1e-7 the
        // subtraction leaves it fewer than 9 good digits (we compute the
        // upper tail directly). Such p-values must agree to 1e-14 absolute.
        here.retain(|f| {
            let Some(block) = ["relative", "absolute"]
                .into_iter()
                .find(|b| f.contains(&format!("/{b}/p_value:")))
            else {
                return true;
            };
            let expected = case["expected"][block]["p_value"].as_f64();
            let got = actual[block]["p_value"].as_f64();
            !expected
                .zip(got)
                .is_some_and(|(e, a)| (e - a).abs() < 1e-14)
        });
        failures.extend(here);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for form in [
        "sample mean",
        "proportion",
        "ratio",
        "cuped sample mean",
        "cuped proportion",
    ] {
        for test in [
            "t-test",
            "sequential",
            "bayesian improper",
            "bayesian proper relative",
            "bayesian proper absolute",
        ] {
            assert!(
                all.iter().any(|c| c["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{form}: {test}")))),
                "no case {form}: {test}"
            );
        }
    }
}
