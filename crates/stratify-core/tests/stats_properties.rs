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

/// A CUPED arm from per-user (pre, noise) draws: post = lift + ρ·pre +
/// √(1 − ρ²)·noise.
fn cuped_arm(draws: &[(f64, f64)], rho: f64, lift: f64) -> Arm {
    use stratify_core::stats::engines::{CupedArm, Part};
    let (mut s_post, mut q_post, mut s_pre, mut q_pre, mut sop) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(pre, noise) in draws {
        let post = lift + rho * pre + (1.0 - rho * rho).sqrt() * noise;
        s_post += post;
        q_post += post * post;
        s_pre += pre;
        q_pre += pre * pre;
        sop += post * pre;
    }
    Arm::Cuped(CupedArm {
        n: draws.len() as u64,
        post: Part::SampleMean {
            sum: s_post,
            sum_squares: q_post,
        },
        pre: Part::SampleMean {
            sum: s_pre,
            sum_squares: q_pre,
        },
        sum_of_products: sop,
    })
}

proptest! {
    /// Issue 20: when the pre-period covariate correlates with the metric
    /// (the same way in both arms), CUPED never widens the interval of the
    /// lift, under the t-test, the sequential test and the Bayesian engine.
    #[test]
    fn cuped_never_widens_the_interval_when_pre_and_post_correlate(
        control in proptest::collection::vec((-3.0..3.0_f64, -3.0..3.0_f64), 300..600),
        treatment in proptest::collection::vec((-3.0..3.0_f64, -3.0..3.0_f64), 300..600),
        rho in 0.3..0.95_f64,
        lift in -0.5..0.5_f64,
    ) {
        let (a, b) = (cuped_arm(&control, rho, 5.0), cuped_arm(&treatment, rho, 5.0 + lift));
        for (engine, sequential) in [
            (stats::Engine::Frequentist, None),
            (stats::Engine::Frequentist, Some(5000.0)),
            (stats::Engine::Bayesian, None),
        ] {
            let mut analysis = stats::Analysis::fixed(Method::Welch, 0.95);
            analysis.engine = engine;
            analysis.sequential = sequential;
            let adjusted = stats::analyze(&analysis, &a, &b);
            analysis.cuped = false;
            let plain = stats::analyze(&analysis, &a, &b);
            let width = |c: &stats::Comparison| c.absolute.ci_high.zip(c.absolute.ci_low).map(|(h, l)| h - l);
            let (w_adj, w_plain) = (width(&adjusted), width(&plain));
            prop_assert!(w_adj.is_some() && w_plain.is_some());
            prop_assert!(w_adj <= w_plain, "{engine:?} {sequential:?}: {w_adj:?} > {w_plain:?}");
            let reduction = adjusted.cuped.and_then(|c| c.variance_reduction);
            prop_assert!(reduction.is_some_and(|r| r > 0.0), "{reduction:?}");
        }
    }
}

/// A ratio arm or a CUPED arm from sums some real data could have.
fn sums_arm() -> impl Strategy<Value = Arm> {
    use stratify_core::stats::engines::{CupedArm, Part, RatioArm};
    let part = |n: u64| {
        prop_oneof![
            (0..=n).prop_map(|c| Part::Proportion { sum: c as f64 }),
            (-1e4..1e4_f64, 0.0..1e6_f64).prop_map(move |(mean, var)| {
                let nf = n as f64;
                Part::SampleMean {
                    sum: mean * nf,
                    sum_squares: var * (nf - 1.0).max(0.0) + mean * mean * nf,
                }
            }),
        ]
    };
    (1_u64..100_000)
        .prop_flat_map(move |n| (Just(n), part(n), part(n), -1e9..1e9_f64, any::<bool>()))
        .prop_map(|(n, x, y, sop, ratio)| {
            if ratio {
                Arm::Ratio(RatioArm {
                    n,
                    numerator: x,
                    denominator: y,
                    sum_of_products: sop,
                })
            } else {
                Arm::Cuped(CupedArm {
                    n,
                    post: x,
                    pre: y,
                    sum_of_products: sop,
                })
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Ratio and CUPED arms, under every engine and test: nothing undefined
    /// leaves as a number, probabilities are probabilities.
    #[test]
    fn ratio_and_cuped_comparisons_are_always_well_formed(
        a in sums_arm(), b in sums_arm(), level in 0.5..0.999_f64, which in 0..3_u8,
    ) {
        let mut analysis = stats::Analysis::fixed(Method::Welch, level);
        match which {
            1 => analysis.sequential = Some(5000.0),
            2 => analysis.engine = stats::Engine::Bayesian,
            _ => {}
        }
        let c = stats::analyze(&analysis, &a, &b);
        check(&c)?;
        for block in [Some(c.absolute.chance_to_win), c.relative.map(|r| r.chance_to_win)].into_iter().flatten().flatten() {
            prop_assert!((0.0..=1.0).contains(&block));
        }
    }
}
