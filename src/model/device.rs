//! Choosing the device a model runs on (`--device`, env `WICK_DEVICE`).

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses a device spec: `auto` (the first GPU when wick is built with CUDA and one is
/// present, else the CPU), `cpu`, `cuda` or `cuda:N`.
pub fn select_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" | "" => Ok(auto()),
        s if s == "cuda" || s == "gpu" || s.starts_with("cuda:") => {
            let ordinal = match s.split_once(':') {
                Some((_, n)) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("device '{spec}': expected cuda:<ordinal>"))?,
                None => 0,
            };
            cuda(ordinal)
        }
        other => bail!("unknown device '{other}': use auto, cpu, cuda or cuda:<ordinal>"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("cannot open CUDA device {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    bail!("this wick binary was built without CUDA: rebuild with `--features cuda`, or use --device cpu")
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!("no usable GPU ({e}); running on the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_specs() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(select_device("CPU").unwrap().is_cpu());
        let e = select_device("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown device 'tpu'"), "{e}");
        let e = select_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:<ordinal>"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_cuda_auto_is_cpu_and_cuda_is_refused() {
        assert!(select_device("auto").unwrap().is_cpu());
        let e = select_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
