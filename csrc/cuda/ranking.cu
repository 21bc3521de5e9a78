// CUDA kernels of hpm_C::pairwise_ranking_loss and its backward, tiled over the M x M pairs of
// each image, with nothing of size M x M in memory.
//
// Forward, grid (N, cdiv(M, 64)), 256 threads: a block owns 64 patches i of image n (thread t
// holds i = t % 64 in registers) and walks the row's patches j in shared-memory tiles of 256,
// thread t taking the columns j = t / 64 (mod 4) of each tile. Each thread accumulates its pair
// terms and its count of non-tied pairs; a fixed-order block reduction writes one partial sum and
// one partial count per block, and a one-block fixed-order reduction gives
// loss = sum / max(count, 1). No atomics: the loss is deterministic; no host sync.
//
// Backward, same grid: the block owning patches k gathers d loss / d s_k from both pairs that
// contain k. The pair (i=k, j=m) is the pair (i=m, j=k) seen the other way round: its d is the
// exact negation, up and down swap, so its slope is the same number with the opposite sign:
// G(k, m) = -G(m, k), and grad_s[k] = sum_m G(m, k) - sum_m G(k, m) = 2 * sum_m G(m, k). The block
// evaluates that one orientation and also counts the non-tied pairs; a one-block reduction turns
// grad / max(count, 1) into a device scalar, and an elementwise pass scales and casts.
//
// One sigmoid pair per element: with x the signed difference of the pair (d for an "up" pair, -d
// for a "down" pair) and e = exp(-|x|), sigmoid(x) and sigmoid(-x) are 1/(1+e) and e/(1+e) in one
// order or the other: no overflow, no cancellation (the reference's sigmoid(-d)). Patches past M
// carry NaN targets, which compare as ties, so the tile edges need no other mask.
#include "common.cuh"

namespace hpm_cuda {
namespace {

constexpr int kRows = 64;  // patches i (or k) per block
constexpr int kThreads = 256;
constexpr int kGroups = kThreads / kRows;  // column groups
constexpr int kTile = 256;  // patches j (or m) per shared-memory tile

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t nan_() {
  return static_cast<acc_t>(__int_as_float(0x7fffffff));
}

// (sigmoid(x), sigmoid(-x)), both to full relative precision for any x.
template <typename acc_t>
__device__ __forceinline__ void sigmoid_pair(acc_t x, acc_t& sx, acc_t& snx) {
  const acc_t e = exp_(-fabs(x));
  const acc_t r = acc_t(1) / (acc_t(1) + e);
  if (x >= acc_t(0)) {
    sx = r;
    snx = e * r;
  } else {
    sx = e * r;
    snx = r;
  }
}

template <typename T, typename TT>
struct RankRow {
  const T* __restrict__ pred;
  const TT* __restrict__ target;
  int64_t s_pm, s_tm;
  int64_t M;
};

// Load the tile [j0, j0 + lim) of the row into shared memory (one element per thread).
template <typename T, typename TT, typename acc_t>
__device__ __forceinline__ void load_tile(const RankRow<T, TT>& row, int64_t j0, int lim, acc_t* s_tile,
                                          acc_t* l_tile) {
  const int t = threadIdx.x;
  if (t < lim) {
    s_tile[t] = static_cast<acc_t>(row.pred[(j0 + t) * row.s_pm]);
    l_tile[t] = static_cast<acc_t>(row.target[(j0 + t) * row.s_tm]);
  }
}

template <typename T, typename TT>
__global__ void __launch_bounds__(kThreads)
    ranking_fwd_kernel(const T* __restrict__ pred, int64_t s_pn, int64_t s_pm, const TT* __restrict__ target,
                       int64_t s_tn, int64_t s_tm, int64_t M, at::acc_type<T, true> eps,
                       at::acc_type<T, true>* __restrict__ partial_sum, int* __restrict__ partial_count) {
  using acc_t = at::acc_type<T, true>;
  __shared__ acc_t s_tile[kTile];
  __shared__ acc_t l_tile[kTile];
  __shared__ acc_t red_sum[kThreads / kWarp];
  __shared__ int red_count[kThreads / kWarp];
  const int64_t n = blockIdx.x;
  const RankRow<T, TT> row{pred + n * s_pn, target + n * s_tn, s_pm, s_tm, M};
  const int t = threadIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kRows + (t % kRows);
  const int group = t / kRows;
  acc_t s_i = 0;
  acc_t l_i = nan_<acc_t>();
  if (i < M) {
    s_i = static_cast<acc_t>(row.pred[i * s_pm]);
    l_i = static_cast<acc_t>(row.target[i * s_tm]);
  }
  acc_t acc = 0;
  int count = 0;
  for (int64_t j0 = 0; j0 < M; j0 += kTile) {
    const int lim = static_cast<int>(M - j0 < kTile ? M - j0 : kTile);
    load_tile(row, j0, lim, s_tile, l_tile);
    __syncthreads();
    for (int jj = group; jj < lim; jj += kGroups) {
      const acc_t l_j = l_tile[jj];
      const bool up = l_j > l_i;
      const bool down = l_j < l_i;
      if (up || down) {
        const acc_t d = s_tile[jj] - s_i;
        acc_t sx, snx;
        sigmoid_pair(up ? d : -d, sx, snx);
        acc += -log_(sx + eps);
        ++count;
      }
    }
    __syncthreads();
  }
  acc = block_sum(acc, red_sum);
  count = block_sum(count, red_count);
  if (t == 0) {
    const int64_t out = n * gridDim.y + blockIdx.y;
    partial_sum[out] = acc;
    partial_count[out] = count;
  }
}

template <typename T, typename TT>
__global__ void __launch_bounds__(kThreads)
    ranking_bwd_kernel(const T* __restrict__ pred, int64_t s_pn, int64_t s_pm, const TT* __restrict__ target,
                       int64_t s_tn, int64_t s_tm, int64_t M, at::acc_type<T, true> eps,
                       at::acc_type<T, true>* __restrict__ grad, int* __restrict__ partial_count) {
  using acc_t = at::acc_type<T, true>;
  __shared__ acc_t s_tile[kTile];
  __shared__ acc_t l_tile[kTile];
  __shared__ acc_t part[kGroups][kRows];
  __shared__ int red_count[kThreads / kWarp];
  const int64_t n = blockIdx.x;
  const RankRow<T, TT> row{pred + n * s_pn, target + n * s_tn, s_pm, s_tm, M};
  const int t = threadIdx.x;
  const int local = t % kRows;
  const int64_t k = static_cast<int64_t>(blockIdx.y) * kRows + local;
  const int group = t / kRows;
  acc_t s_k = 0;
  acc_t l_k = nan_<acc_t>();
  if (k < M) {
    s_k = static_cast<acc_t>(row.pred[k * s_pm]);
    l_k = static_cast<acc_t>(row.target[k * s_tm]);
  }
  // Pairs (i=m, j=k): d = s_k - s_m, up = l_k > l_m.
  acc_t acc = 0;
  int count = 0;
  for (int64_t m0 = 0; m0 < M; m0 += kTile) {
    const int lim = static_cast<int>(M - m0 < kTile ? M - m0 : kTile);
    load_tile(row, m0, lim, s_tile, l_tile);
    __syncthreads();
    for (int mm = group; mm < lim; mm += kGroups) {
      const acc_t l_m = l_tile[mm];
      const bool up = l_k > l_m;
      const bool down = l_k < l_m;
      if (up || down) {
        const acc_t d = s_k - s_tile[mm];
        acc_t sx, snx;
        sigmoid_pair(up ? d : -d, sx, snx);
        // Term -log(sigmoid(x) + eps), x = +-d: d/dx = -sigmoid(x) sigmoid(-x) / (sigmoid(x) + eps).
        const acc_t slope = sx * snx / (sx + eps);
        acc += up ? -slope : slope;
        ++count;
      }
    }
    __syncthreads();
  }
  part[group][local] = acc;
  count = block_sum(count, red_count);  // syncs: part[] is complete after it
  if (group == 0 && k < M) {
    acc_t g = part[0][local];
#pragma unroll
    for (int q = 1; q < kGroups; ++q) g += part[q][local];
    grad[n * M + k] = acc_t(2) * g;
  }
  if (t == 0) partial_count[n * gridDim.y + blockIdx.y] = count;
}

template <typename T, typename acc_t>
__global__ void scale_cast_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ scale, T* __restrict__ out,
                                  int64_t total) {
  const acc_t s = scale[0];
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[idx] = static_cast<T>(g[idx] * s);
  }
}

struct RankArgs {
  int64_t N, M, blocks_per_row;
};

RankArgs check_ranking(const at::Tensor& pred, const at::Tensor& target) {
  check_float(pred, "pred");
  check_float(target, "target");
  check_dim(pred, 2, "pred", "(N, M)");
  check_same_device(pred, target, "pred", "target");
  TORCH_CHECK(target.sizes() == pred.sizes(), "hpm_C (CUDA): `target` must have the shape of `pred` ", pred.sizes(),
              ", got ", target.sizes());
  const int64_t N = pred.size(0), M = pred.size(1);
  const int64_t blocks = ceil_div(M, kRows);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "hpm_C (CUDA): pairwise_ranking_loss supports N < 2^31, got ", N);
  TORCH_CHECK(blocks <= 65535, "hpm_C (CUDA): pairwise_ranking_loss supports rows of at most ", 65535 * kRows,
              " values, got M = ", M);
  return {N, M, blocks};
}

at::Tensor pairwise_ranking_loss_cuda(const at::Tensor& pred_in, const at::Tensor& target_in, double eps) {
  const RankArgs a = check_ranking(pred_in, target_in);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const auto loss_dtype =
      pred_in.scalar_type() == at::kDouble || target_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = new_output(std::vector<int64_t>{}, loss_dtype, pred_in.device());
  if (a.N * a.M == 0) {
    loss.zero_();
    return loss;
  }
  at::Tensor pred = pred_in, target = target_in;
  dispatch_pair(pred, target, [&](auto t_tag, auto tt_tag) {
    using T = typename decltype(t_tag)::type;
    using TT = typename decltype(tt_tag)::type;
    using acc_t = at::acc_type<T, true>;
    const int64_t parts = a.N * a.blocks_per_row;
    at::Tensor psum = new_output({parts}, loss_dtype, pred.device());
    at::Tensor pcount = new_output({parts}, at::kInt, pred.device());
    const dim3 grid(static_cast<unsigned>(a.N), static_cast<unsigned>(a.blocks_per_row));
    ranking_fwd_kernel<T, TT><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pred.const_data_ptr<T>(), pred.stride(0), pred.stride(1), target.const_data_ptr<TT>(), target.stride(0),
        target.stride(1), a.M, static_cast<acc_t>(eps), psum.mutable_data_ptr<acc_t>(),
        pcount.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_sum_div<acc_t>(psum.const_data_ptr<acc_t>(), parts, pcount.const_data_ptr<int>(), parts, 1,
                          loss.mutable_data_ptr<acc_t>());
  });
  return loss;
}

at::Tensor pairwise_ranking_loss_backward_cuda(const at::Tensor& grad_in, const at::Tensor& pred_in,
                                               const at::Tensor& target_in, double eps) {
  const RankArgs a = check_ranking(pred_in, target_in);
  check_float(grad_in, "grad");
  check_same_device(pred_in, grad_in, "pred", "grad");
  TORCH_CHECK(grad_in.numel() == 1, "hpm_C (CUDA): `grad` must hold one value, got ", grad_in.sizes());
  const c10::cuda::CUDAGuard guard(pred_in.device());
  at::Tensor out = new_output(pred_in.sizes(), pred_in.scalar_type(), pred_in.device());
  if (a.N * a.M == 0) return out;
  at::Tensor pred = pred_in, target = target_in;
  dispatch_pair(pred, target, [&](auto t_tag, auto tt_tag) {
    using T = typename decltype(t_tag)::type;
    using TT = typename decltype(tt_tag)::type;
    using acc_t = at::acc_type<T, true>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const int64_t parts = a.N * a.blocks_per_row;
    const auto stream = at::cuda::getCurrentCUDAStream();
    at::Tensor g = new_output({a.N, a.M}, acc_dtype, pred.device());
    at::Tensor pcount = new_output({parts}, at::kInt, pred.device());
    const dim3 grid(static_cast<unsigned>(a.N), static_cast<unsigned>(a.blocks_per_row));
    ranking_bwd_kernel<T, TT><<<grid, kThreads, 0, stream>>>(
        pred.const_data_ptr<T>(), pred.stride(0), pred.stride(1), target.const_data_ptr<TT>(), target.stride(0),
        target.stride(1), a.M, static_cast<acc_t>(eps), g.mutable_data_ptr<acc_t>(), pcount.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // scale = grad / max(pairs, 1), on the device.
    const at::Tensor grad = grad_in.to(acc_dtype).reshape({});
    at::Tensor scale = new_output(std::vector<int64_t>{}, acc_dtype, pred.device());
    launch_sum_div<acc_t>(grad.const_data_ptr<acc_t>(), 1, pcount.const_data_ptr<int>(), parts, 1,
                          scale.mutable_data_ptr<acc_t>());
    const int64_t total = a.N * a.M;
    const int64_t blocks = grid_stride_blocks(total, 256);
    // pred was widened to float64 when it met a float64 target: scale into a float64 buffer, then cast.
    const bool widened = pred.scalar_type() != pred_in.scalar_type();
    at::Tensor res = widened ? new_output(pred.sizes(), pred.scalar_type(), pred.device()) : out;
    scale_cast_kernel<T, acc_t><<<blocks, 256, 0, stream>>>(g.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
                                                            res.mutable_data_ptr<T>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (widened) out.copy_(res);
  });
  return out;
}

}  // namespace
}  // namespace hpm_cuda

TORCH_LIBRARY_IMPL(hpm_C, CUDA, m) {
  m.impl("pairwise_ranking_loss", &hpm_cuda::pairwise_ranking_loss_cuda);
  m.impl("pairwise_ranking_loss_backward", &hpm_cuda::pairwise_ranking_loss_backward_cuda);
}
