//! kernels/*.cu through NVIDIA's compiler, on any machine with a CUDA toolkit (no GPU):
//! each file compiles to PTX for compute capabilities 80 and 90 with build.rs's flags,
//! defines every kernel `ops::launch` names, and ptxas turns each into machine code for
//! sm_80 and sm_90 without register spills. Prints each kernel's registers and shared
//! memory, and for the attention kernels (128 threads a block) how many blocks fit on one
//! SM by registers, shared memory and threads.
//!
//! nvcc comes from `WICK_NVCC`, `CUDA_ROOT/bin`, or `PATH`; `scripts/cuda-toolkit.sh
//! --compiler DIR` installs one (about 100 MB, which CI does). Without one the test says
//! so and passes, unless `WICK_REQUIRE_NVCC=1` (set by `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;

use wick::ops::launch::{
    AdjustLaunch, AttentionLaunch, AttentionShape, ChooseRowsLaunch, CopyRangeLaunch, RopeLaunch,
    WriteKvLaunch, HEAD_DIMS,
};

const CAPS: [u32; 2] = [80, 90];

fn nvcc() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("WICK_NVCC").map(PathBuf::from),
        std::env::var_os("CUDA_ROOT").map(|r| Path::new(&r).join("bin/nvcc")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .or_else(|| {
            let ok = Command::new("nvcc").arg("--version").output().is_ok();
            ok.then(|| PathBuf::from("nvcc"))
        });
    if found.is_none() {
        assert!(
            std::env::var_os("WICK_REQUIRE_NVCC").is_none(),
            "WICK_REQUIRE_NVCC is set but no nvcc was found (WICK_NVCC, CUDA_ROOT, PATH)"
        );
        eprintln!("skipping: no nvcc (scripts/cuda-toolkit.sh --compiler DIR installs one)");
    }
    found
}

/// Every kernel the Rust side launches, by file.
fn expected() -> Vec<(&'static str, String)> {
    let mut names = Vec::new();
    for suffix in ["bf16", "f16"] {
        names.push(("attention", RopeLaunch::kernel(suffix)));
        names.push(("attention", WriteKvLaunch::kernel(suffix)));
        names.push(("attention", AttentionLaunch::reduce_kernel(suffix)));
        for head_dim in HEAD_DIMS {
            let shape = AttentionShape {
                tokens: 1,
                num_heads: 8,
                kv_heads: 2,
                head_dim,
                block_size: 16,
                max_blocks: 1,
                split: Default::default(),
                scale: 1.0,
                window: None,
                softcap: None,
            };
            let launch = AttentionLaunch::new(&shape).expect("a valid shape");
            names.push(("attention", launch.kernel(suffix)));
            names.push(("attention", launch.prefill_kernel(suffix)));
        }
    }
    names.push(("attention", CopyRangeLaunch::KERNEL.to_string()));
    for k in [
        ChooseRowsLaunch::GREEDY,
        ChooseRowsLaunch::SAMPLE,
        AdjustLaunch::KERNEL,
    ] {
        names.push(("sampling", k.to_string()));
    }
    names
}

#[test]
fn kernels_compile_for_sm80_and_sm90_without_spills() {
    let Some(nvcc) = nvcc() else { return };
    let out = std::env::temp_dir().join(format!("wick-kernel-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let ptxas = nvcc.with_file_name("ptxas");
    let ptxas = if ptxas.exists() {
        ptxas
    } else {
        PathBuf::from("ptxas")
    };
    let expected = expected();
    let mut failures = Vec::new();
    for file in ["attention", "sampling"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/{file}.cu"));
        for cap in CAPS {
            let ptx = out.join(format!("{file}_{cap}.ptx"));
            // The flags build.rs compiles with.
            let run = Command::new(&nvcc)
                .arg("--ptx")
                .arg(format!("-arch=compute_{cap}"))
                .args(["-O3", "-std=c++17", "-o"])
                .arg(&ptx)
                .arg(&src)
                .output()
                .expect("run nvcc");
            assert!(
                run.status.success(),
                "nvcc {file}.cu for {cap}:\n{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let text = std::fs::read_to_string(&ptx).unwrap();
            for (f, name) in &expected {
                if *f == file && !text.contains(&format!(".entry {name}(")) {
                    failures.push(format!(
                        "{file}.cu (compute_{cap}) defines no kernel {name}"
                    ));
                }
            }
            let run = Command::new(&ptxas)
                .arg(format!("-arch=sm_{cap}"))
                .args(["-v", "-o"])
                .arg(out.join(format!("{file}_{cap}.cubin")))
                .arg(&ptx)
                .output()
                .expect("run ptxas");
            let log = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "ptxas {file} sm_{cap}:\n{log}");
            // "Compiling entry function 'NAME' for 'sm_90'", then its figures, among them
            // "N bytes spill stores, M bytes spill loads".
            let mut current = String::new();
            for line in log.lines() {
                if let Some(rest) = line.split("entry function '").nth(1) {
                    current = rest.split('\'').next().unwrap_or("").to_string();
                }
                if let Some(i) = line.find(" bytes spill stores") {
                    let stores: u64 = line[..i]
                        .rsplit(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(u64::MAX);
                    if stores != 0 || !line.contains(" 0 bytes spill loads") {
                        failures.push(format!("{current} (sm_{cap}) spills: {}", line.trim()));
                    }
                }
                if line.contains("Used") && line.contains("registers") {
                    let occupancy = if current.contains("_attention_") {
                        blocks_per_sm(line, cap, 128)
                    } else {
                        String::new()
                    };
                    eprintln!("sm_{cap} {current}: {}{occupancy}", line.trim());
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Thread blocks of `threads` that fit on one SM of compute capability `cap`, from a ptxas
/// "Used R registers, ... S bytes smem" line: registers are allocated per warp in units of
/// 256, 64 Ki a SM; shared memory per SM is 164 KiB (sm_80) or 228 KiB (sm_90), with 1 KiB
/// reserved per block; at most 2,048 threads and 32 blocks.
fn blocks_per_sm(line: &str, cap: u32, threads: u32) -> String {
    let number_before = |unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i].trim_end().rsplit(' ').next()?.parse().ok()
    };
    let (Some(regs), smem) = (number_before(" registers"), number_before(" bytes smem")) else {
        return String::new();
    };
    let warps = threads.div_ceil(32);
    let per_warp = (regs * 32).div_ceil(256) * 256;
    let by_regs = 65536 / (per_warp * warps);
    let sm_smem = if cap >= 90 { 228 * 1024 } else { 164 * 1024 };
    let by_smem = sm_smem / (smem.unwrap_or(0) + 1024);
    let blocks = by_regs.min(by_smem).min(2048 / threads).min(32);
    format!(" -> {blocks} blocks of {threads} threads per SM (registers {by_regs}, shared memory {by_smem})")
}
