// Runtime CPU dispatch for the hot CPU loops. Python extensions are compiled for the
// baseline x86-64 ISA (SSE2); GCC's target_clones also emits an AVX2 copy of the marked
// function and picks it at load time when the CPU has AVX2 (about 2x on these loops).
// AVX2 without FMA: no multiply-add contraction, so results round exactly as the baseline.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(DYNRCNN_NO_CPU_CLONES)
#define DYNRCNN_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DYNRCNN_CPU_CLONES
#endif
