// Stub for the CPU emulator: the types and conversions are in wick_emu.h.
#pragma once
#include "../wick_emu.h"
