// The CPU kernels of the l_p-dist operation y[b, o] = ||x[b] − w[o]||_p (float32).
//
// Built at first use by _native.py with the host's C++ compiler and -march=native, and
// loaded through ctypes; no torch headers, so a build takes about a second. The code is
// portable C++17 with GCC/Clang vector extensions: a vector of VL floats becomes AVX-512,
// AVX2 or NEON instructions, whatever the build machine has.
//
// Layout: x is B×I, w is O×I, both row-major with I a multiple of VL (the caller pads
// with zeros: a zero difference adds nothing to a max, a sum of powers or a gradient).
//
// Why these kernels are fast:
// * the forward works on a TB×TO tile of (sample, unit) pairs at once, so each loaded
//   vector of x is used TO times and each vector of w TB times (as a GEMM micro-kernel);
// * finite p on AVX-512 below p = 64 (the p schedule's 8 → 64 stretch) splits |d|/t (t the
//   max or y) into exponents and fractions and raises it with two register-held tables and a
//   short polynomial fitted per call (pow_table): no quotient, log2 or exp2, about 13 +
//   degree instructions per term, and a few float32 roundings per term whatever p is;
// * elsewhere finite p computes r^p as exp2(p·log2 r) with short polynomials (log2 error <
//   3.9e-7 absolute, exp2 < 7.5e-8 relative): far cheaper than libm, and inside float32's own
//   error at these p (a relative error δ of r is already (p − 1)·δ in r^(p−1));
// * a vector of terms that cannot reach float32 resolution is skipped: a term of the
//   forward sum is at most 1 and the largest is exactly 1, so terms with r^p < 2^-40 can
//   change no bit of the result; the backward drops terms below 2^-40 of |g|. At large p
//   (p = 1000 keeps r > 0.973 only) nearly every vector is skipped after one compare. The
//   log2/exp2 route tests from p = 48; the table route where a sample of 64 pairs says that
//   most vectors are skippable (the test and its mispredicted branch cost more otherwise);
// * the backward computes each term once and adds it to both gradients (x and w); threads
//   own disjoint column blocks, so no reduction is shared and the result is deterministic;
// * p = ∞ tracks, per vector lane, the max and the index of the vector it came from, so the
//   first maximiser comes out of the same pass as the value.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
constexpr int VL = 16;
#else
constexpr int VL = 8;
#endif

typedef float V __attribute__((vector_size(VL * 4)));
typedef int32_t VI __attribute__((vector_size(VL * 4)));

namespace {

inline V splat(float a) { return V{} + a; }
inline VI splati(int32_t a) { return VI{} + a; }

inline V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }

inline V vabs(V a) { return (V)((VI)a & splati(0x7fffffff)); }

// a > b ? a : b, which is exactly what maxps computes (ties and NaN give b); spelled as the
// instruction because GCC sometimes compiles the select to a compare and a blend instead.
inline V vmax(V a, V b) {
#if defined(__AVX512F__)
    return (V)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (V)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return a > b ? a : b;
#endif
}

inline bool any_ge(V a, V b) {
#if defined(__AVX512F__)
    return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GE_OQ) != 0;
#elif defined(__AVX__)
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)b, _CMP_GE_OQ)) != 0;
#else
    VI m = a >= b;
    int32_t acc = 0;
    for (int l = 0; l < VL; ++l) acc |= m[l];
    return acc != 0;
#endif
}

// Horizontal max by halving (log2 VL steps, not VL − 1 dependent scalar maxima): it runs once
// per output, which at p = ∞ is a cost beside a short reduction.
inline float hmax(V a) {
#if defined(__AVX512F__)
    return _mm512_reduce_max_ps((__m512)a);
#elif defined(__AVX__)
    __m128 m = _mm_max_ps(_mm256_castps256_ps128((__m256)a), _mm256_extractf128_ps((__m256)a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
#else
    float m = a[0];
    for (int l = 1; l < VL; ++l) m = std::max(m, a[l]);
    return m;
#endif
}

// Bit l set where lane l of a equals t.
inline uint32_t equal_lanes(V a, float t) {
#if defined(__AVX512F__)
    return _mm512_cmp_ps_mask((__m512)a, _mm512_set1_ps(t), _CMP_EQ_OQ);
#elif defined(__AVX__)
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps((__m256)a, _mm256_set1_ps(t), _CMP_EQ_OQ));
#else
    uint32_t bits = 0;
    for (int l = 0; l < VL; ++l) bits |= (uint32_t)(a[l] == t) << l;
    return bits;
#endif
}

inline float hsum(V a) {
    float s = 0;
    for (int l = 0; l < VL; ++l) s += a[l];
    return s;
}

// c[N−1]·t^(N−1) + … + c[0] by Horner's rule (fused multiply-adds with -ffp-contract=fast).
template <int N>
inline V horner(V t, const float (&c)[N]) {
    V r = splat(c[N - 1]);
    for (int i = N - 2; i >= 0; --i) r = r * t + splat(c[i]);
    return r;
}

// 2^f for f in [−½, ½] (error < 7.5e-8 relative), lowest degree first; both exp2_fast below use it.
constexpr float EXP2_FRACTION[] = {1.0000000716537267f, 0.6931469670348276f, 0.24022119726945593f,
                                   0.055507133223648704f, 0.009675541209722522f, 0.0013276456198793034f};

#if defined(__AVX512F__)
// AVX-512 has the pieces as single instructions: getmant/getexp split a into 2^e·m, scalef
// multiplies by 2^n; a few instructions fewer per term than the portable forms below.

// log2(a) for a >= 0 finite: a = 2^e·m with m in [0.75, 1.5), log2(1 + t) = t·P(t), t = m − 1
// (error < 3.9e-7 absolute). a = 0 gives −inf (exp2_fast below turns any such exponent into 0).
inline V log2_fast(V a) {
    __m512 v = (__m512)a;
    __m512 m = _mm512_getmant_ps(v, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
    __m512 e = _mm512_getexp_ps(v);  // floor(log2 a): the exponent of a mantissa in [1, 2)
    // A mantissa of [1.5, 2) came back halved into [0.75, 1): its exponent is one more.
    e = _mm512_mask_add_ps(e, _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.0f), _CMP_LT_OQ), e, _mm512_set1_ps(1.0f));
    V t = (V)m - splat(1.0f);
    constexpr float c[] = {1.4426984544560228f, -0.7213060558934397f, 0.48052233704321284f, -0.3621237487418518f,
                           0.2998465113125473f, -0.23981677986465677f, 0.11320775307380589f};
    V poly = horner(t, c);
    return (V)e + poly * t;
}

// 2^z for z <= ~0 (error < 7.5e-8 relative): z = n + f, f in [−½, ½], 2^f by a degree-5
// polynomial, scaled by 2^n. z below −150 (−inf included) gives 0.
inline V exp2_fast(V z) {
    __m512 zc = _mm512_max_ps((__m512)z, _mm512_set1_ps(-150.0f));
    __m512 n = _mm512_roundscale_ps(zc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f = (V)zc - (V)n;
    V poly = horner(f, EXP2_FRACTION);
    return (V)_mm512_scalef_ps((__m512)poly, n);
}
#else
// log2(a) for a >= 0 finite: a = 2^e·m with m in [√½, √2), log2(1 + t) = t·P(t), t = m − 1
// (error < 3.1e-7 absolute). a = 0 gives −127 (and whatever it gives is multiplied by p and
// clamped by exp2 below).
inline V log2_fast(V a) {
    VI bits = (VI)a & splati(0x7fffffff);
    VI e = (bits - splati(0x3f3504f3)) >> 23;  // arithmetic shift
    V t = (V)(bits - (e << 23)) - splat(1.0f);
    constexpr float c[] = {1.4426997262147687f, -0.7213758741136931f, 0.48046501323485913f, -0.3589618423948937f,
                           0.2972630130461666f, -0.27269769546352546f, 0.17063222528098881f};
    V poly = horner(t, c);
    return __builtin_convertvector(e, V) + poly * t;
}

// 2^z for z <= ~0 (error < 7.5e-8 relative): z = n + f, f in [−½, ½], 2^f by a degree-5
// polynomial. Clamped below at −120: 2^-120 is below every resolution that matters here and
// keeps the result normal.
inline V exp2_fast(V z) {
    z = z > splat(-120.0f) ? z : splat(-120.0f);
    const V magic = splat(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
    V zr = (z + magic) - magic;
    V f = z - zr;
    V poly = horner(f, EXP2_FRACTION);
    VI n = __builtin_convertvector(zr, VI);
    return (V)((VI)poly + (n << 23));
}
#endif

// a/y for a >= 0, given inv = 1/y: a·inv and one correction by the exact residual a − r·y
// (a fused multiply-add), so that r is a/y to within a rounding, and exactly 1 where a = y. A
// plain a·inv can miss 1 by an ulp, which the power p − 1 turns into (p − 1)·6e-8: 1.5e-5 of
// the largest gradient term at p = 250.
inline V ratio(V a, V inv, V y) {
#if defined(__AVX512F__)
    __m512 r = (__m512)(a * inv);
    __m512 e = _mm512_fnmadd_ps(r, (__m512)y, (__m512)a);
    return (V)_mm512_fmadd_ps(e, (__m512)inv, r);
#elif defined(__FMA__) && defined(__AVX__)
    __m256 r = (__m256)(a * inv);
    __m256 e = _mm256_fnmadd_ps(r, (__m256)y, (__m256)a);
    return (V)_mm256_fmadd_ps(e, (__m256)inv, r);
#else
    return a / y;
#endif
}

#if defined(__AVX512F__)
// (a/t)^q for 0 <= a <= t and 7 <= q < TABLE_BELOW_P − 1, without log2, exp2 or even the quotient:
// with a = 2^e·m and t = 2^f·n, m and n in [1, 2),
//   (a/t)^q = 2^(q·(e − f + ½)) · (2/c)^-q · (m/c)^q · (√2/n)^q,
// where c is the centre of the 32nd of [1, 2) that holds m. The first two factors come from tables
// (one permute each: AVX-512 looks up 16 or 32 floats held in registers), m/c = 1 + z with
// |z| <= 1/64, and (1 + z)^q is a short polynomial fitted per call; (√2/n)^q is one number per pair
// (sample, unit), which the caller applies once. The powers of 2 are shared out so that every
// factor stays within 2^±(q/2 + 1): normal floats for q < 64, with room for g in the backward.
// Nothing rounds a quotient (a rounding ε of a/t would become q·ε in the power), so a term carries
// a few float32 roundings whatever q is, where the log2/exp2 route carries about 2e-7·q; and it
// costs about 13 + degree instructions instead of about 27.
//
// Below p = 64 the polynomial needs degree <= 8. Above, it grows (degree 10 at p = 100) and the
// factors leave float's range; with wider factors the table route measured no faster there than
// log2/exp2 (256×784→1024, no dominant coordinate: p = 100 111 ms against 114, p = 127.9 129 ms
// against 123 at p = 128), so p >= 64 takes the log2/exp2 route.
constexpr float TABLE_BELOW_P = 64.0f;
constexpr int TABLE_MAX_DEGREE = 9;

struct PowTable {
    __m512 inv_lo, inv_hi;    // 1/c_k rounded, c_k = 1 + (k + ½)/32, k = the top 5 bits of m's fraction
    __m512 mant_lo, mant_hi;  // (2·(1/c_k))^-q of the rounded 1/c_k: (m/2)^q = T[k]·(m·(1/c_k))^q exactly
    __m512 expo;              // 2^(q·(s + ½)) at slot (s + 127) mod 16 for s = e − f in [−14, 0]; 0 at
                              // the slot of s <= −15 and wherever it is below 2^-126: a term dropped
                              // there is below 2^-126·(√2/n)^q <= 2^(q/2 − 126), negligible
    float coef[TABLE_MAX_DEGREE + 1];  // (1 + z)^q ≈ Σ coef[j]·z^j on |z| <= TABLE_HALF_WIDTH
    int degree = 0;                    // 0: no polynomial of degree <= TABLE_MAX_DEGREE is accurate enough
    // The same pieces in double, for the pair factor.
    double inv_d[32], mant_d[32], coef_d[TABLE_MAX_DEGREE + 1], pow2 = 1;  // pow2 = 2^(-q/2)

    // (√2/n)^q for the fraction n in [1, 2) of t > 0 (t normal), to about 2^-26 relative.
    double pair_factor(float t) const {
        uint32_t bits;
        std::memcpy(&bits, &t, 4);
        int k = (bits >> 18) & 31;
        double n = 1.0 + (bits & 0x007fffff) * 0x1p-23, z = n * inv_d[k] - 1.0, v = 0;
        for (int j = degree; j >= 0; --j) v = v * z + coef_d[j];
        return pow2 / (mant_d[k] * v);  // (√2/n)^q = 2^(-q/2)/(n/2)^q
    }
};

// z = m/c − 1 lies within 1/64 of 0 (and the rounding of 1/c widens that by under 2^-23 relative).
constexpr double TABLE_HALF_WIDTH = (1.0 / 64) * (1 + 1.0 / (1 << 20));
// The exponent difference is clamped below at this biased value (s = −15), whose slot holds 0:
// a/t < 2^-14 is dropped, and (a/t)^q < 2^-98 at q >= 7 cannot change a sum whose largest term is
// 1 (the forward) or move a gradient by more than 2^-98·|g| per term. a <= t keeps s <= 0.
constexpr int TABLE_ZERO_EXPONENT = 112;

// The backward's reference: y·(1 + 2^-20), above every |d| that y's rounding lets exceed y.
inline float inflated(float y) { return y + y * 0x1p-20f; }

// Offset added to a's biased exponent so that the clamp and the table see s = e − f biased by 127:
// 127 − f's biased exponent; a reference t that is 0 or subnormal sends every term to the zero slot.
inline int32_t exponent_offset(float t) {
    if (!(t >= 0x1p-126f)) return -1000;
    uint32_t bits;
    std::memcpy(&bits, &t, 4);
    return 127 - (int32_t)(bits >> 23);
}

// The interpolant of (1 + z)^q at the n + 1 Chebyshev nodes of [−h, h] (near-minimax), in the
// scaled variable u = z/h so that the linear system is well conditioned; the smallest n whose
// relative error, checked on a fine grid in double, is below 2^-26.
inline void fit_power(double q, PowTable& t) {
    const double h = TABLE_HALF_WIDTH;
    for (int n = 2; n <= TABLE_MAX_DEGREE; ++n) {
        double a[TABLE_MAX_DEGREE + 1][TABLE_MAX_DEGREE + 2];
        for (int i = 0; i <= n; ++i) {
            double u = std::cos(3.141592653589793 * (i + 0.5) / (n + 1)), uj = 1;
            for (int j = 0; j <= n; ++j, uj *= u) a[i][j] = uj;
            a[i][n + 1] = std::pow(1 + h * u, q);
        }
        for (int c = 0; c <= n; ++c) {  // Gauss–Jordan with partial pivoting
            int piv = c;
            for (int i = c + 1; i <= n; ++i)
                if (std::fabs(a[i][c]) > std::fabs(a[piv][c])) piv = i;
            std::swap(a[c], a[piv]);
            for (int i = 0; i <= n; ++i)
                if (i != c) {
                    double f = a[i][c] / a[c][c];
                    for (int j = c; j <= n + 1; ++j) a[i][j] -= f * a[c][j];
                }
        }
        double coef[TABLE_MAX_DEGREE + 1], scale = 1;
        for (int j = 0; j <= n; ++j, scale /= h) coef[j] = a[j][n + 1] / a[j][j] * scale;
        double worst = 0;
        for (int s = -2000; s <= 2000; ++s) {
            double z = h * s / 2000, v = 0;
            for (int j = n; j >= 0; --j) v = v * z + coef[j];
            worst = std::max(worst, std::fabs(v / std::pow(1 + z, q) - 1));
        }
        if (worst < 0x1p-26) {
            for (int j = 0; j <= TABLE_MAX_DEGREE; ++j) {
                t.coef_d[j] = j <= n ? coef[j] : 0.0;
                t.coef[j] = (float)t.coef_d[j];
            }
            t.degree = n;
            return;
        }
    }
    t.degree = 0;
}

inline PowTable make_pow_table(float q) {
    PowTable t;
    alignas(64) float inv[32], mant[32], expo[16];
    for (int k = 0; k < 32; ++k) {
        inv[k] = (float)(1.0 / (1.0 + (k + 0.5) / 32));
        t.inv_d[k] = inv[k];
        t.mant_d[k] = std::pow(2.0 * inv[k], -(double)q);
        mant[k] = (float)t.mant_d[k];
    }
    for (int slot = 0; slot < 16; ++slot) {
        // The biased exponents TABLE_ZERO_EXPONENT .. TABLE_ZERO_EXPONENT + 15 fill the 16 slots once.
        int biased = TABLE_ZERO_EXPONENT + ((slot - TABLE_ZERO_EXPONENT) % 16 + 16) % 16;
        double v = std::exp2((double)q * (biased - 127 + 0.5));
        expo[slot] = biased == TABLE_ZERO_EXPONENT || v < 0x1p-126 ? 0.0f : (float)v;
    }
    t.inv_lo = _mm512_load_ps(inv), t.inv_hi = _mm512_load_ps(inv + 16);
    t.mant_lo = _mm512_load_ps(mant), t.mant_hi = _mm512_load_ps(mant + 16);
    t.expo = _mm512_load_ps(expo);
    t.pow2 = std::exp2(-(double)q / 2);
    fit_power(q, t);
    return t;
}

// make_pow_table(q), remembered for the last few q: the layers of a step share p (the forward
// raises to p, the backward to p − 1), and a fit costs 0.2–0.4 ms, 4–10 % of a quick linf_v2
// step when made per call. A copy is returned: another thread may replace the entry.
inline PowTable pow_table_for(float q) {
    static std::mutex lock;
    static PowTable cache[4];
    static float keys[4] = {-1, -1, -1, -1};
    static int next = 0;
    {
        std::lock_guard<std::mutex> hold(lock);
        for (int i = 0; i < 4; ++i)
            if (keys[i] == q) return cache[i];
    }
    PowTable made = make_pow_table(q);
    std::lock_guard<std::mutex> hold(lock);
    keys[next] = q, cache[next] = made, next = (next + 1) % 4;
    return made;
}

// (a/t)^q without its pair factor (√2/n)^q, as two factors scale·poly (the caller multiplies or
// fuses them), for a >= 0 and offset = exponent_offset(t).
template <int N>
inline void pow_table(V a, VI offset, const PowTable& t, const V (&c)[N + 1], V& scale, V& poly) {
    __m512i bits = _mm512_castps_si512((__m512)a);
    __m512i k = _mm512_srli_epi32(bits, 18);  // the permutes read its low 5 bits (4 for expo) only
    __m512i e = _mm512_add_epi32(_mm512_srli_epi32(bits, 23), (__m512i)offset);
    e = _mm512_max_epi32(e, _mm512_set1_epi32(TABLE_ZERO_EXPONENT));
    // m = a's fraction under the exponent of 1.0: (bits & 0x007fffff) | 0x3f800000
    __m512 m = _mm512_castsi512_ps(
        _mm512_ternarylogic_epi32(bits, _mm512_set1_epi32(0x007fffff), _mm512_set1_epi32(0x3f800000), 0xEA));
    V z = (V)_mm512_fmsub_ps(m, _mm512_permutex2var_ps(t.inv_lo, k, t.inv_hi), _mm512_set1_ps(1.0f));
    scale = (V)_mm512_mul_ps(_mm512_permutex2var_ps(t.mant_lo, k, t.mant_hi), _mm512_permutexvar_ps(e, t.expo));
    V acc = c[N];
    for (int j = N - 1; j >= 0; --j) acc = acc * z + c[j];
    poly = acc;
}
#else
constexpr float TABLE_BELOW_P = 0.0f;
struct PowTable {
    int degree = 0;  // the table power needs AVX-512's permutes; elsewhere the log2/exp2 route serves every p
};
inline PowTable make_pow_table(float) { return PowTable{}; }
inline PowTable pow_table_for(float) { return PowTable{}; }
inline int32_t exponent_offset(float) { return 0; }
inline float inflated(float y) { return y; }
#endif

struct DenormalsOff {
    // Terms far below a sum's resolution may be denormal; x86 computes those many times slower.
#if defined(__x86_64__) || defined(__i386__)
    unsigned saved = _mm_getcsr();
    DenormalsOff() { _mm_setcsr(saved | 0x8040); }  // flush-to-zero, denormals-are-zero
    ~DenormalsOff() { _mm_setcsr(saved); }
#endif
};

template <class F>
void parallel_for(int64_t n, int threads, F&& fn) {
    // Static contiguous chunks; each worker runs fn(begin, end). A call is milliseconds or more,
    // so starting threads per call costs nothing measurable and needs no pool.
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, n));
    auto work = [&](int t) {
        DenormalsOff guard;
        int64_t begin = n * t / threads, end = n * (t + 1) / threads;
        if (begin < end) fn(begin, end);
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
}

// fn(std::integral_constant<int, n>{}) for the polynomial degree n of a PowTable: the kernels are
// instantiated per degree so that Horner's rule unrolls and its coefficients stay in registers.
template <class F>
void with_degree(int n, F&& fn) {
#if defined(__AVX512F__)
    switch (n) {
        case 2: return fn(std::integral_constant<int, 2>{});
        case 3: return fn(std::integral_constant<int, 3>{});
        case 4: return fn(std::integral_constant<int, 4>{});
        case 5: return fn(std::integral_constant<int, 5>{});
        case 6: return fn(std::integral_constant<int, 6>{});
        case 7: return fn(std::integral_constant<int, 7>{});
        case 8: return fn(std::integral_constant<int, 8>{});
        case 9: return fn(std::integral_constant<int, 9>{});
    }
#endif
    (void)n, (void)fn;
}

// --------------------------------------------------------------------------- forward kernels

enum class Mode { Max, MaxIndex, Pow8, Pow, PowDense, PowTable, PowTableSkip };

// Below this p, skipping negligible terms costs more than it saves: the bound 2^(-40/p) of a
// kept |d|/max is under 0.56, nearly every vector holds a term above it, and the per-pair test
// and branch cost ~20 % (measured on the bench shapes: p = 9.5 191 → 157 ms, p = 32 179 →
// 147 ms dense; p = 64 122 ms skipping against 146 ms dense, p = 1000 23 against 128).
constexpr float DENSE_BELOW_P = 48.0f;

// The table route (below TABLE_BELOW_P) chooses per call: it skips when a sample says that at least
// this share of the vectors can be skipped. The test costs about 12 % where nothing is skippable
// (p = 48, inputs with no dominant coordinate: 90 ms against 80), twice the dense time where half
// is, at random (p = 24, identity-init inputs, 48 % skippable: 122 ms against 63: the branch is
// mispredicted), and saves most where most is (1024→1024, p = 32, 90 %: 50 ms, where p = 16
// densely took 67).
constexpr double SKIP_WORTH_IT = 0.7;

// The share of VL-wide vectors of |x − w| whose every lane lies below 2^(-40/q) of the pair's
// reference t (what the skipping kernels skip), over a grid of up to 8×8 (sample, unit) pairs.
// `reference(b, o, max)` gives t from the pair's max |x − w| (the forward: the max; the backward: y).
template <class Ref>
double skippable_share(const float* x, const float* w, int64_t B, int64_t O, int64_t I, float q, Ref reference) {
    int64_t skippable = 0, total = 0;
    const float ratio = std::exp2(-40.0f / q);
    for (int sb = 0; sb < 8; ++sb)
        for (int so = 0; so < 8; ++so) {
            int64_t b = B * sb / 8, o = O * so / 8;
            const float *xr = x + b * I, *wr = w + o * I;
            float m = 0;
            for (int64_t k = 0; k < I; ++k) m = std::max(m, std::fabs(xr[k] - wr[k]));
            const float limit = reference(b, o, m) * ratio;
            for (int64_t k = 0; k < I; k += VL) {
                float top = 0;
                for (int64_t l = k; l < k + VL; ++l) top = std::max(top, std::fabs(xr[l] - wr[l]));
                skippable += top < limit;
                ++total;
            }
        }
    return total ? (double)skippable / total : 0.0;
}

// The register tile per mode: a TB×TO tile of pairs shares TB + TO loaded vectors. The cheap
// modes are load-bound and take 3×3; the exp2/log2 of Pow needs registers for its constants,
// and is compute-bound anyway, so it takes 2×2 (3×3 spills).
template <Mode M> constexpr bool is_table() { return M == Mode::PowTable || M == Mode::PowTableSkip; }
template <Mode M> constexpr bool is_pow() { return M == Mode::Pow || M == Mode::PowDense || is_table<M>(); }
template <Mode M> constexpr int tile_b() { return is_pow<M>() ? 2 : 3; }
template <Mode M> constexpr int tile_o() { return is_pow<M>() ? 2 : 3; }

// MaxIndex keeps, per lane, a max over a block of KB vectors (one max per pair and vector, as
// Mode::Max), and only at the end of a block compares it with the lane's best so far and
// records the block. The first maximiser is then found by rescanning that one block of the
// winning lanes: KB elements per output instead of an index update per pair and vector.
constexpr int KB = 8;

// One TB×TO tile (nb <= TB samples from b0, no <= TO units from o0). Rows past nb/no repeat
// the last valid one (their results are dropped), which keeps the inner loop branch-free.
template <Mode M, int N = 0>
void tile(const float* x, const float* w, int64_t I, int64_t b0, int nb, int64_t o0, int no, int64_t O,
          float p, const float* m_in, float* y, int64_t* idx, const PowTable& table) {
    constexpr int TB = tile_b<M>(), TO = tile_o<M>();
    const float* xr[TB];
    const float* wr[TO];
    for (int i = 0; i < TB; ++i) xr[i] = x + (b0 + std::min(i, nb - 1)) * I;
    for (int j = 0; j < TO; ++j) wr[j] = w + (o0 + std::min(j, no - 1)) * I;
    V acc[TB][TO];
    V best[TB][TO];   // MaxIndex: the lane's max over finished blocks
    VI blk[TB][TO];   // MaxIndex: the (first) block it came from
    V limit[TB][TO], inv_m[TB][TO], mv[TB][TO];
    double fix[TB][TO];  // PowTable: (√2/n)^p for m = 2^f·n, the pair factor of pow_table
    VI offset[TB][TO];   // PowTable: exponent_offset(m)
    V coef[N + 1];
#if defined(__AVX512F__)
    if constexpr (is_table<M>())
        for (int j = 0; j <= N; ++j) coef[j] = splat(table.coef[j]);
#endif
    for (int i = 0; i < TB; ++i)
        for (int j = 0; j < TO; ++j) {
            acc[i][j] = V{};
            best[i][j] = splat(-1.0f);
            blk[i][j] = VI{};
            if constexpr (is_pow<M>()) {
                // Terms with |d| < limit are below 2^-40 of the largest (which is 1).
                float m = m_in[(b0 + std::min(i, nb - 1)) * O + o0 + std::min(j, no - 1)];
                limit[i][j] = splat(m * std::exp2(-40.0f / p));
                inv_m[i][j] = splat(m > 0 ? 1.0f / m : 0.0f);
                mv[i][j] = splat(m);
#if defined(__AVX512F__)
                if constexpr (is_table<M>()) {
                    offset[i][j] = splati(exponent_offset(m));
                    fix[i][j] = m >= 0x1p-126f ? table.pair_factor(m) : 1.0;
                }
#endif
            }
        }
    int32_t block = 0;
    for (int64_t k = 0; k < I; k += VL) {
        V xv[TB], wv[TO];
        for (int i = 0; i < TB; ++i) xv[i] = load(xr[i] + k);
        for (int j = 0; j < TO; ++j) wv[j] = load(wr[j] + k);
        for (int i = 0; i < TB; ++i)
            for (int j = 0; j < TO; ++j) {
                V d = xv[i] - wv[j];
                if constexpr (M == Mode::Max || M == Mode::MaxIndex) {
                    acc[i][j] = vmax(acc[i][j], vabs(d));
                } else if constexpr (M == Mode::Pow8) {
                    V d2 = d * d;
                    V d4 = d2 * d2;
                    acc[i][j] += d4 * d4;
                } else if constexpr (is_table<M>()) {
#if defined(__AVX512F__)
                    V a = vabs(d), scale, poly;
                    if (M == Mode::PowTable || any_ge(a, limit[i][j])) {
                        pow_table<N>(a, offset[i][j], table, coef, scale, poly);
                        acc[i][j] = (V)_mm512_fmadd_ps((__m512)scale, (__m512)poly, (__m512)acc[i][j]);
                    }
#endif
                } else {
                    V a = vabs(d);
                    if (M == Mode::PowDense || any_ge(a, limit[i][j])) acc[i][j] += exp2_fast(splat(p) * log2_fast(ratio(a, inv_m[i][j], mv[i][j])));
                }
            }
        if constexpr (M == Mode::MaxIndex) {
            if ((k / VL + 1) % KB == 0 || k + VL >= I) {
                for (int i = 0; i < TB; ++i)
                    for (int j = 0; j < TO; ++j) {
                        VI better = acc[i][j] > best[i][j];  // strict: an earlier block keeps a tie
                        best[i][j] = better ? acc[i][j] : best[i][j];
                        blk[i][j] = better ? splati(block) : blk[i][j];
                        acc[i][j] = V{};
                    }
                ++block;
            }
        }
    }
    for (int i = 0; i < nb; ++i)
        for (int j = 0; j < no; ++j) {
            int64_t out = (b0 + i) * O + o0 + j;
            if constexpr (M == Mode::Max) {
                y[out] = hmax(acc[i][j]);
            } else if constexpr (M == Mode::MaxIndex) {
                float top = hmax(best[i][j]);
                int64_t first = INT64_MAX;
                for (uint32_t lanes = equal_lanes(best[i][j], top); lanes; lanes &= lanes - 1) {
                    int l = __builtin_ctz(lanes);
                    // The lane's first element equal to its max, inside its recorded block.
                    int64_t start = (int64_t)blk[i][j][l] * KB * VL + l, stop = std::min(I, start + KB * VL);
                    for (int64_t e = start; e < stop; e += VL)
                        if (std::fabs(xr[i][e] - wr[j][e]) == top) {
                            first = std::min(first, e);
                            break;
                        }
                }
                y[out] = top;
                idx[out] = first;
            } else if constexpr (is_table<M>()) {
                y[out] = (float)(hsum(acc[i][j]) * fix[i][j]);
            } else {
                y[out] = hsum(acc[i][j]);  // Pow8: Σ d^8; Pow: Σ (|d|/m)^p, the caller takes the root
            }
        }
}

template <Mode M, int N = 0>
void forward(const float* x, const float* w, int64_t B, int64_t O, int64_t I, float p, const float* m_in, float* y,
             int64_t* idx, int threads, const PowTable& table = PowTable{}) {
    constexpr int TB = tile_b<M>(), TO = tile_o<M>();
    int64_t tb = (B + TB - 1) / TB, to = (O + TO - 1) / TO;
    // Task order: blocks of OBLOCK unit tiles outermost, then sample tiles, then the unit tiles
    // of the block; a thread's tiles reuse one block of w (OBLOCK·TO rows) from L2 for every
    // sample instead of streaming all of w once per sample tile.
    constexpr int64_t OBLOCK = 16;
    parallel_for(tb * to, threads, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
            int64_t block = t / (tb * OBLOCK), rest = t % (tb * OBLOCK);
            int64_t width = std::min(OBLOCK, to - block * OBLOCK);
            int64_t bt = rest / width, ot = block * OBLOCK + rest % width;
            int nb = (int)std::min<int64_t>(TB, B - bt * TB), no = (int)std::min<int64_t>(TO, O - ot * TO);
            tile<M, N>(x, w, I, bt * TB, nb, ot * TO, no, O, p, m_in, y, idx, table);
        }
    });
}

// --------------------------------------------------------------------------- backward kernel

constexpr int BB = 4;    // samples per register block of the backward
constexpr int NV = 2;    // vectors (columns) per block
constexpr int64_t OCHUNK = 256;  // units per pass, so w and grad_w of a column block stay in L2

// grad_x[b, k] = Σ_o T[b, o, k], grad_w[o, k] = −Σ_b T[b, o, k] with
// T = g[b, o]·sign(d)·(|d|/y[b, o])^(p−1), d = x[b, k] − w[o, k]. `scale` holds 1/y, `limit`
// the |d| below which a term is < 2^-40·|g|.
//
// General p raises the ratio r = |d|/y <= 1, never |d| itself: log2 r is then small for the
// terms that matter (r near 1, where log2 is accurate relative to its size), so the exponent
// (p − 1)·log2 r carries float32's relative error only. Raising |d| and subtracting
// (p − 1)·log2 y instead loses the difference of two exponents of size (p − 1)·|log2 y|:
// 3e-5 relative at p = 250, a hundred times float32's rounding of the gradient.
//
// Term::Table (AVX-512, 8 < p < TABLE_BELOW_P) raises |d|/t with the table power (no quotient is
// formed), t = y·(1 + 2^-20) so that |d| <= t holds through the rounding of y; the factor
// (t/y)^(p−1) and the pair factor common to a pair's terms are in `g` (see lpdist_p_backward).
enum class Term { P8, Dense, Skip, Table, TableSkip };

template <Term T, int N = 0>
void backward_columns(const float* x, const float* w, const float* g, const float* y, const float* scale, const float* limit,
                      float* gx, float* gw, int64_t B, int64_t O, int64_t I, float p, int64_t k0, int64_t k1,
                      const PowTable& table, const int32_t* offsets) {
    const V pm1 = splat(p - 1.0f);
    V coef[N + 1];
    constexpr bool TABLE = T == Term::Table || T == Term::TableSkip;
#if defined(__AVX512F__)
    if constexpr (TABLE)
        for (int j = 0; j <= N; ++j) coef[j] = splat(table.coef[j]);
#endif
    for (int64_t oc = 0; oc < O; oc += OCHUNK) {
        int64_t oe = std::min(O, oc + OCHUNK);
        for (int64_t k = k0; k < k1; k += NV * VL) {
            int nv = (int)std::min<int64_t>(NV, (k1 - k) / VL);
            for (int64_t b0 = 0; b0 < B; b0 += BB) {
                int nb = (int)std::min<int64_t>(BB, B - b0);
                V xv[BB][NV], ax[BB][NV];
                for (int i = 0; i < BB; ++i)
                    for (int v = 0; v < NV; ++v) {
                        bool live = i < nb && v < nv;
                        xv[i][v] = live ? load(x + (b0 + i) * I + k + v * VL) : V{};
                        ax[i][v] = V{};
                    }
                for (int64_t o = oc; o < oe; ++o) {
                    V wv[NV], aw[NV];
                    for (int v = 0; v < NV; ++v) {
                        wv[v] = v < nv ? load(w + o * I + k + v * VL) : V{};
                        aw[v] = V{};
                    }
                    for (int i = 0; i < nb; ++i) {
                        int64_t pair = (b0 + i) * O + o;
                        float gi = g[pair];
                        if (gi == 0.0f) continue;
                        V gv = splat(gi), sv = splat(scale[pair]), lv = splat(limit[pair]), yv = splat(y[pair]);
                        VI ov = TABLE ? splati(offsets[pair]) : VI{};  // exponent_offset(t) of the pair
                        for (int v = 0; v < NV; ++v) {
                            V d = xv[i][v] - wv[v];
                            V term;
                            if constexpr (T == Term::P8) {
                                V r = d * sv;  // |r| <= 1
                                V r2 = r * r;
                                V r3 = r2 * r;
                                term = gv * (r3 * (r2 * r2));  // r^7 keeps the sign of d
                            } else if constexpr (TABLE) {
#if defined(__AVX512F__)
                                V a = vabs(d), tscale, poly;
                                if (T == Term::TableSkip && !any_ge(a, lv)) continue;
                                pow_table<N>(a, ov, table, coef, tscale, poly);
                                // |d| <= y to the forward's rounding, and d = 0 falls in the zero slot (0).
                                __m512 mag = _mm512_mul_ps((__m512)tscale, (__m512)poly);
                                // mag | (d & sign bit): the term takes the sign of d
                                mag = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag), _mm512_castps_si512((__m512)d),
                                                                                    _mm512_set1_epi32((int32_t)0x80000000), 0xF8));
                                term = gv * (V)mag;
#endif
                            } else {
                                V a = vabs(d);
                                if (T == Term::Skip && !any_ge(a, lv)) continue;
                                V mag = exp2_fast(pm1 * log2_fast(ratio(a, sv, yv)));
                                VI sign = (VI)d & splati((int32_t)0x80000000);
                                mag = (V)((VI)mag | sign);
                                term = gv * (a > V{} ? mag : V{});  // sign(0) = 0
                            }
                            ax[i][v] += term;
                            aw[v] += term;
                        }
                    }
                    for (int v = 0; v < nv; ++v) {
                        float* dst = gw + o * I + k + v * VL;
                        store(dst, load(dst) - aw[v]);
                    }
                }
                for (int i = 0; i < nb; ++i)
                    for (int v = 0; v < nv; ++v) {
                        float* dst = gx + (b0 + i) * I + k + v * VL;
                        store(dst, load(dst) + ax[i][v]);
                    }
            }
        }
    }
}


// --------------------------------------------------------------------------- interval bounds at p = ∞

// Over the box l <= x <= u: hi[b, o] = max_k max(|l − w|, |u − w|) and lo[b, o] = max_k max(l − w,
// w − u, 0), the distance from w to the box per coordinate (0 inside it). The same float32
// subtractions and maxima as the reference (harness_plugins.lib.lpdist._reference.inf_bounds), so
// the same bits: a max is exact, and each difference is rounded once either way.
void bounds_tile(const float* l, const float* u, const float* w, int64_t I, int64_t b0, int nb, int64_t o0, int no,
                 int64_t O, float* lo, float* hi) {
    constexpr int TB = 2, TO = 2;
    const float *lr[TB], *ur[TB], *wr[TO];
    for (int i = 0; i < TB; ++i) {
        lr[i] = l + (b0 + std::min(i, nb - 1)) * I;
        ur[i] = u + (b0 + std::min(i, nb - 1)) * I;
    }
    for (int j = 0; j < TO; ++j) wr[j] = w + (o0 + std::min(j, no - 1)) * I;
    V accl[TB][TO], acch[TB][TO];
    for (int i = 0; i < TB; ++i)
        for (int j = 0; j < TO; ++j) accl[i][j] = acch[i][j] = V{};
    for (int64_t k = 0; k < I; k += VL) {
        V lv[TB], uv[TB], wv[TO];
        for (int i = 0; i < TB; ++i) {
            lv[i] = load(lr[i] + k);
            uv[i] = load(ur[i] + k);
        }
        for (int j = 0; j < TO; ++j) wv[j] = load(wr[j] + k);
        for (int i = 0; i < TB; ++i)
            for (int j = 0; j < TO; ++j) {
                V below = lv[i] - wv[j], above = wv[j] - uv[i];  // w below the box: l − w > 0
                acch[i][j] = vmax(acch[i][j], vmax(vabs(below), vabs(uv[i] - wv[j])));
                accl[i][j] = vmax(accl[i][j], vmax(below, above));
            }
    }
    for (int i = 0; i < nb; ++i)
        for (int j = 0; j < no; ++j) {
            int64_t out = (b0 + i) * O + o0 + j;
            hi[out] = hmax(acch[i][j]);
            lo[out] = hmax(accl[i][j]);  // accumulators start at 0: the max with 0 is built in
        }
}

// lpdist_peak_pairs's loop: the tile's arithmetic of mode M, repeated until `seconds` have passed
// since `start`; the pairs it did.
template <Mode M>
int64_t peak_loop(std::chrono::steady_clock::time_point start, double seconds) {
    V xv[3], wv[3], acc[3][3];
    for (int i = 0; i < 3; ++i) xv[i] = splat(0.25f * (i + 1)), wv[i] = splat(-0.5f * (i + 1));
    for (auto& row : acc)
        for (V& a : row) a = V{};
    constexpr int64_t CHUNK = 1 << 14;
    int64_t done = 0;
    do {
        for (int64_t it = 0; it < CHUNK; ++it) {
            for (int i = 0; i < 3; ++i) {
#if defined(__x86_64__) || defined(__i386__)
                asm volatile("" : "+v"(xv[i]));  // no instruction: only hides that x does not change
#elif defined(__aarch64__)
                asm volatile("" : "+w"(xv[i]));
#endif
            }
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    V d = xv[i] - wv[j];
                    if constexpr (M == Mode::Max) {
                        acc[i][j] = vmax(acc[i][j], vabs(d));
                    } else {
                        V d2 = d * d;
                        V d4 = d2 * d2;
                        acc[i][j] += d4 * d4;
                    }
                }
        }
        done += CHUNK;
    } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds);
    V sink = V{};
    for (auto& row : acc)
        for (V& a : row) sink += a;
    volatile float keep = hsum(sink);  // the accumulators are used: the loop cannot be dropped
    (void)keep;
    return done * 9 * VL;
}

}  // namespace

extern "C" {

void lpdist_inf_bounds(const float* l, const float* u, const float* w, float* lo, float* hi, int64_t B, int64_t O,
                       int64_t I, int threads) {
    int64_t tb = (B + 1) / 2, to = (O + 1) / 2;
    parallel_for(tb * to, threads, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
            int64_t bt = t / to, ot = t % to;
            bounds_tile(l, u, w, I, bt * 2, (int)std::min<int64_t>(2, B - bt * 2), ot * 2,
                        (int)std::min<int64_t>(2, O - ot * 2), O, lo, hi);
        }
    });
}

int lpdist_vector_width() { return VL; }

// Pairs per second that the forward's arithmetic alone reaches on this CPU: the inner loop of the
// p = ∞ forward (Mode::Max: |x − w| and a max) or of the p = 8 sum (Mode::Pow8: x − w, two squarings
// and a fused multiply-add) on a 3×3 tile whose operands stay in registers (no loads, no argmax
// bookkeeping), on `threads` threads for about `seconds`. The ceiling a forward pass could reach,
// against which `harness bench dist` states its own rate.
double lpdist_peak_pairs(int mode, int threads, double seconds) {
    std::atomic<int64_t> pairs{0};
    auto start = std::chrono::steady_clock::now();
    parallel_for(threads, threads, [&](int64_t, int64_t) {
        pairs += mode == 0 ? peak_loop<Mode::Max>(start, seconds) : peak_loop<Mode::Pow8>(start, seconds);
    });
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return (double)pairs / elapsed;
}

// The degree of the polynomial the forward at this p raises its terms with (pow_table), or 0 where
// it takes the log2/exp2 route (p outside [8, TABLE_BELOW_P), or no AVX-512).
int lpdist_table_degree(float p) { return p >= 8.0f && p < TABLE_BELOW_P ? make_pow_table(p).degree : 0; }

// 1 if no element of a[0..n) is inf or NaN (the kernels' bit-level log2 must not see them).
int lpdist_all_finite(const float* a, int64_t n, int threads) {
    int64_t chunks = (n + 4095) / 4096;
    std::vector<int32_t> bad(std::max<int64_t>(chunks, 1), 0);
    parallel_for(chunks, threads, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
            int64_t e = c * 4096, stop = std::min(n, e + 4096);
            VI hit = VI{};
            for (; e + VL <= stop; e += VL) hit |= ((VI)load(a + e) & splati(0x7f800000)) == splati(0x7f800000);
            int32_t any = 0;
            for (int l = 0; l < VL; ++l) any |= hit[l];
            for (; e < stop; ++e) any |= !std::isfinite(a[e]);
            bad[c] = any;
        }
    });
    for (int32_t b : bad)
        if (b) return 0;
    return 1;
}

// y = max_k |x − w|, and idx = its first maximiser when idx is not null.
void lpdist_inf_forward(const float* x, const float* w, float* y, int64_t* idx, int64_t B, int64_t O, int64_t I,
                        int threads) {
    if (idx)
        forward<Mode::MaxIndex>(x, w, B, O, I, 0, nullptr, y, idx, threads);
    else
        forward<Mode::Max>(x, w, B, O, I, 0, nullptr, y, nullptr, threads);
}

// y = Σ_k (x − w)^8, unnormalised (the caller checks for overflow and underflow).
void lpdist_p8_sum(const float* x, const float* w, float* y, int64_t B, int64_t O, int64_t I, int threads) {
    forward<Mode::Pow8>(x, w, B, O, I, 8, nullptr, y, nullptr, threads);
}

// m = max_k |x − w| (computed first), then y = Σ_k (|x − w|/m)^p; the caller forms m·y^(1/p).
void lpdist_p_sum(const float* x, const float* w, float* m, float* y, int64_t B, int64_t O, int64_t I, float p,
                  int threads) {
    forward<Mode::Max>(x, w, B, O, I, 0, nullptr, m, nullptr, threads);
    PowTable table = p >= 8.0f && p < TABLE_BELOW_P ? pow_table_for(p) : PowTable{};
    bool skip = table.degree && skippable_share(x, w, B, O, I, p, [](int64_t, int64_t, float max) { return max; }) >= SKIP_WORTH_IT;
    if (table.degree && !skip)
        with_degree(table.degree, [&](auto n) {
            forward<Mode::PowTable, decltype(n)::value>(x, w, B, O, I, p, m, y, nullptr, threads, table);
        });
    else if (table.degree)
        with_degree(table.degree, [&](auto n) {
            forward<Mode::PowTableSkip, decltype(n)::value>(x, w, B, O, I, p, m, y, nullptr, threads, table);
        });
    else if (p < DENSE_BELOW_P)
        forward<Mode::PowDense>(x, w, B, O, I, p, m, y, nullptr, threads);
    else
        forward<Mode::Pow>(x, w, B, O, I, p, m, y, nullptr, threads);
}

// grad_x += Σ_o T and grad_w −= Σ_b T (both zero-initialised by the caller; either may be null
// only if the other is not: the terms are computed once for both).
void lpdist_p_backward(const float* x, const float* w, const float* g, const float* y, const float* scale, const float* limit,
                       float* gx, float* gw, int64_t B, int64_t O, int64_t I, float p, int threads) {
    int64_t blocks = I / (NV * VL) + (I % (NV * VL) != 0);
    PowTable table = p > 8.0f && p < TABLE_BELOW_P ? pow_table_for(p - 1.0f) : PowTable{};
    std::vector<float> gt;
    std::vector<int32_t> offsets;
#if defined(__AVX512F__)
    if (table.degree) {
        // g·(t/y)^q·(√2/n)^q for t = y·(1 + 2^-20) = 2^f·n, q = p − 1; a pair with g != 0 and y not normal
        // (not expected: the caller zeroes g where y = 0) sends the whole call to the log2/exp2 route.
        gt.resize(B * O);
        offsets.resize(B * O);
        std::atomic<bool> odd{false};
        const double q = p - 1.0;
        parallel_for(B, threads, [&](int64_t begin, int64_t end) {
            for (int64_t pair = begin * O; pair < end * O; ++pair) {
                bool normal = y[pair] >= 0x1p-126f && y[pair] <= 0x1p126f;
                if (g[pair] == 0.0f || !normal) {
                    gt[pair] = 0.0f;
                    odd = odd || g[pair] != 0.0f;
                    continue;
                }
                float t = inflated(y[pair]);
                offsets[pair] = exponent_offset(t);
                // (1 + δ)^q by its series: δ ≈ 2^-20, so the δ^4 term is below 2^-56 for q < 64.
                double delta = (double)t / y[pair] - 1.0;
                double growth = 1.0 + q * delta * (1.0 + (q - 1.0) * delta / 2 * (1.0 + (q - 2.0) * delta / 3));
                gt[pair] = (float)(g[pair] * growth * table.pair_factor(t));
            }
        });
        if (odd) table.degree = 0;
    }
#endif
    bool skip = table.degree && skippable_share(x, w, B, O, I, p - 1.0f, [&](int64_t b, int64_t o, float) { return y[b * O + o]; }) >= SKIP_WORTH_IT;
    parallel_for(blocks, threads, [&](int64_t begin, int64_t end) {
        int64_t k0 = begin * NV * VL, k1 = std::min(I, end * NV * VL);
        if (p == 8.0f)
            backward_columns<Term::P8>(x, w, g, y, scale, limit, gx, gw, B, O, I, p, k0, k1, table, offsets.data());
        else if (table.degree && !skip)
            with_degree(table.degree, [&](auto n) {
                backward_columns<Term::Table, decltype(n)::value>(x, w, gt.data(), y, scale, limit, gx, gw, B, O, I, p, k0, k1, table, offsets.data());
            });
        else if (table.degree)
            with_degree(table.degree, [&](auto n) {
                backward_columns<Term::TableSkip, decltype(n)::value>(x, w, gt.data(), y, scale, limit, gx, gw, B, O, I, p, k0, k1, table, offsets.data());
            });
        else if (p < DENSE_BELOW_P)
            backward_columns<Term::Dense>(x, w, g, y, scale, limit, gx, gw, B, O, I, p, k0, k1, table, offsets.data());
        else
            backward_columns<Term::Skip>(x, w, g, y, scale, limit, gx, gw, B, O, I, p, k0, k1, table, offsets.data());
    });
}

}  // extern "C"
