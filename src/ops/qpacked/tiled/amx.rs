//! Intel AMX (Advanced Matrix Extensions) for the K-quants' integer sums on the batched
//! path.
//!
//! AMX has eight tile registers of 16 rows x 64 bytes; one `tdpbssd` (`tdpbsud`)
//! multiplies a tile `A` of signed bytes (`[16][64]`: 16 activation rows over 64 columns)
//! with a tile `B` of signed (unsigned) bytes laid out `[16][16][4]` (64 columns of 16
//! weight rows, 4 columns per 64-byte line: the batched path's own weight layout) and adds
//! the products to 16 x 16 i32 sums: `C[i][r] += Σ_c A[i][c] B[c / 4][r][c % 4]`, 16384
//! multiply-adds per instruction.
//!
//! A K-quant's scales change every 16 or 32 columns, too often to finish each scale's
//! sums with vector instructions (tile stores and loads then cost more than the
//! multiplies save). So the weights go in already multiplied by their integer scale
//! (`sc q`: Q4_K/Q5_K 0..1953, Q6_K's `sc (q - 32)` -4096..4096), as two byte planes
//! `lo + 256 hi` (`lo` unsigned, `hi` unsigned for Q4_K/Q5_K and signed for Q6_K): two
//! multiplies per 64 columns give the super-block's whole integer sum, exactly as the row
//! kernels compute it, and the float steps run once per 256 columns.
//!
//! Linux hands the tile state (8 KiB per thread) only to processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); `available` asks once.

use std::arch::asm;
use std::sync::OnceLock;

/// Activation rows (and weight rows) per tile.
pub const ROWS: usize = 16;
/// Bytes of one plane of one 16-row weight tile over a super-block: 64 lines of 64 bytes.
pub const PLANE: usize = 64 * 64;

/// Whether this CPU and OS run AMX-INT8 (with AVX-512 VBMI, which the planes' packing
/// uses) and this process may use the tile state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !is_x86_feature_detected!("avx512vbmi") {
            return false;
        }
        // CPUID.(7,0):EDX bits 24 (AMX-TILE) and 25 (AMX-INT8).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf7.edx & (3 << 24) != 3 << 24 {
            return false;
        }
        // The OS saves the tile state: XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
        if std::arch::x86_64::__cpuid(1).ecx & (1 << 27) == 0 {
            return false;
        }
        // SAFETY: OSXSAVE (CPUID.1:ECX bit 27) is set, so XGETBV exists.
        let xcr0 = unsafe { std::arch::x86_64::_xgetbv(0) };
        if xcr0 & (3 << 17) != 3 << 17 {
            return false;
        }
        request_tile_state()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// The eight tiles configured on this thread as 16 rows of 64 bytes: `tmm0..4` the sums
/// (two activation blocks x two planes), `tmm4`, `tmm5` the activations, `tmm6`, `tmm7`
/// the weights' planes.
/// Released when dropped.
pub struct Tiles(());

impl Tiles {
    /// # Safety
    /// `available()` must have returned true; no other `Tiles` is alive on this thread.
    pub unsafe fn new() -> Self {
        let mut cfg = Config {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = ROWS as u8;
        }
        asm!("ldtilecfg [{}]", in(reg) &cfg as *const Config, options(nostack, readonly));
        Self(())
    }

    /// The integer sums of two blocks of 16 activation rows against one weight tile over
    /// one super-block: `out[2 a + p][i][r] = Σ_c act_a[i][c] plane_p[c / 4][r][c % 4]`
    /// over 256 columns, where `a0`, `a1` are the two blocks' 4 tiles of 64 columns (1 KiB
    /// each, one after the other, rows of 64 bytes) and `w` the weight tile's planes (`lo`
    /// then `hi`, `PLANE` bytes each, 64-byte lines of 4 columns). `HI_SIGNED`: whether
    /// the `hi` plane is signed bytes (`lo` is unsigned).
    ///
    /// # Safety
    /// `self` is alive on this thread; 4 KiB at `a0` and `a1`, `2 PLANE` bytes at `w`, and
    /// 4 KiB at `out` are in bounds.
    #[inline(always)]
    pub unsafe fn super_block<const HI_SIGNED: bool>(
        &self,
        a0: *const i8,
        a1: *const i8,
        w: *const u8,
        out: *mut [[[i32; 16]; ROWS]; 4],
    ) {
        macro_rules! run {
            ($hi:literal) => {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "mov {k:e}, 4",
                    "2:",
                    "tileloadd tmm4, [{a0} + {l} * 1]",
                    "tileloadd tmm6, [{w} + {l} * 1]",
                    "tdpbsud tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{w} + {l} * 1 + 4096]",
                    concat!($hi, " tmm1, tmm4, tmm7"),
                    "tileloadd tmm5, [{a1} + {l} * 1]",
                    "tdpbsud tmm2, tmm5, tmm6",
                    concat!($hi, " tmm3, tmm5, tmm7"),
                    "add {a0}, 1024",
                    "add {a1}, 1024",
                    "add {w}, 1024",
                    "dec {k:e}",
                    "jnz 2b",
                    "tilestored [{o} + {l} * 1], tmm0",
                    "tilestored [{o} + {l} * 1 + 1024], tmm1",
                    "tilestored [{o} + {l} * 1 + 2048], tmm2",
                    "tilestored [{o} + {l} * 1 + 3072], tmm3",
                    a0 = inout(reg) a0 => _,
                    a1 = inout(reg) a1 => _,
                    w = inout(reg) w => _,
                    l = in(reg) 64usize,
                    o = in(reg) out,
                    k = out(reg) _,
                    options(nostack),
                )
            };
        }
        if HI_SIGNED {
            run!("tdpbssd")
        } else {
            run!("tdpbsud")
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the configuration `new` loaded (the thread's tile state goes
        // back to its initial, cheap-to-switch form).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
