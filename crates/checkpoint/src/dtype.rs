//! Storage dtypes of checkpoint weights and exact conversions between them.

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
use safetensors::Dtype;

/// The dtype weights are stored in on disk (computation is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StorageDtype {
    /// IEEE single precision.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl StorageDtype {
    /// Short name: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "f32",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::F16 => "f16",
        }
    }

    /// The name transformers writes in `config.json` (`dtype` / `torch_dtype`).
    pub fn hf_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::Bf16 => "bfloat16",
            StorageDtype::F16 => "float16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::Bf16 | StorageDtype::F16 => 2,
        }
    }

    /// The safetensors dtype.
    pub fn safetensors(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::Bf16 => Dtype::BF16,
            StorageDtype::F16 => Dtype::F16,
        }
    }

    /// The Burn dtype.
    pub fn burn(self) -> DType {
        match self {
            StorageDtype::F32 => DType::F32,
            StorageDtype::Bf16 => DType::BF16,
            StorageDtype::F16 => DType::F16,
        }
    }

    /// The storage dtype of a safetensors dtype, `None` for anything else (ints, fp8, …).
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(StorageDtype::F32),
            Dtype::BF16 => Some(StorageDtype::Bf16),
            Dtype::F16 => Some(StorageDtype::F16),
            _ => None,
        }
    }

    /// The storage dtype of a Burn dtype, `None` for anything else.
    pub fn from_burn(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(StorageDtype::F32),
            DType::BF16 => Some(StorageDtype::Bf16),
            DType::F16 => Some(StorageDtype::F16),
            _ => None,
        }
    }

    /// Little-endian bytes of `values` in this dtype. f32 → bf16/f16 rounds to nearest even, so
    /// values that came from this dtype are reproduced bit for bit.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            StorageDtype::F32 => {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            StorageDtype::Bf16 => {
                for &v in values {
                    out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                }
            }
            StorageDtype::F16 => {
                for &v in values {
                    out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
                }
            }
        }
        out
    }
}

impl fmt::Display for StorageDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StorageDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(StorageDtype::F32),
            "bf16" | "bfloat16" => Ok(StorageDtype::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(StorageDtype::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, bf16 or f16)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_round_trip_is_exact_and_rounding_is_to_nearest_even() {
        // Every finite bf16 bit pattern survives bf16 → f32 → bf16.
        for bits in (0u16..=u16::MAX).step_by(7) {
            let v = half::bf16::from_bits(bits);
            if v.is_nan() {
                continue;
            }
            let bytes = StorageDtype::Bf16.encode(&[v.to_f32()]);
            assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), bits);
            let h = half::f16::from_bits(bits);
            if !h.is_nan() {
                let bytes = StorageDtype::F16.encode(&[h.to_f32()]);
                assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), bits);
            }
        }
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        let tie = 1.0f32 + 2f32.powi(-8);
        let bytes = StorageDtype::Bf16.encode(&[tie]);
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0x3f80);
        assert_eq!("bfloat16".parse::<StorageDtype>(), Ok(StorageDtype::Bf16));
        assert!("int8".parse::<StorageDtype>().is_err());
    }
}
