// Helpers shared by the CUDA kernels of hpm_kernels._C_cuda (patches.cu, select.cu, ranking.cu).
//
// Only light headers: ATen/cuda/CUDAContext.h would pull in cuSPARSE/cuBLAS headers, which a bare
// toolkit (nvcc + runtime) lacks; at::cuda::getCurrentCUDAStream comes from c10/cuda/CUDAStream.h.
//
// Conventions: every kernel accumulates in acc_t = at::acc_type<scalar_t, true> (float for
// half/bfloat16/float, double for double); tensors are addressed with int64 offsets; every launch
// goes to at::cuda::getCurrentCUDAStream() and is followed by C10_CUDA_KERNEL_LAUNCH_CHECK().
// Reductions run in a fixed order (no atomics), so the losses are deterministic.
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

namespace hpm_cuda {

constexpr int kWarp = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int next_pow2(int64_t v) {
  int r = 1;
  while (r < v) r <<= 1;
  return r;
}

// Streaming multiprocessors of the current device (cached per device), to size grid-stride loops.
inline int sm_count() {
  static int cache[64] = {0};
  const int dev = c10::cuda::current_device();
  if (dev < 0 || dev >= 64) return 132;
  if (cache[dev] == 0) {
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cache[dev] = v > 0 ? v : 1;
  }
  return cache[dev];
}

// Blocks for a grid-stride loop over `total` items with `threads` per block: at most 32 per SM.
inline int64_t grid_stride_blocks(int64_t total, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, threads), static_cast<int64_t>(sm_count()) * 32));
}

// ---------------------------------------------------------------------------------------------
// Argument checks (the Python wrappers validate shapes and values; these guard the C++ contract).

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "hpm_C (CUDA): `", name, "` is undefined");
  TORCH_CHECK(t.is_cuda(), "hpm_C (CUDA): `", name, "` must be a CUDA tensor, got a tensor on ", t.device());
}

inline void check_float(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble, "hpm_C (CUDA): `", name,
              "` must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_ids(const at::Tensor& ids, const char* name, int64_t N) {
  check_cuda(ids, name);
  TORCH_CHECK(ids.scalar_type() == at::kLong, "hpm_C (CUDA): `", name, "` must be int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == 2, "hpm_C (CUDA): `", name, "` must be 2-D (N, K), got ", ids.dim(), " dims");
  TORCH_CHECK(N < 0 || ids.size(0) == N, "hpm_C (CUDA): `", name, "` must have N = ", N, " rows, got ", ids.size(0));
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.device() == b.device(), "hpm_C (CUDA): `", na, "` and `", nb, "` must be on the same device, got ",
              a.device(), " and ", b.device());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dim, "hpm_C (CUDA): `", name, "` must be ", shape, ", got ", t.dim(), " dims");
}

// ---------------------------------------------------------------------------------------------
// Output allocation. HPM_KERNELS_CUDA_POISON=high|low fills every output before the kernels run
// (floats NaN; integers their max or min; bools true or false), so the tests can see any element
// a kernel forgets to write. Unset (the normal case): plain at::empty.

inline at::Tensor new_output(at::IntArrayRef shape, at::ScalarType dtype, const at::Device& device) {
  auto out = at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
  const char* poison = std::getenv("HPM_KERNELS_CUDA_POISON");
  if (poison == nullptr || out.numel() == 0) return out;
  const bool high = std::strcmp(poison, "low") != 0;
  if (at::isFloatingType(dtype)) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  } else if (dtype == at::kBool) {
    out.fill_(high);
  } else if (dtype == at::kLong) {
    out.fill_(high ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min());
  } else if (dtype == at::kInt) {
    out.fill_(high ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int32_t>::min());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Mixed float dtypes. Ops with two float inputs (pred/imgs, pred/target, scores/noise) run kernels
// templated on <primary, secondary> for the pairs (T, T) and (half or bfloat16, float), the case
// of a bf16 autocast output against float32 data. Any other mix is made one of those first by an
// exact widening: the secondary to float32, or, when float64 is involved, both to float64.
// `f` is a generic lambda called as f(Type<P>{}, Type<S>{}) (C++17: no template lambdas, so that
// the extension also builds against torch versions whose BuildExtension passes -std=c++17).

template <typename T>
struct Type {
  using type = T;
};

template <typename F>
void dispatch_pair(at::Tensor& primary, at::Tensor& secondary, F&& f) {
  const auto a = primary.scalar_type();
  const auto b = secondary.scalar_type();
  if (a != b) {
    if (a == at::kDouble || b == at::kDouble) {
      primary = primary.to(at::kDouble);
      secondary = secondary.to(at::kDouble);
    } else if (b != at::kFloat) {
      secondary = secondary.to(at::kFloat);
    }
  }
  const bool same = primary.scalar_type() == secondary.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, primary.scalar_type(), "hpm_C (CUDA)", [&] {
    if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
      if (!same) {
        f(Type<scalar_t>{}, Type<float>{});
        return;
      }
    }
    f(Type<scalar_t>{}, Type<scalar_t>{});
  });
}

// ---------------------------------------------------------------------------------------------
// Device helpers.

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the whole block, in a fixed order; every thread gets the result. `scratch` holds at
// least blockDim / 32 values. Every thread of the block must call it (it syncs twice).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int nwarps = (blockDim.x * blockDim.y + kWarp - 1) / kWarp;
  v = warp_sum(v);
  if ((tid & (kWarp - 1)) == 0) scratch[tid / kWarp] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < nwarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Exclusive prefix sum over the block in thread order (tid = threadIdx.x; 1-D blocks), with the
// block total. `scratch` holds at least 32 ints. Every thread must call it (it syncs twice).
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int& total) {
  const int tid = threadIdx.x;
  const int lane = tid & (kWarp - 1);
  const int warp = tid / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  int incl = v;
#pragma unroll
  for (int o = 1; o < kWarp; o <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  if (lane == kWarp - 1) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nwarps ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < kWarp; o <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += up;
    }
    if (lane < nwarps) scratch[lane] = w;  // inclusive prefix of warp totals
  }
  __syncthreads();
  const int before = warp > 0 ? scratch[warp - 1] : 0;
  total = scratch[nwarps - 1];
  __syncthreads();
  return before + incl - v;
}

// out = sum(values[0..n)) / max(denominator, 1), one block, fixed order (deterministic).
// denominator = the sum of counts[0..n_counts) when counts is given, else fixed_denominator.
template <typename acc_t>
__global__ void sum_div_kernel(const acc_t* __restrict__ values, int64_t n, const int* __restrict__ counts,
                               int64_t n_counts, int64_t fixed_denominator, acc_t* __restrict__ out) {
  __shared__ acc_t scratch_v[32];
  __shared__ long long scratch_c[32];
  acc_t v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += values[i];
  long long c = 0;
  if (counts != nullptr) {
    for (int64_t i = threadIdx.x; i < n_counts; i += blockDim.x) c += counts[i];
  }
  v = block_sum(v, scratch_v);
  c = block_sum(c, scratch_c);
  if (threadIdx.x == 0) {
    long long d = counts != nullptr ? c : static_cast<long long>(fixed_denominator);
    if (d < 1) d = 1;
    out[0] = v / static_cast<acc_t>(d);
  }
}

// Launch sum_div_kernel on the current stream; `out` is a 0-dim acc_t tensor.
template <typename acc_t>
void launch_sum_div(const acc_t* values, int64_t n, const int* counts, int64_t n_counts, int64_t fixed_denominator,
                    acc_t* out) {
  sum_div_kernel<acc_t><<<1, 1024, 0, at::cuda::getCurrentCUDAStream()>>>(values, n, counts, n_counts,
                                                                            fixed_denominator, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace hpm_cuda
