//! Helpers shared by the model crate's integration tests (the modules of `tests/main.rs`): where
//! the committed fixtures are and how their Hugging Face golden outputs are read.

use std::path::PathBuf;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use seqtopk_router::TokenLayout;

/// The committed tiny checkpoint `checkpoints/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/fixtures")
        .join(name)
}

/// A fixture's `golden.safetensors`: what transformers computed on it.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    /// Reads `name`'s golden file.
    pub fn open(name: &str) -> Self {
        Self {
            bytes: std::fs::read(fixture(name).join("golden.safetensors"))
                .expect("golden.safetensors"),
        }
    }

    /// Shape, dtype and raw bytes of `key`.
    fn get(&self, key: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("golden key {key}"));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    /// Shape and values of the f32 tensor `key`.
    pub fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        self.values(key, Dtype::F32, f32::from_le_bytes)
    }

    /// The golden right-padded batch: ids, which positions are real, and its layout.
    pub fn batch(&self) -> (Vec<u32>, Vec<bool>, TokenLayout) {
        let (shape, ids) = self.i64s("input_ids");
        let (_, mask) = self.i64s("attention_mask");
        let (b, t) = (shape[0], shape[1]);
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let valid: Vec<bool> = mask.iter().map(|&m| m == 1).collect();
        let layout = TokenLayout::new(b, t, valid.clone(), vec![0; b * t]).unwrap();
        (ids, valid, layout)
    }

    /// Shape and values of the i64 tensor `key`.
    pub fn i64s(&self, key: &str) -> (Vec<usize>, Vec<i64>) {
        self.values(key, Dtype::I64, i64::from_le_bytes)
    }

    /// Shape and little-endian values of `key`, which must be stored as `dtype`.
    fn values<T, const N: usize>(
        &self,
        key: &str,
        dtype: Dtype,
        from_le: fn([u8; N]) -> T,
    ) -> (Vec<usize>, Vec<T>) {
        let (shape, stored, data) = self.get(key);
        assert_eq!(stored, dtype, "{key}");
        let values = data
            .chunks_exact(N)
            .map(|c| from_le(c.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    /// HF's left-padded greedy-generation prompts (unpadded) and the tokens it generated after
    /// each.
    pub fn generation(&self) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let (shape, ids) = self.i64s("gen_prompt_ids");
        let (_, mask) = self.i64s("gen_attention_mask");
        let (oshape, out) = self.i64s("gen_output_ids");
        let (b, t, to) = (shape[0], shape[1], oshape[1]);
        let prompts = (0..b)
            .map(|r| {
                (0..t)
                    .filter(|&i| mask[r * t + i] == 1)
                    .map(|i| ids[r * t + i] as u32)
                    .collect()
            })
            .collect();
        let want = (0..b)
            .map(|r| {
                out[r * to + t..(r + 1) * to]
                    .iter()
                    .map(|&i| i as u32)
                    .collect()
            })
            .collect();
        (prompts, want)
    }
}
