//! Properties of SeqTopK, ported from Megatron-LM's SeqTopK tests plus the paper's safeguards.

use crate::common::*;
use proptest::prelude::*;
use seqtopk_backend::test_devices;
use seqtopk_router::{RoutingMode, TokenLayout};

#[test]
fn cap_budget_and_floor_hold_on_random_inputs() {
    for (backend, device) in test_devices() {
        let mut rng = Lcg(11);
        for (b, t, e, k) in [(2, 16, 8, 2), (3, 9, 6, 2), (1, 33, 5, 1), (2, 12, 16, 4)] {
            let layout = TokenLayout::dense(b, t);
            let x = logits(rng.vec(b * t * e, 3.0), [b, t, e], &device);
            for floor in [0, 1] {
                let cfg = config(RoutingMode::Seqtopk, k).with_floor(floor);
                let out = route(&cfg, x.clone(), &layout);
                let counts = &out.plan.stats.experts_per_token;
                let cap = (k + 2).min(e) as u32;
                assert!(counts.iter().all(|&c| c <= cap), "{backend}: cap exceeded");
                for row in 0..b {
                    let row_total: u32 = counts[row * t..(row + 1) * t].iter().sum();
                    if floor == 0 {
                        assert_eq!(row_total as usize, t * k, "{backend}: exact budget per row");
                    } else {
                        assert!(counts[row * t..(row + 1) * t].iter().all(|&c| c >= 1));
                    }
                }
            }
        }
    }
}

#[test]
fn floor_one_total_is_budget_plus_rescued_tokens() {
    // Documented total with floor 1: T·K plus the tokens that won nothing in the competition.
    let (b, t, e, k) = (2, 24, 8, 2);
    for (_, device) in test_devices() {
        let mut rng = Lcg(5);
        // Skewed rows make some tokens lose the competition entirely.
        let mut v = rng.vec(b * t * e, 1.0);
        for p in 0..b * t {
            if p % 3 == 0 {
                v[p * e] += 6.0;
                v[p * e + 1] += 6.0;
            }
        }
        let layout = TokenLayout::dense(b, t);
        let x = logits(v, [b, t, e], &device);
        let without = route(
            &config(RoutingMode::Seqtopk, k).with_floor(0),
            x.clone(),
            &layout,
        );
        let with = route(&config(RoutingMode::Seqtopk, k).with_floor(1), x, &layout);
        let c0 = &without.plan.stats.experts_per_token;
        let c1 = &with.plan.stats.experts_per_token;
        let rescued = c0.iter().filter(|&&c| c == 0).count();
        assert!(rescued > 0, "the input should make some tokens lose");
        for p in 0..b * t {
            assert_eq!(c1[p], c0[p].max(1));
        }
        assert_eq!(with.plan.num_pairs(), b * t * k + rescued);
        // Each token keeps its own top-1 expert.
        let probs = probs_of(&with);
        for (p, set) in expert_sets(&with).iter().enumerate() {
            let row = &probs[p * e..(p + 1) * e];
            let top1 = (0..e).max_by(|&a, &c| row[a].total_cmp(&row[c])).unwrap() as u32;
            assert!(set.contains(&top1), "token {p} lost its top-1");
        }
    }
}

#[test]
fn padding_gets_nothing_and_costs_nothing() {
    for (_, device) in test_devices() {
        let (t, e, k) = (10, 6, 2);
        let mut rng = Lcg(3);
        let v = rng.vec(t * e, 2.0);
        let len = 7;
        let padded = route(
            &config(RoutingMode::Seqtopk, k),
            logits(v.clone(), [1, t, e], &device),
            &TokenLayout::from_lengths(t, &[len]).unwrap(),
        );
        let short = route(
            &config(RoutingMode::Seqtopk, k),
            logits(v[..len * e].to_vec(), [1, len, e], &device),
            &TokenLayout::dense(1, len),
        );
        let sp = expert_sets(&padded);
        let ss = expert_sets(&short);
        assert_eq!(&sp[..len], &ss[..], "padding changed the competition");
        assert!(sp[len..].iter().all(Vec::is_empty), "padding was routed");
        assert_eq!(padded.plan.num_pairs(), short.plan.num_pairs());
    }
}

#[test]
fn documents_in_a_packed_row_do_not_compete() {
    for (_, device) in test_devices() {
        let (e, k) = (6, 2);
        let (la, lb) = (5, 7);
        let mut rng = Lcg(9);
        let va = rng.vec(la * e, 2.5);
        let vb = rng.vec(lb * e, 2.5);
        let packed: Vec<f32> = va.iter().chain(&vb).copied().collect();
        let t = la + lb;
        let doc_ids = (0..t).map(|i| u32::from(i >= la)).collect();
        let layout = TokenLayout::new(1, t, vec![true; t], doc_ids).unwrap();
        let cfg = config(RoutingMode::Seqtopk, k);
        let p = expert_sets(&route(&cfg, logits(packed, [1, t, e], &device), &layout));
        let a = expert_sets(&route(
            &cfg,
            logits(va, [1, la, e], &device),
            &TokenLayout::dense(1, la),
        ));
        let b = expert_sets(&route(
            &cfg,
            logits(vb, [1, lb, e], &device),
            &TokenLayout::dense(1, lb),
        ));
        assert_eq!(&p[..la], &a[..]);
        assert_eq!(&p[la..], &b[..]);
    }
}

#[test]
fn hard_tokens_get_more_experts_than_easy_ones() {
    for (_, device) in test_devices() {
        let e = 8;
        // Token 0 is hard: four experts equally strong. Token 1 is easy: one dominant expert.
        // Tokens 2 and 3 ramp mildly. TopK would give each of them exactly K = 2.
        let mut v = vec![0.0f32; 4 * e];
        v[..4].fill(5.0);
        v[e] = 8.0;
        for x in 0..e {
            v[2 * e + x] = x as f32 * 0.3;
            v[3 * e + x] = (e - x) as f32 * 0.3;
        }
        let out = route(
            &config(RoutingMode::Seqtopk, 2),
            logits(v, [1, 4, e], &device),
            &TokenLayout::dense(1, 4),
        );
        let c = &out.plan.stats.experts_per_token;
        assert_eq!(c[0], 4, "the hard token reaches the cap K+2");
        assert_eq!(c[1], 1, "the easy token keeps only its top-1");
        assert_eq!(c.iter().sum::<u32>(), 8, "same total budget as TopK");
    }
}

#[test]
fn seqtopk_with_one_token_is_topk() {
    for (_, device) in test_devices() {
        let mut rng = Lcg(21);
        for e in [5, 8, 64] {
            for k in [1, 2, 4] {
                let v = rng.vec(3 * e, 3.0);
                let layout = TokenLayout::dense(3, 1);
                let s = route(
                    &config(RoutingMode::Seqtopk, k),
                    logits(v.clone(), [3, 1, e], &device),
                    &layout,
                );
                let t = route(
                    &config(RoutingMode::Topk, k),
                    logits(v, [3, 1, e], &device),
                    &layout,
                );
                assert_eq!(expert_sets(&s), expert_sets(&t));
            }
        }
    }
}

#[test]
fn batch_topk_spends_one_budget_across_rows() {
    let device = burn::tensor::Device::flex();
    let (t, e, k) = (4, 6, 2);
    // Row 0 is confident everywhere, row 1 is flat: rows compete, unlike SeqTopK.
    let mut v = vec![0.0f32; 2 * t * e];
    for p in 0..t {
        v[p * e] = 9.0;
        v[p * e + 1] = 8.5;
        v[p * e + 2] = 8.0;
    }
    let layout = TokenLayout::dense(2, t);
    let out = route(
        &config(RoutingMode::BatchTopk, k),
        logits(v.clone(), [2, t, e], &device),
        &layout,
    );
    assert_eq!(
        out.plan.num_pairs(),
        2 * t * k,
        "exact batch budget with floor 0"
    );
    let c = &out.plan.stats.experts_per_token;
    let row0: u32 = c[..t].iter().sum();
    assert!(
        row0 > (t * k) as u32,
        "the confident row took budget from the flat one"
    );
    let seq = route(
        &config(RoutingMode::Seqtopk, k).with_floor(0),
        logits(v, [2, t, e], &device),
        &layout,
    );
    let c = &seq.plan.stats.experts_per_token;
    assert_eq!(
        c[..t].iter().sum::<u32>(),
        (t * k) as u32,
        "SeqTopK keeps rows apart"
    );
}

#[test]
fn top_p_keeps_the_shortest_prefix_reaching_p() {
    let device = burn::tensor::Device::flex();
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let v: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    for (p, expected) in [(0.4, 1), (0.7, 2), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4)] {
        let out = route(
            &config(RoutingMode::TopP, 1).with_top_p(p),
            logits(v.clone(), [1, 1, 4], &device),
            &TokenLayout::dense(1, 1),
        );
        assert_eq!(out.plan.stats.experts_per_token[0], expected, "p = {p}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Equality with a brute-force reference over random shapes, paddings, documents, caps and
    /// floors.
    #[test]
    fn seqtopk_matches_brute_force(
        seed in any::<u64>(),
        b in 1usize..3, t in 1usize..20, e in 2usize..12, k_frac in 0.0f64..1.0,
        extra_cap in 0usize..4, floor in 0usize..2, split in 0usize..20, pad in 0usize..5,
        batch_mode in any::<bool>(),
    ) {
        let device = burn::tensor::Device::flex();
        let k = 1 + ((e - 1) as f64 * k_frac) as usize;
        let cap = (k + extra_cap).min(e);
        let mut rng = Lcg(seed);
        let n = b * t;
        let valid: Vec<bool> = (0..n).map(|p| p % t < t.saturating_sub(pad).max(1)).collect();
        let doc_ids: Vec<u32> = (0..n).map(|p| u32::from(p % t >= split)).collect();
        let layout = TokenLayout::new(b, t, valid.clone(), doc_ids.clone()).unwrap();
        let mode = if batch_mode { RoutingMode::BatchTopk } else { RoutingMode::Seqtopk };
        let cfg = config(mode, k).with_cap(cap).with_floor(floor);
        let out = route(&cfg, logits(rng.vec(n * e, 4.0), [b, t, e], &device), &layout);
        let probs = probs_of(&out);
        let segments: Vec<Vec<usize>> = if batch_mode {
            vec![(0..n).filter(|&p| valid[p]).collect()]
        } else {
            let mut s = Vec::new();
            for row in 0..b {
                for doc in 0..2u32 {
                    let toks: Vec<usize> = (row * t..(row + 1) * t)
                        .filter(|&p| valid[p] && doc_ids[p] == doc)
                        .collect();
                    if !toks.is_empty() { s.push(toks); }
                }
            }
            s
        };
        let expected = brute_force_budgeted(&probs, e, &segments, n, k, cap, floor);
        prop_assert_eq!(expert_sets(&out), expected);
    }
}
