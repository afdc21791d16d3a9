// The tensor arena, sized by the bundle's model_io.h (kTensorArenaSize).
// Kept in its own translation unit so that re-sizing the arena recompiles
// only this file.  The section name lets the memory report find it.
#include <stdint.h>

#include "model_io.h"

alignas(16) __attribute__((section(".bss.edgepipe_arena")))
uint8_t g_arena[kTensorArenaSize];
extern const unsigned int g_arena_size;
const unsigned int g_arena_size = kTensorArenaSize;
