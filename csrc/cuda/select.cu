// CUDA kernel of hpm_C::select_patches: HPM mask generation, one block per row, the whole batch in
// one launch, no host sync.
//
// A row (L <= 4096) is spread over T = min(512, L rounded up to 32) threads, each holding
// ipt = ceil(L / T) <= 8 consecutive patches (idx = tid * ipt + q) in registers, so a block scan
// over the threads walks the row in index order. Every value becomes an unsigned key with the
// same order (float bits, the magnitude of negatives flipped, -0.0 -> +0.0; NaN -> -inf for
// scores and +inf for noise, as in the reference; integer ops only); half and bfloat16 go through
// float exactly, float64 uses 64-bit keys. Then:
//
// 1. hard = the num_hard largest score keys, ties to the lower index: a radix select (8-bit
//    digits from the top, a 256-bin shared-memory histogram per pass, the crossing bin found by
//    one warp's suffix scan) finds the num_hard-th largest key t and how many keys equal to t
//    are still needed; every key above t is hard, and the first of the keys equal to t (an
//    exclusive block scan in index order) fill the rest;
// 2. visible = the len_keep smallest noise keys among the other patches, ties to the lower
//    index: the same select on the complement of the noise key (which reverses the order);
// 3. compaction: an exclusive block scan of the visible flags gives every patch its slot in
//    ids_keep or ids_mask (both ascending) and its ids_restore entry.
#include "common.cuh"

namespace hpm_cuda {
namespace {

constexpr int kMaxRow = 4096;
constexpr int kMaxThreads = 512;
constexpr int kItems = kMaxRow / kMaxThreads;  // 8
constexpr int kBins = 256;

__device__ __forceinline__ uint32_t ordered_key(float v, uint32_t nan_bits) {
  uint32_t b = __float_as_uint(v);
  const uint32_t mag = b & 0x7fffffffu;
  if (mag == 0) b = 0;
  if (mag > 0x7f800000u) b = nan_bits;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ uint64_t ordered_key(double v, uint64_t nan_bits) {
  uint64_t b = static_cast<uint64_t>(__double_as_longlong(v));
  const uint64_t mag = b & 0x7fffffffffffffffull;
  if (mag == 0) b = 0;
  if (mag > 0x7ff0000000000000ull) b = nan_bits;
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

template <typename key_t>
struct KeyTraits;

template <>
struct KeyTraits<uint32_t> {
  using value_t = float;
  static constexpr uint32_t neg_inf = 0xff800000u;
  static constexpr uint32_t pos_inf = 0x7f800000u;
};

template <>
struct KeyTraits<uint64_t> {
  using value_t = double;
  static constexpr uint64_t neg_inf = 0xfff0000000000000ull;
  static constexpr uint64_t pos_inf = 0x7ff0000000000000ull;
};

struct SelectShared {
  int hist[kBins];
  int scan[kWarp];
  int found[2];  // crossing digit, keys still needed after it
};

// Flags (bit q = item q) of the r largest keys among the `valid` items of the block, ties to the
// lower index. Needs 0 <= r <= the number of valid items; r is the same in every thread. Every
// thread of the block must call it.
template <typename key_t>
__device__ uint32_t select_top(const key_t (&key)[kItems], uint32_t valid, int r, SelectShared& sh) {
  if (r <= 0) return 0;
  const int tid = threadIdx.x;
  const int lane = tid & (kWarp - 1);
  key_t prefix = 0;
  key_t mask = 0;
  int need = r;
  constexpr int kBits = 8 * sizeof(key_t);
#pragma unroll 1
  for (int shift = kBits - 8; shift >= 0; shift -= 8) {
    for (int b = tid; b < kBins; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      if (((valid >> q) & 1u) && (key[q] & mask) == prefix) {
        atomicAdd(&sh.hist[static_cast<int>((key[q] >> shift) & 0xff)], 1);
      }
    }
    __syncthreads();
    if (tid < kWarp) {
      // Lane owns bins [8 lane, 8 lane + 8). The digit wanted is the largest d with
      // count(digit >= d) >= need; exactly one lane holds it.
      int local[8];
      int own = 0;
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        local[b] = sh.hist[lane * 8 + b];
        own += local[b];
      }
      int suffix = own;  // bins of this lane and every higher lane
#pragma unroll
      for (int o = 1; o < kWarp; o <<= 1) {
        const int v = __shfl_down_sync(0xffffffffu, suffix, o);
        if (lane + o < kWarp) suffix += v;
      }
      const int above = suffix - own;
      if (above < need && need <= suffix) {
        int cum = above;
#pragma unroll
        for (int b = 7; b >= 0; --b) {
          if (cum + local[b] >= need) {
            sh.found[0] = lane * 8 + b;
            sh.found[1] = need - cum;
            break;
          }
          cum += local[b];
        }
      }
    }
    __syncthreads();
    const key_t digit = static_cast<key_t>(sh.found[0]);
    need = sh.found[1];
    prefix |= digit << shift;
    mask |= static_cast<key_t>(0xff) << shift;
  }
  // prefix is now the r-th largest key; `need` of the keys equal to it are taken, lowest index first.
  int ties = 0;
#pragma unroll
  for (int q = 0; q < kItems; ++q) ties += (((valid >> q) & 1u) && key[q] == prefix) ? 1 : 0;
  int total;
  int before = block_exclusive_scan(ties, sh.scan, total);
  uint32_t chosen = 0;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    if ((valid >> q) & 1u) {
      if (key[q] > prefix) {
        chosen |= 1u << q;
      } else if (key[q] == prefix) {
        if (before < need) chosen |= 1u << q;
        ++before;
      }
    }
  }
  return chosen;
}

template <typename TS, typename TN>
__global__ void __launch_bounds__(kMaxThreads)
    select_patches_kernel(const TS* __restrict__ scores, int64_t s_sn, int64_t s_sl, const TN* __restrict__ noise,
                          int64_t s_nn, int64_t s_nl, int64_t* __restrict__ ids_keep,
                          int64_t* __restrict__ ids_mask, int64_t* __restrict__ ids_restore, bool* __restrict__ mask,
                          int L, int ipt, int len_keep, int num_hard) {
  using key_t = std::conditional_t<std::is_same_v<TS, double>, uint64_t, uint32_t>;
  using value_t = typename KeyTraits<key_t>::value_t;
  __shared__ SelectShared sh;
  const int64_t n = blockIdx.x;
  const int first = threadIdx.x * ipt;
  uint32_t inside = 0;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    if (q < ipt && first + q < L) inside |= 1u << q;
  }

  // 1. hard: the num_hard highest scores (NaN ranks as -inf).
  key_t key[kItems];
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    key[q] = 0;
    if ((inside >> q) & 1u) {
      const value_t v = static_cast<value_t>(scores[n * s_sn + static_cast<int64_t>(first + q) * s_sl]);
      key[q] = ordered_key(v, KeyTraits<key_t>::neg_inf);
    }
  }
  const uint32_t hard = select_top(key, inside, num_hard, sh);

  // 2. visible: the len_keep smallest noise values of the rest (NaN ranks as +inf); the
  // complement reverses the order, so they are the largest complemented keys.
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    key[q] = 0;
    if ((inside >> q) & 1u) {
      const value_t v = static_cast<value_t>(noise[n * s_nn + static_cast<int64_t>(first + q) * s_nl]);
      key[q] = ~ordered_key(v, KeyTraits<key_t>::pos_inf);
    }
  }
  const uint32_t keep = select_top(key, inside & ~hard, len_keep, sh);

  // 3. compaction into ascending index lists, and the inverse permutation.
  int total;
  int kept_before = block_exclusive_scan(__popc(keep), sh.scan, total);
  int64_t* keep_row = ids_keep + n * len_keep;
  int64_t* mask_row = ids_mask + n * (L - len_keep);
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    if ((inside >> q) & 1u) {
      const int idx = first + q;
      const bool kept = (keep >> q) & 1u;
      int slot;
      if (kept) {
        keep_row[kept_before] = idx;
        slot = kept_before;
        ++kept_before;
      } else {
        const int masked_before = idx - kept_before;
        mask_row[masked_before] = idx;
        slot = len_keep + masked_before;
      }
      ids_restore[n * L + idx] = slot;
      mask[n * L + idx] = !kept;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_patches_cuda(const at::Tensor& scores_in,
                                                                               const at::Tensor& noise_in,
                                                                               int64_t len_keep, int64_t num_hard) {
  check_float(scores_in, "scores");
  check_float(noise_in, "noise");
  check_dim(scores_in, 2, "scores", "(N, L)");
  check_same_device(scores_in, noise_in, "scores", "noise");
  TORCH_CHECK(noise_in.sizes() == scores_in.sizes(), "hpm_C (CUDA): `noise` must have the shape of `scores` ",
              scores_in.sizes(), ", got ", noise_in.sizes());
  const int64_t N = scores_in.size(0), L = scores_in.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "hpm_C (CUDA): select_patches supports N < 2^31, got ", N);
  TORCH_CHECK(L <= kMaxRow, "hpm_C (CUDA): select_patches holds rows of at most ", kMaxRow, " patches, got L = ", L);
  TORCH_CHECK(0 <= len_keep && len_keep <= L && 0 <= num_hard && num_hard <= L - len_keep,
              "hpm_C (CUDA): need 0 <= len_keep <= L and 0 <= num_hard <= L - len_keep, got L = ", L,
              ", len_keep = ", len_keep, ", num_hard = ", num_hard);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto dev = scores_in.device();
  at::Tensor ids_keep = new_output({N, len_keep}, at::kLong, dev);
  at::Tensor ids_mask = new_output({N, L - len_keep}, at::kLong, dev);
  at::Tensor ids_restore = new_output({N, L}, at::kLong, dev);
  at::Tensor mask = new_output({N, L}, at::kBool, dev);
  if (N * L == 0) return {ids_keep, ids_mask, ids_restore, mask};
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, ceil_div(L, kWarp) * kWarp));
  const int ipt = static_cast<int>(ceil_div(L, threads));
  at::Tensor scores = scores_in, noise = noise_in;
  dispatch_pair(scores, noise, [&](auto ts_tag, auto tn_tag) {
    using TS = typename decltype(ts_tag)::type;
    using TN = typename decltype(tn_tag)::type;
    select_patches_kernel<TS, TN><<<N, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        scores.const_data_ptr<TS>(), scores.stride(0), scores.stride(1), noise.const_data_ptr<TN>(), noise.stride(0),
        noise.stride(1), ids_keep.mutable_data_ptr<int64_t>(), ids_mask.mutable_data_ptr<int64_t>(),
        ids_restore.mutable_data_ptr<int64_t>(), mask.mutable_data_ptr<bool>(), static_cast<int>(L), ipt,
        static_cast<int>(len_keep), static_cast<int>(num_hard));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ids_keep, ids_mask, ids_restore, mask};
}

}  // namespace
}  // namespace hpm_cuda

TORCH_LIBRARY_IMPL(hpm_C, CUDA, m) { m.impl("select_patches", &hpm_cuda::select_patches_cuda); }
