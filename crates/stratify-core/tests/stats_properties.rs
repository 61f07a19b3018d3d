//! Properties of the statistics over arbitrary arms: no NaN or infinity ever
//! leaves (undefined is `None`), p-values are probabilities, intervals hold
//! their estimate, and the methods agree where they must.

use proptest::prelude::*;
use stratify_core::stats::{self, Arm, Method};

fn rate() -> impl Strategy<Value = Arm> {
    (1_u64..5_000_000)
        .prop_flat_map(|n| (Just(n), 0..=n))
        .prop_map(|(n, conversions)| Arm::Rate { n, conversions })
}

fn mean() -> impl Strategy<Value = Arm> {
    (
        1_u64..5_000_000,
        -1e6..1e6_f64,
        prop_oneof![Just(0.0), 0.0..1e8_f64],
    )
        .prop_map(|(n, mean, variance)| Arm::Mean { n, mean, variance })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::Welch), Just(Method::Z), Just(Method::ZPooled)]
}

fn check(c: &stats::Comparison) -> Result<(), TestCaseError> {
    let json = serde_json::to_string(c).unwrap();
    prop_assert!(!json.contains("NaN") && !json.contains("inf"), "{json}");
    for p in [
        c.absolute.p_value,
        c.relative.and_then(|r| r.p_value),
        c.chance_to_win,
    ]
    .into_iter()
    .flatten()
    {
        prop_assert!((0.0..=1.0).contains(&p), "{json}");
    }
    if let (Some(lo), Some(est), Some(hi)) =
        (c.absolute.ci_low, c.absolute.estimate, c.absolute.ci_high)
    {
        prop_assert!(lo <= est && est <= hi, "{json}");
    }
    for arm in [c.control, c.treatment] {
        if let (Some(lo), Some(est), Some(hi)) = (arm.ci_low, arm.estimate, arm.ci_high) {
            prop_assert!(lo <= hi && lo <= est + 1e-12 && est <= hi + 1e-12, "{json}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn rate_comparisons_are_always_well_formed(m in method(), level in 0.5..0.999_f64, a in rate(), b in rate()) {
        let c = stats::compare(m, level, &a, &b);
        check(&c)?;
        // Wilson intervals stay inside [0, 1].
        for arm in [c.control, c.treatment] {
            prop_assert!(arm.ci_low.unwrap() >= 0.0 && arm.ci_high.unwrap() <= 1.0);
        }
    }

    #[test]
    fn mean_comparisons_are_always_well_formed(m in method(), level in 0.5..0.999_f64, a in mean(), b in mean()) {
        check(&stats::compare(m, level, &a, &b))?;
    }

    #[test]
    fn swapping_arms_flips_the_lift_and_keeps_the_p_value(m in method(), a in rate(), b in rate()) {
        let ab = stats::compare(m, 0.95, &a, &b);
        let ba = stats::compare(m, 0.95, &b, &a);
        if let (Some(x), Some(y)) = (ab.absolute.estimate, ba.absolute.estimate) {
            prop_assert!((x + y).abs() <= 1e-15);
        }
        match (ab.absolute.p_value, ba.absolute.p_value) {
            (Some(x), Some(y)) => prop_assert!((x - y).abs() <= 1e-12 * x.max(y).max(1e-300)),
            (x, y) => prop_assert_eq!(x, y),
        }
    }

    #[test]
    fn srm_p_values_are_probabilities(observed in prop::collection::vec(0_u64..10_000_000, 2..6), seed in 1_u32..100) {
        let weights: Vec<f64> = (0..observed.len()).map(|i| f64::from(seed + i as u32)).collect();
        let r = stats::srm(&observed, &weights).unwrap();
        let p = r.p_value.unwrap();
        prop_assert!((0.0..=1.0).contains(&p));
        prop_assert_eq!(r.srm_detected, p < stats::SRM_THRESHOLD);
    }

    #[test]
    fn holm_never_lowers_a_p_value_and_keeps_the_order(ps in prop::collection::vec(prop::option::of(0.0..=1.0_f64), 0..8)) {
        let adjusted = stats::holm(&ps);
        for (p, a) in ps.iter().zip(&adjusted) {
            match (p, a) {
                (Some(p), Some(a)) => prop_assert!(a >= p && *a <= 1.0),
                (None, None) => {}
                _ => prop_assert!(false, "None must stay None"),
            }
        }
        let mut pairs: Vec<(f64, f64)> = ps.iter().zip(&adjusted).filter_map(|(p, a)| Some(((*p)?, (*a)?))).collect();
        pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
        prop_assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
