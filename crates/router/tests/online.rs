//! Online SeqTopK: prefill, decode steps, the expert cache and the cumulative budget.

mod common;

use burn::tensor::Device;
use common::*;
use seqtopk_router::select::{Candidates, online_count};
use seqtopk_router::{ExpertCache, Router, RoutingError, RoutingMode, TokenLayout};

const E: usize = 8;
const K: usize = 2;

fn online_router(floor: usize) -> Router {
    Router::new(
        &config(RoutingMode::OnlineSeqtopk, K).with_floor(floor),
        E,
        false,
    )
    .unwrap()
}

/// Candidates of each position computed on the host from the router's own probabilities.
fn host_candidates(probs: &[f32]) -> Candidates {
    Candidates::from_rows(probs, E, K + 2)
}

#[test]
fn prompt_then_decode_steps_follow_the_cache_and_the_budget() {
    let device = Device::flex();
    let mut rng = Lcg(17);
    for floor in [0, 1] {
        let router = online_router(floor);
        // Two prompts, the second left-padded by 3.
        let (b, tp) = (2, 9);
        let valid: Vec<bool> = (0..b * tp).map(|p| p < tp || p % tp >= 3).collect();
        let layout = TokenLayout::new(b, tp, valid.clone(), vec![0; b * tp]).unwrap();
        let mut cache = ExpertCache::new(b, E);
        let prefill = router
            .route_prefill(
                logits(rng.vec(b * tp * E, 3.0), [b, tp, E], &device),
                &layout,
                &mut cache,
            )
            .unwrap();
        // Prefill is offline SeqTopK over the prompt.
        let offline = route(
            &config(RoutingMode::Seqtopk, K).with_floor(floor),
            prefill.logits.clone(),
            &layout,
        );
        assert_eq!(expert_sets(&prefill), expert_sets(&offline));
        // The cache holds exactly the selected scores, zero elsewhere (and for padding).
        let probs = probs_of(&prefill);
        let sets = expert_sets(&prefill);
        for row in 0..b {
            let scores = cache.scores(row);
            assert_eq!(scores.len(), tp * E);
            for t in 0..tp {
                for x in 0..E {
                    let p = row * tp + t;
                    let expected = if sets[p].contains(&(x as u32)) {
                        probs[p * E + x]
                    } else {
                        0.0
                    };
                    assert_eq!(scores[t * E + x], expected, "row {row} pos {t} expert {x}");
                }
            }
        }
        let mut totals: Vec<usize> = (0..b)
            .map(|row| {
                prefill.plan.stats.experts_per_token[row * tp..(row + 1) * tp]
                    .iter()
                    .map(|&c| c as usize)
                    .sum()
            })
            .collect();
        let mut rescued = vec![0usize; b];
        for _step in 0..12 {
            let step_layout = TokenLayout::dense(b, 1);
            let before: Vec<Vec<f32>> = (0..b)
                .map(|row| cache.selected_desc(row).to_vec())
                .collect();
            let m: Vec<usize> = (0..b).map(|row| cache.valid_tokens(row) + 1).collect();
            let out = router
                .route_decode(
                    logits(rng.vec(b * E, 3.0), [b, 1, E], &device),
                    &step_layout,
                    &mut cache,
                )
                .unwrap();
            let cands = host_candidates(&probs_of(&out));
            for row in 0..b {
                let got = out.plan.stats.experts_per_token[row];
                let expected = online_count(&before[row], cands.scores_of(row), m[row] * K, floor);
                assert_eq!(
                    got, expected,
                    "decode step routing equals the rule on cached scores"
                );
                let without_floor = online_count(&before[row], cands.scores_of(row), m[row] * K, 0);
                if without_floor == 0 && got > 0 {
                    rescued[row] += 1;
                }
                totals[row] += got as usize;
                assert!(got as usize <= K + 2, "cap");
                assert!(got as usize >= floor, "floor");
                assert_eq!(cache.valid_tokens(row), m[row]);
                // Cumulative total within m·K, floor rescues being the only excess.
                let prefill_excess = if floor == 1 { tp } else { 0 };
                assert!(
                    totals[row] <= m[row] * K + rescued[row] + prefill_excess,
                    "row {row}: total {} > m·K {} + rescues",
                    totals[row],
                    m[row] * K
                );
                if floor == 0 {
                    assert!(totals[row] <= m[row] * K, "floor 0: hard cumulative budget");
                }
            }
        }
    }
}

#[test]
fn short_history_behaves_like_topk() {
    // With an empty prompt the first token's budget is K: exactly its top-K. After a one-token
    // prompt (which spent exactly K), the next token's budget left is again K.
    let device = Device::flex();
    let mut rng = Lcg(4);
    let router = online_router(1);
    let mut cache = ExpertCache::new(1, E);
    let first = router
        .route_decode(
            logits(rng.vec(E, 3.0), [1, 1, E], &device),
            &TokenLayout::dense(1, 1),
            &mut cache,
        )
        .unwrap();
    let topk = route(
        &config(RoutingMode::Topk, K),
        first.logits.clone(),
        &TokenLayout::dense(1, 1),
    );
    assert_eq!(expert_sets(&first), expert_sets(&topk));
    let second = router
        .route_decode(
            logits(rng.vec(E, 3.0), [1, 1, E], &device),
            &TokenLayout::dense(1, 1),
            &mut cache,
        )
        .unwrap();
    assert!(second.plan.stats.experts_per_token[0] as usize <= K);
}

#[test]
fn full_sequence_online_routing_equals_token_by_token_decoding() {
    let device = Device::flex();
    let mut rng = Lcg(8);
    let t = 15;
    let values = rng.vec(t * E, 3.0);
    let router = online_router(1);
    let whole = router
        .route(
            logits(values.clone(), [1, t, E], &device),
            &TokenLayout::dense(1, t),
        )
        .unwrap();
    let mut cache = ExpertCache::new(1, E);
    for i in 0..t {
        let step = router
            .route_decode(
                logits(values[i * E..(i + 1) * E].to_vec(), [1, 1, E], &device),
                &TokenLayout::dense(1, 1),
                &mut cache,
            )
            .unwrap();
        assert_eq!(expert_sets(&step)[0], expert_sets(&whole)[i], "token {i}");
    }
}

#[test]
fn misuse_is_reported() {
    let device = Device::flex();
    let layout = TokenLayout::dense(1, 3);
    let x = logits(vec![0.1; 3 * E], [1, 3, E], &device);
    let topk = Router::new(&config(RoutingMode::Topk, K), E, false).unwrap();
    let err = topk
        .route_prefill(x.clone(), &layout, &mut ExpertCache::new(1, E))
        .unwrap_err();
    assert!(matches!(err, RoutingError::WrongMode { .. }), "{err}");
    let router = online_router(1);
    let mut cache = ExpertCache::new(1, E);
    router
        .route_prefill(x.clone(), &layout, &mut cache)
        .unwrap();
    let err = router
        .route_prefill(x.clone(), &layout, &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("empty expert cache"), "{err}");
    let err = router
        .route_decode(x, &layout, &mut ExpertCache::new(2, E))
        .unwrap_err();
    assert!(matches!(err, RoutingError::Shape(_)), "{err}");
    cache.reset();
    assert!(cache.is_empty());
}
