//! Property: a user's variant of an experiment never changes to a different
//! variant when another experiment changes, when the engine restarts, or
//! when coverage is lowered (sticky experiments keep their users; a
//! non-sticky one only drops users, never moves them), and weights changes
//! do not move stuck users.

use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::ids::UserId;
use stratify_engine::experiments::{Action, ExperimentInput, Variant};
use stratify_engine::{Clock, Engine, ManualClock};
use stratify_store::sqlite::SqliteStore;

const T0: i64 = 1_767_225_600_000;
const USERS: usize = 60;

#[derive(Debug, Clone)]
enum Op {
    /// Reweights the other experiment and changes its coverage.
    ChangeOther(Vec<u8>, f64),
    /// Lowers the coverage of both experiments under test to this fraction
    /// of what it is.
    LowerCoverage(f64),
    /// Reweights the sticky experiment.
    ReweightSticky(Vec<u8>),
    Restart,
    /// Time passes (cache TTLs expire).
    Advance(i64),
}

fn variants(weights: &[u8]) -> Vec<Variant> {
    let total: u32 = weights.iter().map(|&w| u32::from(w) + 1).sum();
    let mut out: Vec<Variant> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Variant {
            key: format!("v{i}"),
            name: None,
            weight: f64::from(u32::from(w) + 1) * 100.0 / f64::from(total),
            is_control: i == 0,
            payload: None,
        })
        .collect();
    // Exact sum of 100 despite rounding.
    let rest: f64 = out[1..].iter().map(|v| v.weight).sum();
    out[0].weight = 100.0 - rest;
    out
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (prop::collection::vec(any::<u8>(), 2..4), 0.1f64..=1.0)
            .prop_map(|(w, c)| Op::ChangeOther(w, c)),
        (0.2f64..1.0).prop_map(Op::LowerCoverage),
        prop::collection::vec(any::<u8>(), 3..=3).prop_map(Op::ReweightSticky),
        Just(Op::Restart),
        (1i64..600_000).prop_map(Op::Advance),
    ]
}

async fn start(store: &Arc<SqliteStore>, clock: &Arc<ManualClock>) -> Engine {
    Engine::start(store.clone(), clock.clone() as Arc<dyn Clock>, None)
        .await
        .expect("engine")
}

async fn create(e: &Engine, key: &str, weights: &[u8], coverage: f64, sticky: bool) -> String {
    let input = ExperimentInput {
        key: Some(key.into()),
        name: Some(key.into()),
        variants: Some(variants(weights)),
        coverage: Some(coverage),
        sticky: Some(sticky),
        ..ExperimentInput::default()
    };
    let id = e
        .experiments
        .create_experiment(input, "test")
        .await
        .expect("create")
        .record
        .id
        .clone();
    e.experiments
        .transition_experiment(&id, Action::Start, "test")
        .await
        .expect("start");
    id
}

/// experiment id → (user → variant key) for everyone.
async fn serve(e: &Engine, ids: &[&str]) -> Vec<HashMap<String, Option<String>>> {
    let mut out = vec![HashMap::new(); ids.len()];
    for u in 0..USERS {
        let user = format!("user-{u}");
        let (answer, _) = e
            .serving
            .user_experiments(&UserId::parse(&user).expect("id"), None)
            .await
            .expect("serve");
        for (i, id) in ids.iter().enumerate() {
            let v = answer
                .served()
                .find(|s| s.experiment.record.id == *id)
                .map(|s| s.variant().key.clone());
            out[i].insert(user.clone(), v);
        }
    }
    out
}

async fn scenario(ops: Vec<Op>, coverage: f64) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("open"));
    let clock = Arc::new(ManualClock::new(T0));
    let mut engine = start(&store, &clock).await;
    let sticky = create(&engine, "sticky", &[1, 1, 1], coverage, true).await;
    let loose = create(&engine, "loose", &[3, 1], coverage, false).await;
    let other = create(&engine, "other", &[1, 1], 1.0, true).await;
    let mut first = serve(&engine, &[&sticky, &loose]).await;
    let mut cov = coverage;
    for op in ops {
        // New weights move the bucket ranges: users outside the coverage
        // may come in (and then stick); users in never move.
        let reweighted = matches!(op, Op::ReweightSticky(_));
        match op {
            Op::ChangeOther(w, c) => {
                let input = ExperimentInput {
                    variants: Some(variants(&w)),
                    coverage: Some(c),
                    ..ExperimentInput::default()
                };
                engine
                    .experiments
                    .update_experiment(&other, input, "test")
                    .await
                    .expect("other");
            }
            Op::LowerCoverage(f) => {
                cov *= f;
                for id in [&sticky, &loose] {
                    let input = ExperimentInput {
                        coverage: Some(cov),
                        ..ExperimentInput::default()
                    };
                    engine
                        .experiments
                        .update_experiment(id, input, "test")
                        .await
                        .expect("coverage");
                }
            }
            Op::ReweightSticky(w) => {
                let input = ExperimentInput {
                    variants: Some(variants(&w)),
                    ..ExperimentInput::default()
                };
                engine
                    .experiments
                    .update_experiment(&sticky, input, "test")
                    .await
                    .expect("reweight");
            }
            Op::Restart => {
                engine.shutdown().await;
                drop(engine);
                engine = start(&store, &clock).await;
            }
            Op::Advance(ms) => clock.advance(ms),
        }
        let now = serve(&engine, &[&sticky, &loose]).await;
        for (user, was) in first[0].iter_mut() {
            let is = now[0].get(user).cloned().flatten();
            match (&*was, is) {
                (Some(a), b) => assert_eq!(Some(a), b.as_ref(), "sticky experiment moved {user}"),
                (None, Some(b)) if reweighted => *was = Some(b),
                (None, Some(b)) => {
                    panic!("{user} entered the sticky experiment ({b}) without a reweight")
                }
                (None, None) => {}
            }
        }
        for (user, was) in &first[1] {
            let is = now[1].get(user).cloned().flatten();
            match (was, is) {
                (Some(a), Some(b)) => assert_eq!(a, &b, "non-sticky experiment moved {user}"),
                (None, Some(b)) => panic!(
                    "{user} entered the non-sticky experiment ({b}) though coverage only fell"
                ),
                _ => {}
            }
        }
    }
    engine.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn no_change_elsewhere_restart_or_lower_coverage_moves_a_user(
        ops in prop::collection::vec(op(), 1..6),
        coverage in 0.3f64..=1.0,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(scenario(ops, coverage));
    }
}
