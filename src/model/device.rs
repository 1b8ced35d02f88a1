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

/// What a `--features cuda` binary needs of the machine, for error messages.
#[cfg(feature = "cuda")]
const NEEDS: &str = "an NVIDIA GPU of compute capability 8.0 or newer with a driver for CUDA 13.0 \
                     or newer (driver 580 or newer)";

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    check_cuda(ordinal)?;
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("cannot open CUDA device {ordinal}: {e}"))
}

/// Checks, before candle touches CUDA, that the driver is there and new enough, that it
/// sees GPU `ordinal`, and that cuBLAS and cuRAND can be loaded (cudarc loads all of them
/// at run time and panics when one is missing).
#[cfg(feature = "cuda")]
fn check_cuda(ordinal: usize) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys, DriverError};
    use candle_core::cuda_backend::cudarc::{cublas, cublaslt, curand};

    let describe = |e: DriverError| match e.error_string() {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => format!("driver error {}", e.0 as i32),
    };
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        bail!("no NVIDIA driver on this machine (libcuda.so.1 not found): --device cuda needs {NEEDS}");
    }
    let mut version = 0;
    // SAFETY: writes one int; allowed before cuInit.
    let got = unsafe { sys::cuDriverGetVersion(&mut version) };
    if got != sys::CUresult::CUDA_SUCCESS {
        bail!(
            "the NVIDIA driver library does not report its CUDA version ({}): --device cuda needs {NEEDS}",
            describe(DriverError(got))
        );
    }
    if version < MIN_DRIVER_CUDA {
        bail!(
            "the NVIDIA driver supports CUDA {}.{}, too old for this wick build: --device cuda needs {NEEDS}",
            version / 1000,
            version % 1000 / 10
        );
    }
    if let Err(e) = result::init() {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            bail!("the NVIDIA driver finds no GPU: --device cuda needs {NEEDS}");
        }
        bail!(
            "the NVIDIA driver cannot start ({}): --device cuda needs {NEEDS}",
            describe(e)
        );
    }
    let count = result::device::get_count().map_err(|e| {
        anyhow::anyhow!("the NVIDIA driver cannot count its GPUs ({})", describe(e))
    })?;
    if ordinal >= count.max(0) as usize {
        bail!("there is no CUDA device {ordinal}: the NVIDIA driver finds {count} GPU(s)");
    }
    let mut missing = Vec::new();
    // SAFETY: each only tries to open a library.
    unsafe {
        if !cublas::sys::is_culib_present() {
            missing.push("libcublas.so.13");
        }
        if !cublaslt::sys::is_culib_present() {
            missing.push("libcublasLt.so.13");
        }
        if !curand::sys::is_culib_present() {
            missing.push("libcurand.so.10");
        }
    }
    if !missing.is_empty() {
        bail!(
            "cannot load {}: --device cuda needs the CUDA 13 runtime libraries (a CUDA 13 runtime \
             image or toolkit has them; put their directory on LD_LIBRARY_PATH)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The CUDA version (as cuDriverGetVersion reports it, 1000 × major + 10 × minor) the
/// driver must support: this build's toolkit, 13.0.
#[cfg(feature = "cuda")]
const MIN_DRIVER_CUDA: i32 = 13000;

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    bail!("this wick binary was built without CUDA: rebuild with `--features cuda`, or use --device cpu")
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    match cuda(0) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("no usable GPU, running on the CPU: {e:#}");
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
