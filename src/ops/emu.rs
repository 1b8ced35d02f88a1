//! wick's CUDA kernels (`kernels/*.cu`) run on the CPU, through the emulator of
//! `kernels/emu/` that build.rs compiles them with: a checking tool, not a fast path.
//! `tests/kernel_emu.rs` runs every kernel through it against CPU references, on machines
//! without a GPU.
//!
//! A launch takes the grid and block sizes and the arguments that `ops::launch` computes
//! for the GPU, with host slices for device buffers. The emulator checks the arguments
//! against the kernel's parameter list (count, kinds, sizes, element sizes, and that the
//! kernel only writes through buffers passed as `&mut`), runs every block's threads with
//! barrier and warp-shuffle semantics, and returns an error, never a hang, for a divergent
//! barrier or shuffle (a deadlock), a read or write past a buffer's end, a misaligned
//! vector access, or a write to a read-only buffer.

#[cfg(wick_kernel_emu)]
use std::ffi::{c_char, c_int};
use std::ffi::{c_void, CString};
use std::marker::PhantomData;

use anyhow::{bail, Result};

use super::launch::{ArgSink, Dims};

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawArg {
    ptr: *const c_void,
    len: u64,
    elem: u32,
    cls: u8,
    writable: u8,
    pad: [u8; 2],
}

#[repr(C)]
struct RawLaunch {
    grid: [u32; 3],
    block: [u32; 3],
    schedule: u64,
}

#[cfg(wick_kernel_emu)]
extern "C" {
    fn wick_emu_launch(
        name: *const c_char,
        cfg: *const RawLaunch,
        args: *const RawArg,
        nargs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn wick_emu_round_f16(x: f32) -> u16;
    fn wick_emu_round_bf16(x: f32) -> u16;
}

/// Ok when the emulator was built; otherwise why not (build.rs found no C++ compiler, or
/// could not compile it).
pub fn available() -> Result<()> {
    #[cfg(wick_kernel_emu)]
    {
        Ok(())
    }
    #[cfg(not(wick_kernel_emu))]
    {
        bail!(
            "the CPU kernel emulator was not built: {} (see the build warnings)",
            env!("WICK_KERNEL_EMU_MISSING")
        )
    }
}

/// Element types a kernel buffer can hold.
///
/// # Safety
/// Plain data: every bit pattern is a valid value, no padding bytes (the kernel writes raw
/// bytes into `&mut` buffers).
pub unsafe trait Elem: Copy {}
// SAFETY: plain numbers.
unsafe impl Elem for u16 {}
// SAFETY: plain numbers.
unsafe impl Elem for u32 {}
// SAFETY: plain numbers.
unsafe impl Elem for i32 {}
// SAFETY: plain numbers.
unsafe impl Elem for u64 {}
// SAFETY: plain numbers.
unsafe impl Elem for f32 {}
// SAFETY: 16-bit floats, any bits.
unsafe impl Elem for half::f16 {}
// SAFETY: 16-bit floats, any bits.
unsafe impl Elem for half::bf16 {}
// SAFETY: repr(C) f32, u32 and u64 fields with an explicit pad field: no padding bytes.
unsafe impl Elem for crate::ops::launch::RowSample {}

/// One launch's arguments, pushed in the kernel's parameter order (by `ops::launch`).
/// Buffers are borrowed for the launch: `&[T]` read-only, `&mut [T]` writable.
pub struct Args<'a> {
    raw: Vec<RawArg>,
    schedule: u64,
    _borrows: PhantomData<&'a mut [u8]>,
}

impl Default for Args<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Args<'_> {
    pub fn new() -> Self {
        Self {
            raw: Vec::new(),
            schedule: 0,
            _borrows: PhantomData,
        }
    }

    /// Runs the threads released by a barrier or shuffle in an order shuffled by `seed`
    /// (0, the default: in thread order). Results of correct kernels do not depend on it;
    /// a missing barrier can.
    pub fn schedule(mut self, seed: u64) -> Self {
        self.schedule = seed;
        self
    }

    fn buf<T: Elem>(&mut self, s: *const T, n: usize, writable: bool) {
        self.raw.push(RawArg {
            ptr: s.cast(),
            len: (n * std::mem::size_of::<T>()) as u64,
            elem: std::mem::size_of::<T>() as u32,
            cls: b'p',
            writable: writable as u8,
            pad: [0; 2],
        });
    }

    fn scalar<T>(&mut self, v: &T, cls: u8) {
        self.raw.push(RawArg {
            ptr: (v as *const T).cast(),
            len: std::mem::size_of::<T>() as u64,
            elem: 0,
            cls,
            writable: 0,
            pad: [0; 2],
        });
    }
}

impl<'a, 'b: 'a, T: Elem> ArgSink<&'b [T]> for Args<'a> {
    fn arg(&mut self, a: &'b [T]) {
        self.buf(a.as_ptr(), a.len(), false);
    }
}

impl<'a, 'b: 'a, T: Elem> ArgSink<&'b mut [T]> for Args<'a> {
    fn arg(&mut self, a: &'b mut [T]) {
        self.buf(a.as_mut_ptr().cast_const(), a.len(), true);
    }
}

/// Scalar arguments, by the class the emulator reads them as (`i`nt, `u`nsigned, `f`loat).
macro_rules! scalar_args {
    ($($t:ty => $cls:literal),* $(,)?) => {$(
        impl<'a, 'b: 'a> ArgSink<&'b $t> for Args<'a> {
            fn arg(&mut self, a: &'b $t) {
                self.scalar(a, $cls);
            }
        }
    )*};
}

scalar_args!(i32 => b'i', u32 => b'u', u64 => b'u', f32 => b'f');

/// Runs `kernel` (an `extern "C" __global__` function of kernels/*.cu) over `dims` with
/// `args`; writable buffers hold the results when it returns Ok.
pub fn launch(kernel: &str, dims: Dims, args: Args<'_>) -> Result<()> {
    available()?;
    let name = CString::new(kernel)?;
    let cfg = RawLaunch {
        grid: [dims.grid.0, dims.grid.1, dims.grid.2],
        block: [dims.block.0, dims.block.1, dims.block.2],
        schedule: args.schedule,
    };
    #[allow(unused_mut)]
    let mut err = vec![0u8; 2048];
    #[cfg(wick_kernel_emu)]
    // SAFETY: every argument points to a live borrow (`Args<'a>` holds them) of the length
    // given; the emulator copies buffers in and writes back only the writable ones.
    let rc = unsafe {
        wick_emu_launch(
            name.as_ptr(),
            &cfg,
            args.raw.as_ptr(),
            args.raw.len(),
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    #[cfg(not(wick_kernel_emu))]
    let rc = {
        let _ = (&name, &cfg, &args.raw);
        1
    };
    if rc != 0 {
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        bail!("{}", String::from_utf8_lossy(&err[..end]));
    }
    Ok(())
}

/// The emulator's f32 -> f16 conversion (the kernels' `__float2half`), as bits. Panics
/// when the emulator was not built.
pub fn round_f16(x: f32) -> u16 {
    #[cfg(wick_kernel_emu)]
    // SAFETY: a pure function of its argument.
    return unsafe { wick_emu_round_f16(x) };
    #[cfg(not(wick_kernel_emu))]
    {
        let _ = x;
        panic!("{}", available().unwrap_err())
    }
}

/// The emulator's f32 -> bf16 conversion (the kernels' `__float2bfloat16`), as bits.
/// Panics when the emulator was not built.
pub fn round_bf16(x: f32) -> u16 {
    #[cfg(wick_kernel_emu)]
    // SAFETY: a pure function of its argument.
    return unsafe { wick_emu_round_bf16(x) };
    #[cfg(not(wick_kernel_emu))]
    {
        let _ = x;
        panic!("{}", available().unwrap_err())
    }
}
