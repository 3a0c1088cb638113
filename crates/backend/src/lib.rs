//! Which compute backend a run uses.
//!
//! Burn 0.22 picks the backend at run time through a [`Device`]; which backends exist is decided
//! at compile time by cargo features. This crate is the one place that maps a user-facing
//! [`Backend`] name (from a recipe or `--backend`) to a device, and that says clearly when the
//! binary was built without the requested backend.

use std::fmt;
use std::str::FromStr;

pub use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// A compute backend a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (`flex`); always compiled in.
    #[default]
    Cpu,
    /// Burn's wgpu backend (WGSL kernels over Vulkan, Metal or DX12).
    Wgpu,
    /// Burn's CUDA backend.
    Cuda,
}

/// Errors choosing a backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The name is not a backend at all.
    #[error("unknown backend `{0}`: expected one of cpu, wgpu, cuda")]
    Unknown(String),
    /// The backend exists but this binary was built without its cargo feature.
    #[error(
        "backend `{backend}` is not compiled into this binary: rebuild with `--features {backend}` \
         (compiled in: {available})"
    )]
    NotCompiled {
        /// The requested backend.
        backend: Backend,
        /// The backends this build supports, comma separated.
        available: String,
    },
}

impl Backend {
    /// Every backend, compiled in or not.
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Wgpu, Backend::Cuda];

    /// Whether this binary was built with this backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn compiled() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// The device of this backend with the given index (GPU ordinal; ignored on CPU), without
    /// autodiff.
    pub fn device(self, index: usize) -> Result<Device, BackendError> {
        if !self.is_compiled() {
            return Err(BackendError::NotCompiled {
                backend: self,
                available: Self::compiled()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        let _ = index;
        Ok(match self {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(wgpu_kind(index)),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(index),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by is_compiled"),
        })
    }
}

/// The wgpu adapter for an index: the default adapter for 0 (a discrete GPU when there is one,
/// else the software driver), the n-th discrete GPU otherwise.
#[cfg(feature = "wgpu")]
fn wgpu_kind(index: usize) -> burn::tensor::DeviceKind {
    if index == 0 {
        burn::tensor::DeviceKind::DefaultDevice
    } else {
        burn::tensor::DeviceKind::DiscreteGpu(index)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        })
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            _ => Err(BackendError::Unknown(s.to_string())),
        }
    }
}

/// Devices the test suites run on: the CPU always, plus wgpu when compiled in and an adapter is
/// present (CI installs Mesa's software Vulkan driver for it). Set `SEQTOPK_TEST_WGPU=0` to skip.
pub fn test_devices() -> Vec<(Backend, Device)> {
    let mut devices = vec![(Backend::Cpu, Device::flex())];
    if std::env::var("SEQTOPK_TEST_WGPU").as_deref() != Ok("0")
        && let Ok(device) = Backend::Wgpu.device(0)
        && is_usable(&device)
    {
        devices.push((Backend::Wgpu, device));
    }
    devices
}

/// Whether a lazily-initialised device really has an adapter: wgpu panics on first use when no
/// driver is installed, so probe with one tiny read-back.
fn is_usable(device: &Device) -> bool {
    std::panic::catch_unwind(|| {
        burn::tensor::Tensor::<1>::from_floats([1.0], device)
            .into_data()
            .num_elements()
            == 1
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_unknown() {
        assert_eq!("CPU".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("wgpu".parse::<Backend>().unwrap(), Backend::Wgpu);
        assert_eq!(
            "tpu".parse::<Backend>().unwrap_err(),
            BackendError::Unknown("tpu".into())
        );
    }

    #[test]
    fn cpu_is_always_available() {
        assert!(Backend::Cpu.device(0).is_ok());
        assert!(Backend::compiled().contains(&Backend::Cpu));
    }

    /// CI installs Mesa's software Vulkan driver: there, a wgpu build must really test on wgpu.
    #[test]
    fn ci_runs_device_tests_on_wgpu() {
        let devices = test_devices();
        eprintln!(
            "device tests run on: {:?}",
            devices
                .iter()
                .map(|(b, _)| b.to_string())
                .collect::<Vec<_>>()
        );
        if Backend::Wgpu.is_compiled() && std::env::var("CI").as_deref() == Ok("true") {
            assert!(
                devices.iter().any(|(b, _)| *b == Backend::Wgpu),
                "wgpu is compiled in but no adapter was found (is mesa-vulkan-drivers installed?)"
            );
        }
    }

    #[test]
    fn missing_backend_is_a_clear_error() {
        if !Backend::Cuda.is_compiled() {
            let err = Backend::Cuda.device(0).unwrap_err();
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }
}
