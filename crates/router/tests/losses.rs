//! Load-balancing and z-loss values.

use crate::common::*;
use burn::tensor::Device;
use seqtopk_router::{
    LbConvention, LbDispatch, LoadBalanceConfig, Router, RouterConfig, RouterOutput, RoutingMode,
    TokenLayout, load_balancing_loss, z_loss,
};

fn scalar(t: burn::tensor::Tensor<1>) -> f64 {
    t.into_data().try_into_vec_as::<f64>().unwrap()[0]
}

/// Token `t` strongly prefers experts `t` and `t+1` (mod E): perfectly balanced dispatch with
/// uniform mean probabilities.
fn cyclic(rows: usize, e: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; rows * e * e];
    for r in 0..rows {
        for t in 0..e {
            v[(r * e + t) * e + t] = 4.0;
            v[(r * e + t) * e + (t + 1) % e] = 3.9;
        }
    }
    v
}

#[test]
fn perfect_balance_gives_each_conventions_reference_value() {
    for (_, device) in seqtopk_backend::test_devices() {
        let (rows, e, k) = (2, 6, 2);
        let layout = TokenLayout::dense(rows, e);
        let outs: Vec<RouterOutput> = (0..3)
            .map(|_| {
                route(
                    &config(RoutingMode::Topk, k),
                    logits(cyclic(rows, e), [rows, e, e], &device),
                    &layout,
                )
            })
            .collect();
        let hf = scalar(load_balancing_loss(&outs, &layout, LbConvention::Hf));
        let normalized = scalar(load_balancing_loss(
            &outs,
            &layout,
            LbConvention::Normalized,
        ));
        let sequence = scalar(load_balancing_loss(&outs, &layout, LbConvention::Sequence));
        assert!((hf - k as f64).abs() < 1e-5, "hf = {hf}, expected K = {k}");
        assert!((normalized - 1.0).abs() < 1e-5, "normalized = {normalized}");
        assert!((sequence - 1.0).abs() < 1e-5, "sequence = {sequence}");
        let none = scalar(load_balancing_loss(&outs, &layout, LbConvention::None));
        assert_eq!(none, 0.0);
    }
}

#[test]
fn collapse_raises_every_convention() {
    let device = Device::flex();
    let (t, e, k) = (8, 4, 1);
    let mut v = vec![0.0f32; t * e];
    for p in 0..t {
        v[p * e] = 5.0;
    }
    let layout = TokenLayout::dense(1, t);
    let outs = vec![route(
        &config(RoutingMode::Topk, k),
        logits(v, [1, t, e], &device),
        &layout,
    )];
    for c in [
        LbConvention::Hf,
        LbConvention::Normalized,
        LbConvention::Sequence,
    ] {
        let value = scalar(load_balancing_loss(&outs, &layout, c));
        assert!(value > 3.5, "{c:?}: collapsed routing gives {value}");
    }
}

#[test]
fn padding_does_not_change_the_losses() {
    let device = Device::flex();
    let (t, e, len) = (9, 5, 6);
    let mut rng = Lcg(31);
    let v = rng.vec(t * e, 2.0);
    let cfg = config(RoutingMode::Seqtopk, 2);
    let padded_layout = TokenLayout::from_lengths(t, &[len]).unwrap();
    let padded = vec![route(
        &cfg,
        logits(v.clone(), [1, t, e], &device),
        &padded_layout,
    )];
    let short_layout = TokenLayout::dense(1, len);
    let short = vec![route(
        &cfg,
        logits(v[..len * e].to_vec(), [1, len, e], &device),
        &short_layout,
    )];
    for c in [
        LbConvention::Hf,
        LbConvention::Normalized,
        LbConvention::Sequence,
    ] {
        let a = scalar(load_balancing_loss(&padded, &padded_layout, c));
        let b = scalar(load_balancing_loss(&short, &short_layout, c));
        assert!((a - b).abs() < 1e-6, "{c:?}: {a} vs {b}");
    }
    let a = scalar(z_loss(&padded, &padded_layout));
    let b = scalar(z_loss(&short, &short_layout));
    assert!((a - b).abs() < 1e-5, "z-loss {a} vs {b}");
}

#[test]
fn virtual_topk_dispatch_differs_from_actual_only_when_the_mode_does() {
    let device = Device::flex();
    let (t, e) = (12, 6);
    let mut rng = Lcg(77);
    let v = rng.vec(t * e, 3.0);
    let layout = TokenLayout::dense(1, t);
    let lb = |mode, dispatch| {
        let cfg = RouterConfig {
            load_balance: LoadBalanceConfig {
                dispatch,
                ..LoadBalanceConfig::default()
            },
            ..config(mode, 2)
        };
        let out = Router::new(&cfg, e, false)
            .unwrap()
            .route(logits(v.clone(), [1, t, e], &device), &layout)
            .unwrap();
        scalar(load_balancing_loss(&[out], &layout, LbConvention::Hf))
    };
    let topk_actual = lb(RoutingMode::Topk, LbDispatch::Actual);
    assert_eq!(topk_actual, lb(RoutingMode::Topk, LbDispatch::VirtualTopk));
    assert_eq!(
        topk_actual,
        lb(RoutingMode::Seqtopk, LbDispatch::VirtualTopk)
    );
    assert_ne!(topk_actual, lb(RoutingMode::Seqtopk, LbDispatch::Actual));
}

#[test]
fn z_loss_is_mean_squared_logsumexp() {
    let device = Device::flex();
    let (t, e) = (5, 4);
    let mut rng = Lcg(2);
    let v = rng.vec(t * e, 3.0);
    let layout = TokenLayout::dense(1, t);
    let out = route(
        &config(RoutingMode::Topk, 1),
        logits(v.clone(), [1, t, e], &device),
        &layout,
    );
    let expected: f64 = v
        .chunks(e)
        .map(|row| {
            let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            lse * lse
        })
        .sum::<f64>()
        / t as f64;
    let got = scalar(z_loss(&[out], &layout));
    assert!(
        (got - expected).abs() < 1e-4 * expected,
        "{got} vs {expected}"
    );
}
