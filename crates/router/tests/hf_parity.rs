//! `topk` routing and the `hf` load-balancing loss against values Hugging Face transformers
//! produced (fixture made by `tools/fixtures/make_router_fixture.py`).

use std::path::PathBuf;

use crate::common::*;
use safetensors::{Dtype, SafeTensors};
use seqtopk_backend::test_devices;
use seqtopk_router::{LbConvention, Router, RoutingMode, TokenLayout, load_balancing_loss};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checkpoints/fixtures/router")
}

fn read<T: Copy>(
    st: &SafeTensors<'_>,
    name: &str,
    dtype: Dtype,
    from: fn([u8; 8]) -> T,
    width: usize,
) -> (Vec<T>, Vec<usize>) {
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(view.dtype(), dtype, "{name}");
    let values = view
        .data()
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            from(b)
        })
        .collect();
    (values, view.shape().to_vec())
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    read(
        st,
        name,
        Dtype::F32,
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        4,
    )
}

fn i64s(st: &SafeTensors<'_>, name: &str) -> (Vec<i64>, Vec<usize>) {
    read(st, name, Dtype::I64, i64::from_le_bytes, 8)
}

#[test]
fn topk_and_lb_loss_match_transformers() {
    let bytes = std::fs::read(fixture_dir().join("hf_topk.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("hf_topk.json")).unwrap())
            .unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (backend, device) in test_devices() {
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let e = case["num_experts"].as_u64().unwrap() as usize;
            let k = case["top_k"].as_u64().unwrap() as usize;
            let norm = case["norm_topk_prob"].as_bool().unwrap();
            let router = Router::new(&config(RoutingMode::Topk, k), e, norm).unwrap();

            let (x, shape) = f32s(&st, &format!("{name}.logits"));
            let n = shape[0];
            let out = router
                .route(logits(x, [1, n, e], &device), &TokenLayout::dense(1, n))
                .unwrap();
            let (weights, _) = f32s(&st, &format!("{name}.weights"));
            let (indices, _) = i64s(&st, &format!("{name}.indices"));
            for (p, got) in out.plan.per_token().iter().enumerate() {
                assert_eq!(got.len(), k);
                for (j, &(expert, w)) in got.iter().enumerate() {
                    assert_eq!(
                        i64::from(expert),
                        indices[p * k + j],
                        "{backend} {name} token {p} slot {j}"
                    );
                    assert!(
                        (w - weights[p * k + j]).abs() <= 1e-6,
                        "{backend} {name} token {p}: {w} vs {}",
                        weights[p * k + j]
                    );
                }
            }

            // Load-balancing loss, transformers' convention, two layers, with and without padding.
            let (lb, lb_shape) = f32s(&st, &format!("{name}.lb_logits"));
            let (mask, mask_shape) = i64s(&st, &format!("{name}.lb_mask"));
            let (b, t) = (mask_shape[0], mask_shape[1]);
            let rows = lb_shape[1];
            let masked =
                TokenLayout::new(b, t, mask.iter().map(|&m| m == 1).collect(), vec![0; b * t])
                    .unwrap();
            let dense = TokenLayout::dense(b, t);
            for (layout, key) in [(masked, "lb_loss"), (dense, "lb_loss_nomask")] {
                let outs: Vec<_> = (0..2)
                    .map(|l| {
                        let layer = lb[l * rows * e..(l + 1) * rows * e].to_vec();
                        router
                            .route(logits(layer, [b, t, e], &device), &layout)
                            .unwrap()
                    })
                    .collect();
                let got = load_balancing_loss(&outs, &layout, LbConvention::Hf)
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .unwrap()[0];
                let (expected, _) = f32s(&st, &format!("{name}.{key}"));
                assert!(
                    (got - expected[0]).abs() <= 2e-5,
                    "{backend} {name} {key}: {got} vs {}",
                    expected[0]
                );
            }
        }
    }
}
