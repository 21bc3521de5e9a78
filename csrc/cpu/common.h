// Shared helpers of the C++ CPU kernels (csrc/cpu/*.cpp).
//
// Every kernel takes inputs the Python wrappers have validated, reads them through their strides
// (float32, bfloat16 or float16, each float input dispatched on its own dtype, so mixed dtypes
// work), does its math in float32 (float64 where it sums many terms) and returns fresh tensors
// allocated by new_output(), which honours the debug poison mode set by hpm_C::_set_poison.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hpm::cpu {

// ---------------------------------------------------------------------------------------------
// Poisoned outputs (tests only): 0 off; 1 floats NaN, ints INT64_MAX, bools true; 2 floats NaN,
// ints INT64_MIN, bools false. An element a kernel forgets to write keeps a value the tests see.
inline std::atomic<int>& poison_mode() {
  static std::atomic<int> mode{0};
  return mode;
}

inline at::Tensor new_output(at::IntArrayRef sizes, at::TensorOptions options) {
  at::Tensor out = at::empty(sizes, options);
  const int mode = poison_mode().load(std::memory_order_relaxed);
  if (mode != 0 && out.numel() > 0) {
    const auto type = out.scalar_type();
    if (type == at::kBool) {
      out.fill_(mode == 1);
    } else if (at::isFloatingType(type)) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(mode == 1 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min());
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dispatch over the float dtypes this backend supports (float32, bfloat16, float16: each converts
// exactly to float32, so a half input gives bit for bit the result of its float32 copy). `scalar_t`
// names the element type inside the lambda.
#define HPM_DISPATCH_FLOAT(TYPE, NAME, ...)                                                        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                          \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

// ---------------------------------------------------------------------------------------------
// Hot loops. They work on float buffers, are written so that GCC vectorises them (branch-free
// selects; compiled with -fno-trapping-math, which lets it if-convert without changing any value:
// no flag here reassociates, contracts or drops NaN/inf/signed-zero rules) and are cloned for AVX2
// (HPM_CLONES: chosen at load time by the CPU, same results bit for bit, since no FMA is enabled
// and every reduction has a fixed lane structure in the source). Wrap them in HPM_FAST_BEGIN/END.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HPM_FAST_BEGIN _Pragma("GCC push_options") _Pragma("GCC optimize(\"no-trapping-math\")")
#define HPM_FAST_END _Pragma("GCC pop_options")
#define HPM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HPM_FAST_BEGIN
#define HPM_FAST_END
#define HPM_CLONES
#endif
#define HPM_INLINE inline __attribute__((always_inline))

HPM_FAST_BEGIN
HPM_INLINE float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}
HPM_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
}

// exp and log with the coefficients of Cephes' expf / logf (S. L. Moshier), branch-free so that
// loops over them vectorise; both within 1 ulp of the exact value (checked against float64).

// exp(x) for x <= 0 (or NaN), Cephes expf: ~1 ulp, gradual underflow to 0 below ~-103.9.
HPM_INLINE float exp_nonpos(float x) {
  const bool nan = x != x;
  float xc = x < -104.0f ? -104.0f : x;
  xc = nan ? 0.0f : xc;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (no fast-math: the compiler keeps it)
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float fn = t - 12582912.0f;
  const int32_t n = static_cast<int32_t>(fn);
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  // 2^n in two normal factors (n >= -150), so results below 2^-126 underflow gradually
  const int32_t n1 = n / 2, n2 = n - n1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  const float y = (p * s1) * s2;
  return nan ? x : y;
}

// log(y) for y >= 0 (or NaN / +inf), Cephes logf: ~1 ulp; log(0) = -inf, subnormals handled.
HPM_INLINE float log_nonneg(float y) {
  const bool tiny = y < 1.17549435e-38f;
  const float ys = y * (tiny ? 8388608.0f : 1.0f);  // subnormals * 2^23
  const uint32_t u = float_to_bits(ys);
  int32_t e = static_cast<int32_t>(u >> 23) - 127 - (tiny ? 23 : 0);
  float m = bits_to_float((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = m * (big ? 0.5f : 1.0f);
  e = e + (big ? 1 : 0);
  const float f = m - 1.0f;
  const float fe = static_cast<float>(e);
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float r = p * f * z;
  r = r + fe * -2.12194440e-4f;
  r = r - 0.5f * z;
  r = f + r;
  r = r + fe * 0.693359375f;
  // specials: 0 -> -inf, +inf -> +inf, NaN -> NaN
  r = y == 0.0f ? -__builtin_inff() : r;
  r = (y != y || y == __builtin_inff()) ? y : r;
  return r;
}

// sigmoid(x) and sigmoid(-x) from one exp, without overflow (x NaN: both NaN).
HPM_INLINE void sigmoid_pair(float x, float& sig, float& sig_neg) {
  // Only builtins inside HPM_FAST regions: a std:: function (other optimize flags) would not inline.
  const float e = exp_nonpos(-__builtin_fabsf(x));
  const float r = 1.0f / (1.0f + e);
  const float er = e * r;
  const bool pos = x >= 0.0f;
  sig = pos ? r : er;
  sig_neg = pos ? er : r;
}

// Sum of x[0..n) in float64, in 8 independent lanes (a fixed order the compiler can vectorise).
HPM_INLINE double sum_f64(const float* x, int64_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    for (int u = 0; u < 8; ++u) lane[u] += static_cast<double>(x[e + u]);
  double s = 0;
  for (; e < n; ++e) s += static_cast<double>(x[e]);
  for (int u = 0; u < 8; ++u) s += lane[u];
  return s;
}
HPM_FAST_END

// Copy n elements at src (stride `stride` elements) into dst as float.
template <typename T>
inline void load_float(const T* src, int64_t stride, int64_t n, float* dst) {
  if (stride == 1) {
    for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<float>(src[e]);
  } else {
    for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<float>(src[e * stride]);
  }
}

// Reads rows of a 2-D float tensor (any supported dtype, any strides) as float.
class RowReader {
 public:
  explicit RowReader(const at::Tensor& t)
      : data_(t.const_data_ptr()), type_(t.scalar_type()), row_stride_(t.stride(0)), stride_(t.stride(1)) {}
  // Row r (n elements) into dst.
  void load(int64_t r, int64_t n, float* dst) const {
    switch (type_) {
      case at::kFloat:
        return load_float(static_cast<const float*>(data_) + r * row_stride_, stride_, n, dst);
      case at::kBFloat16:
        return load_float(static_cast<const at::BFloat16*>(data_) + r * row_stride_, stride_, n, dst);
      case at::kHalf:
        return load_float(static_cast<const at::Half*>(data_) + r * row_stride_, stride_, n, dst);
      default:
        TORCH_CHECK(false, "hpm_kernels cpu: unsupported dtype ", type_);
    }
  }
  static void check(const at::Tensor& t, const char* name) {
    const auto type = t.scalar_type();
    TORCH_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf, name,
                ": the cpu kernels take float32, bfloat16 or float16, got ", type);
  }

 private:
  const void* data_;
  at::ScalarType type_;
  int64_t row_stride_, stride_;
};

}  // namespace hpm::cpu
