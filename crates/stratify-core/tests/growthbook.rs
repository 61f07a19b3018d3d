//! Every GrowthBook bucketing conformance case (spec 0.8.0; see
//! `fixtures/growthbook/SOURCE.md`) must pass.

use serde_json::Value;
use stratify_core::bucketing::*;

fn cases(section: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(include_str!("fixtures/growthbook/bucketing.json"))
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    all[section]
        .as_array()
        .unwrap_or_else(|| panic!("no section {section}"))
        .clone()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn ranges(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .map(|a| a.iter().map(|r| (f(&r[0]), f(&r[1]))).collect())
        .unwrap_or_default()
}

#[test]
fn hash_cases() {
    let cases = cases("hash");
    assert!(cases.len() >= 15);
    for c in cases {
        let version = c[2].as_u64().map_or(0, |v| v as u32);
        let got = hash(
            c[0].as_str().unwrap_or(""),
            c[1].as_str().unwrap_or(""),
            version,
        );
        assert_eq!(got, c[3].as_f64(), "{c}");
    }
}

#[test]
fn bucket_range_cases() {
    for c in cases("getBucketRange") {
        let args = &c[1];
        let weights: Option<Vec<f64>> = args[2].as_array().map(|w| w.iter().map(f).collect());
        let got = bucket_ranges(
            args[0].as_u64().unwrap_or(0) as usize,
            f(&args[1]),
            weights.as_deref(),
        );
        let want = ranges(&c[2]);
        assert_eq!(got.len(), want.len(), "{c}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.0 - w.0).abs() < 1e-6 && (g.1 - w.1).abs() < 1e-6,
                "{}: got {got:?}",
                c[0]
            );
        }
    }
}

#[test]
fn choose_variation_cases() {
    for c in cases("chooseVariation") {
        let got = choose_variation(f(&c[1]), &ranges(&c[2]));
        let want = c[3].as_i64().unwrap_or(-2);
        assert_eq!(got.map_or(-1, |i| i as i64), want, "{}", c[0]);
    }
}

#[test]
fn namespace_cases() {
    for c in cases("inNamespace") {
        let ns = &c[2];
        let got = in_namespace(
            c[1].as_str().unwrap_or(""),
            ns[0].as_str().unwrap_or(""),
            f(&ns[1]),
            f(&ns[2]),
        );
        assert_eq!(Some(got), c[3].as_bool(), "{}", c[0]);
    }
}

#[test]
fn equal_weight_cases() {
    for c in cases("getEqualWeights") {
        let got = equal_weights(c[0].as_i64().unwrap_or(0));
        let want: Vec<f64> = c[1]
            .as_array()
            .map(|a| a.iter().map(f).collect())
            .unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{c}");
        assert!(
            got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-8),
            "{c}"
        );
    }
}
