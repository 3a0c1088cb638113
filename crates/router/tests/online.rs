//! Online SeqTopK: prefill, decode steps, the expert cache and the cumulative budget.

use crate::common::*;
use burn::tensor::Device;
use seqtopk_router::select::{Candidates, online_count};
use seqtopk_router::{ExpertCache, OnlineBudget, Router, RoutingError, RoutingMode, TokenLayout};

const E: usize = 8;
const K: usize = 2;

fn online_router(floor: usize) -> Router {
    online_router_with(floor, OnlineBudget::default())
}

fn online_router_with(floor: usize, rule: OnlineBudget) -> Router {
    Router::new(
        &config(RoutingMode::OnlineSeqtopk, K)
            .with_floor(floor)
            .with_online_budget(rule),
        E,
        false,
    )
    .unwrap()
}

/// The authors' online rule for one new token, written from their pseudo-code with a plain sort
/// (no ranks, no Fenwick tree, no candidate lists): `history` holds the selected score of every
/// past (token, expert), zero elsewhere, one `[E]` row per past valid token; `scores` is the new
/// token's full softmax row. Cap the new row to its top-`cap`, pool the positive entries of the
/// history and the new row, sort them (score desc, past before new, expert asc), keep the first
/// `m·k`; the new token runs its own entries among them, OR its top-1 when `floor` is 1.
/// `strict` additionally keeps at most `m·k - past pairs` of them (before the floor).
fn brute_force_online(
    history: &[Vec<f32>],
    scores: &[f32],
    k: usize,
    cap: usize,
    floor: usize,
    strict: bool,
) -> Vec<u32> {
    let e = scores.len();
    let mut by_score: Vec<usize> = (0..e).collect();
    by_score.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut capped = vec![0f32; e];
    for &x in &by_score[..cap] {
        capped[x] = scores[x];
    }
    // (score, row, expert); the new token is row `history.len()`.
    let mut pool: Vec<(f32, usize, usize)> = Vec::new();
    for (row, past) in history.iter().chain(std::iter::once(&capped)).enumerate() {
        for (x, &v) in past.iter().enumerate() {
            if v > 0.0 {
                pool.push((v, row, x));
            }
        }
    }
    pool.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let m = history.len() + 1;
    let mut mine: Vec<u32> = pool
        .iter()
        .take(m * k)
        .filter(|entry| entry.1 == history.len())
        .map(|entry| entry.2 as u32)
        .collect();
    if strict {
        let past_pairs = history.iter().flatten().filter(|&&v| v > 0.0).count();
        mine.truncate((m * k).saturating_sub(past_pairs));
    }
    if floor == 1 && !mine.contains(&(by_score[0] as u32)) {
        mine.push(by_score[0] as u32);
    }
    mine.sort_unstable();
    mine
}

/// Routes one row as generation would with the brute-force rule: the first `prompt` valid
/// positions by offline SeqTopK (the common brute force), then each later valid position by
/// [`brute_force_online`]. `valid` marks the row's real tokens; returns sorted sets per position.
fn brute_force_row(
    probs: &[f32],
    valid: &[bool],
    prompt: usize,
    floor: usize,
    strict: bool,
) -> Vec<Vec<u32>> {
    let positions: Vec<usize> = (0..valid.len()).filter(|&i| valid[i]).collect();
    let (head, tail) = positions.split_at(prompt);
    let mut sets = brute_force_budgeted(probs, E, &[head.to_vec()], valid.len(), K, K + 2, floor);
    let mut history: Vec<Vec<f32>> = head
        .iter()
        .map(|&p| {
            let mut row = vec![0f32; E];
            for &x in &sets[p] {
                row[x as usize] = probs[p * E + x as usize];
            }
            row
        })
        .collect();
    for &p in tail {
        let row = &probs[p * E..(p + 1) * E];
        let set = brute_force_online(&history, row, K, K + 2, floor, strict);
        let mut kept = vec![0f32; E];
        for &x in &set {
            kept[x as usize] = row[x as usize];
        }
        history.push(kept);
        sets[p] = set;
    }
    sets
}

#[test]
fn online_routing_equals_a_brute_force_of_the_authors_rule() {
    // Prompt lengths 0 (causal from an empty history), 1, and a long prompt; row 2 right-padded.
    let device = Device::flex();
    let mut rng = Lcg(23);
    let (b, t) = (3, 24);
    let lengths = [24, 24, 17];
    let prompts = [0, 1, 9];
    let layout = TokenLayout::from_lengths(t, &lengths).unwrap();
    for rule in [OnlineBudget::Rank, OnlineBudget::Strict] {
        for floor in [0, 1] {
            let router = online_router_with(floor, rule);
            let out = router
                .route_prompted(
                    logits(rng.vec(b * t * E, 3.0), [b, t, E], &device),
                    &layout,
                    &prompts,
                )
                .unwrap();
            let probs = probs_of(&out);
            let got = expert_sets(&out);
            for row in 0..b {
                let want = brute_force_row(
                    &probs[row * t * E..(row + 1) * t * E],
                    layout.valid()[row * t..(row + 1) * t].as_ref(),
                    prompts[row],
                    floor,
                    rule == OnlineBudget::Strict,
                );
                assert_eq!(
                    got[row * t..(row + 1) * t],
                    want[..],
                    "{rule}, floor {floor}, row {row}"
                );
            }
            // The same tokens prefilled and then decoded one step at a time route identically.
            for row in 0..b {
                let (n, prompt) = (lengths[row], prompts[row]);
                let row_logits = |from: usize, to: usize| {
                    out.logits
                        .clone()
                        .narrow(0, row, 1)
                        .narrow(1, from, to - from)
                };
                let mut cache = ExpertCache::new(1, E);
                if prompt > 0 {
                    let pre = router
                        .route_prefill(
                            row_logits(0, prompt),
                            &TokenLayout::dense(1, prompt),
                            &mut cache,
                        )
                        .unwrap();
                    assert_eq!(expert_sets(&pre)[..], got[row * t..row * t + prompt]);
                }
                for i in prompt..n {
                    let step = router
                        .route_decode(row_logits(i, i + 1), &TokenLayout::dense(1, 1), &mut cache)
                        .unwrap();
                    assert_eq!(
                        expert_sets(&step)[0],
                        got[row * t + i],
                        "{rule} row {row} pos {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn rank_rule_reallocates_where_strict_rule_is_nearly_topk() {
    // A causal pass from an empty history over 64 tokens: under `rank` many tokens get other than
    // K experts (some up to the cap), under `strict` no token exceeds what the budget left allows
    // and the allocation stays close to per-token top-K.
    let device = Device::flex();
    let mut rng = Lcg(5);
    let t = 64;
    let values = rng.vec(t * E, 3.0);
    let layout = TokenLayout::dense(1, t);
    let counts = |rule| {
        online_router_with(1, rule)
            .route(logits(values.clone(), [1, t, E], &device), &layout)
            .unwrap()
            .plan
            .stats
            .experts_per_token
    };
    let rank = counts(OnlineBudget::Rank);
    let strict = counts(OnlineBudget::Strict);
    let off_k = |c: &[u32]| c.iter().filter(|&&n| n as usize != K).count();
    assert!(rank.iter().any(|&n| n as usize > K), "rank: {rank:?}");
    assert!(
        off_k(&rank) > 2 * off_k(&strict),
        "rank {} vs strict {} tokens off K",
        off_k(&rank),
        off_k(&strict)
    );
    let mut spent = 0;
    for (m, &n) in strict.iter().enumerate() {
        assert!(
            n as usize <= ((m + 1) * K).saturating_sub(spent).max(1),
            "strict token {m}"
        );
        spent += n as usize;
    }
}

#[test]
fn an_all_padding_row_gets_no_experts_and_consumes_nothing() {
    let device = Device::flex();
    let mut rng = Lcg(31);
    let (b, t) = (2, 6);
    let layout = TokenLayout::from_lengths(t, &[6, 0]).unwrap();
    let values = rng.vec(b * t * E, 3.0);
    for mode in [
        RoutingMode::Topk,
        RoutingMode::Seqtopk,
        RoutingMode::OnlineSeqtopk,
        RoutingMode::BatchTopk,
    ] {
        let out = route(
            &config(mode, K),
            logits(values.clone(), [b, t, E], &device),
            &layout,
        );
        assert!(
            out.plan.pair_positions().iter().all(|&p| (p as usize) < t),
            "{mode}: a padding position was routed"
        );
        // The real row routes as it would alone.
        let alone = route(
            &config(mode, K),
            logits(values[..t * E].to_vec(), [1, t, E], &device),
            &TokenLayout::dense(1, t),
        );
        assert_eq!(expert_sets(&out)[..t], expert_sets(&alone)[..], "{mode}");
    }
    let router = online_router(1);
    let out = router
        .route_prompted(logits(values.clone(), [b, t, E], &device), &layout, &[3, 0])
        .unwrap();
    assert!(out.plan.pair_positions().iter().all(|&p| (p as usize) < t));
    let err = router
        .route_prompted(logits(values.clone(), [b, t, E], &device), &layout, &[3, 1])
        .unwrap_err();
    assert!(err.to_string().contains("prompt_lens[1] = 1"), "{err}");
    // Generation: an all-padding row in prefill and decode leaves its cache without tokens.
    let mut cache = ExpertCache::new(b, E);
    let left_padded =
        TokenLayout::new(b, t, (0..b * t).map(|p| p < t).collect(), vec![0; b * t]).unwrap();
    router
        .route_prefill(
            logits(values.clone(), [b, t, E], &device),
            &left_padded,
            &mut cache,
        )
        .unwrap();
    let step = router
        .route_decode(
            logits(rng.vec(b * E, 3.0), [b, 1, E], &device),
            &TokenLayout::new(b, 1, vec![true, false], vec![0; b]).unwrap(),
            &mut cache,
        )
        .unwrap();
    assert_eq!(step.plan.stats.experts_per_token[1], 0);
    assert_eq!((cache.valid_tokens(0), cache.valid_tokens(1)), (t + 1, 0));
    assert!(cache.selected_desc(1).is_empty());
    assert!(cache.scores(1).iter().all(|&s| s == 0.0));
}

/// Candidates of each position computed on the host from the router's own probabilities.
fn host_candidates(probs: &[f32]) -> Candidates {
    Candidates::from_rows(probs, E, K + 2)
}

#[test]
fn prompt_then_decode_steps_follow_the_cache_and_the_budget() {
    let device = Device::flex();
    let mut rng = Lcg(17);
    for (floor, rule) in [
        (0, OnlineBudget::Strict),
        (1, OnlineBudget::Strict),
        (0, OnlineBudget::Rank),
        (1, OnlineBudget::Rank),
    ] {
        let router = online_router_with(floor, rule);
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
                let expected =
                    online_count(&before[row], cands.scores_of(row), m[row] * K, floor, rule);
                assert_eq!(
                    got, expected,
                    "decode step routing equals the rule on cached scores"
                );
                let without_floor =
                    online_count(&before[row], cands.scores_of(row), m[row] * K, 0, rule);
                if without_floor == 0 && got > 0 {
                    rescued[row] += 1;
                }
                totals[row] += got as usize;
                assert!(got as usize <= K + 2, "cap");
                assert!(got as usize >= floor, "floor");
                assert_eq!(cache.valid_tokens(row), m[row]);
                if rule == OnlineBudget::Rank {
                    continue;
                }
                // Strict: cumulative total within m·K, floor rescues being the only excess.
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
    // history (which spent exactly K), the next token's budget left under `strict` is again K.
    let device = Device::flex();
    let mut rng = Lcg(4);
    let router = online_router_with(1, OnlineBudget::Strict);
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
    // Prompted routing: online mode only, one prompt length per row, one document per row.
    let x = logits(vec![0.1; 3 * E], [1, 3, E], &device);
    let err = topk.route_prompted(x.clone(), &layout, &[1]).unwrap_err();
    assert!(matches!(err, RoutingError::WrongMode { .. }), "{err}");
    let err = router
        .route_prompted(x.clone(), &layout, &[1, 1])
        .unwrap_err();
    assert!(
        err.to_string().contains("prompt_lens has 2 entries"),
        "{err}"
    );
    let packed = TokenLayout::new(1, 3, vec![true; 3], vec![0, 0, 1]).unwrap();
    let err = router.route_prompted(x, &packed, &[1]).unwrap_err();
    assert!(err.to_string().contains("several documents"), "{err}");
}
