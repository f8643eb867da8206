/* What every CPU kernel of this folder exports about its build, for build.py's run-time dispatch.
 * Included once per kernel source after it defines VBYTES and EXPORTED(name) (name plus dtype suffix).
 * build.py hashes this header into every kernel's cache key. */

/* The vector width this library was built for, in bytes (16: SSE2 or generic, 32: AVX2, 64: AVX-512). */
int EXPORTED(vector_bytes)(void) { return VBYTES; }

/* The widest vector build this CPU and OS run: 64 (AVX-512F), 32 (AVX2) or 16. */
int EXPORTED(widest_vector_bytes)(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 64;
    if (__builtin_cpu_supports("avx2")) return 32;
#endif
    return 16;
}
