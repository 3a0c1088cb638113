//! Gradients reach the router only through the selected probabilities, and every loss has a
//! correct gradient (finite differences in f64).

use crate::common::*;
use burn::tensor::{Device, Tensor, TensorData};
use seqtopk_router::{
    LbConvention, Router, RouterConfig, RouterOutput, RoutingMode, TokenLayout,
    load_balancing_loss, z_loss,
};

const SHAPE: [usize; 3] = [2, 6, 5];

fn layout() -> TokenLayout {
    // Row 0: two documents; row 1: one document then padding.
    let (b, t) = (SHAPE[0], SHAPE[1]);
    let valid = (0..b * t).map(|p| p < t || p % t < 4).collect();
    let docs = (0..b * t).map(|p| u32::from(p < t && p % t >= 3)).collect();
    TokenLayout::new(b, t, valid, docs).unwrap()
}

/// A fixed coefficient per (position, expert) so the weight loss is not symmetric.
fn coef(p: u32, e: usize) -> f64 {
    ((p as f64) * 0.7 + e as f64 * 1.3).sin() + 1.5
}

/// The scalar loss under test, computed from router outputs of two layers.
#[derive(Clone, Copy, Debug)]
enum Objective {
    Weights,
    Lb(LbConvention),
    Z,
}

fn objective(outs: &[RouterOutput], layout: &TokenLayout, which: Objective) -> Tensor<1> {
    match which {
        Objective::Weights => {
            let mut total = None;
            for out in outs {
                let plan = &out.plan;
                let mut c = vec![0.0f64; plan.num_pairs()];
                for e in 0..plan.num_experts() {
                    for slot in plan.expert_range(e) {
                        c[slot] = coef(plan.pair_positions()[slot], e);
                    }
                }
                let n = c.len();
                let c = Tensor::<1>::from_data(
                    TensorData::new(c, [n]),
                    (&out.probs.device(), out.probs.dtype()),
                );
                let layer = (plan.weights.clone() * c).sum();
                total = Some(match total {
                    Some(acc) => acc + layer,
                    None => layer,
                });
            }
            total.unwrap()
        }
        Objective::Lb(convention) => load_balancing_loss(outs, layout, convention),
        Objective::Z => z_loss(outs, layout),
    }
}

fn evaluate(
    config: &RouterConfig,
    values: &[f64],
    device: &Device,
    which: Objective,
) -> (f64, Option<Vec<f64>>) {
    let router = Router::new(config, SHAPE[2], false).unwrap();
    let layout = layout();
    let n = values.len() / 2;
    let layers: Vec<Tensor<3>> = (0..2)
        .map(|l| {
            let x = logits_f64(values[l * n..(l + 1) * n].to_vec(), SHAPE, device);
            if device.is_autodiff() {
                x.require_grad()
            } else {
                x
            }
        })
        .collect();
    let outs: Vec<RouterOutput> = layers
        .iter()
        .map(|x| router.route(x.clone(), &layout).unwrap())
        .collect();
    let loss = objective(&outs, &layout, which);
    let value = loss.clone().into_data().try_into_vec_as::<f64>().unwrap()[0];
    if !device.is_autodiff() {
        return (value, None);
    }
    let grads = loss.backward();
    let mut g = Vec::new();
    for x in &layers {
        g.extend(
            x.grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec_as::<f64>()
                .unwrap(),
        );
    }
    (value, Some(g))
}

fn check(config: RouterConfig, which: Objective) {
    let plain = Device::flex();
    let ad = Device::flex().autodiff();
    let mut rng = Lcg(99);
    let n = 2 * SHAPE.iter().product::<usize>();
    let values: Vec<f64> = rng.vec(n, 2.0).into_iter().map(f64::from).collect();
    let (_, grad) = evaluate(&config, &values, &ad, which);
    let grad = grad.unwrap();
    let eps = 1e-6;
    let mut max_err = 0.0f64;
    for i in 0..n {
        let mut up = values.clone();
        up[i] += eps;
        let mut down = values.clone();
        down[i] -= eps;
        let fd = (evaluate(&config, &up, &plain, which).0
            - evaluate(&config, &down, &plain, which).0)
            / (2.0 * eps);
        // Central differences in f64 carry ~1e-9 of roundoff: compare relatively above 1e-3.
        let err = (fd - grad[i]).abs() / fd.abs().max(grad[i].abs()).max(1e-3);
        max_err = max_err.max(err);
    }
    assert!(
        max_err < 1e-5,
        "{which:?} {:?}: max relative error {max_err:e}",
        config.mode
    );
}

#[test]
fn weights_gradient_matches_finite_differences() {
    for mode in [
        RoutingMode::Topk,
        RoutingMode::Seqtopk,
        RoutingMode::OnlineSeqtopk,
        RoutingMode::BatchTopk,
    ] {
        check(config(mode, 2), Objective::Weights);
        check(config(mode, 2).with_renormalize(true), Objective::Weights);
    }
    check(
        config(RoutingMode::TopP, 1).with_top_p(0.6),
        Objective::Weights,
    );
}

#[test]
fn loss_gradients_match_finite_differences() {
    for convention in [
        LbConvention::Hf,
        LbConvention::Normalized,
        LbConvention::Sequence,
    ] {
        check(config(RoutingMode::Seqtopk, 2), Objective::Lb(convention));
        check(config(RoutingMode::Topk, 2), Objective::Lb(convention));
    }
    check(config(RoutingMode::Seqtopk, 2), Objective::Z);
}

#[test]
fn unselected_pairs_get_zero_gradient() {
    // d loss / d prob is `coef` on selected pairs and exactly 0 elsewhere, so the logit
    // gradient must equal the softmax Jacobian applied to that sparse vector.
    let ad = Device::flex().autodiff();
    let mut rng = Lcg(12);
    let cfg = config(RoutingMode::Seqtopk, 2).with_floor(0);
    let router = Router::new(&cfg, SHAPE[2], false).unwrap();
    let layout = layout();
    let x = logits_f64(
        rng.vec(SHAPE.iter().product(), 2.0)
            .into_iter()
            .map(f64::from)
            .collect(),
        SHAPE,
        &ad,
    )
    .require_grad();
    let out = router.route(x.clone(), &layout).unwrap();
    let loss = objective(std::slice::from_ref(&out), &layout, Objective::Weights);
    let grad = x
        .grad(&loss.backward())
        .unwrap()
        .into_data()
        .try_into_vec_as::<f64>()
        .unwrap();
    let probs = out
        .probs
        .clone()
        .into_data()
        .try_into_vec_as::<f64>()
        .unwrap();
    let e = SHAPE[2];
    let sets = expert_sets(&out);
    let mut unselected_tokens = 0;
    for (p, set) in sets.iter().enumerate() {
        let row = &probs[p * e..(p + 1) * e];
        let g: Vec<f64> = (0..e)
            .map(|x| {
                if set.contains(&(x as u32)) {
                    coef(p as u32, x)
                } else {
                    0.0
                }
            })
            .collect();
        let dot: f64 = (0..e).map(|x| row[x] * g[x]).sum();
        for x in 0..e {
            let expected = row[x] * (g[x] - dot);
            assert!(
                (grad[p * e + x] - expected).abs() < 1e-12,
                "pos {p} expert {x}"
            );
        }
        if set.is_empty() {
            unselected_tokens += 1;
            assert!(
                grad[p * e..(p + 1) * e].iter().all(|&v| v == 0.0),
                "token without experts"
            );
        }
    }
    assert!(
        unselected_tokens > 0,
        "padding positions must have zero gradient"
    );
}
