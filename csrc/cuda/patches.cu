// CUDA kernels of hpm_C::patchify / patchify_backward / unpatchify, gather_tokens(_backward) and
// patch_mse_loss(_backward).
//
// Patch layout (MAE order): element e = (i*p + j)*C + c of patch l is pixel (row (l / w)*p + i,
// column (l % w)*p + j, channel c) of its image, w = W / p. Images are read through their four
// strides (channels-last or sliced images need no copy); patch tensors the kernels write are
// contiguous.
//
// - patchify (with or without ids): blocks of (tx, ty) threads, one patch row per threadIdx.y, the
//   tx threads of a row stride over its P elements (coalesced writes); each thread walks its
//   elements' (channel, column, row) incrementally (PatchWalk), no division per element.
// - patchify_backward with ids: the same walk, float32 (float64) atomicAdd into a zeroed
//   image-shaped buffer, then a cast (repeated ids add). Without ids it is unpatchify.
// - unpatchify: one image row (n, c, y) per threadIdx.y, its pixels written by the tx threads
//   (coalesced), each gathered from the patch tensor (any strides).
// - gather_tokens: a dtype-agnostic row copy with the widest vector (16/8/4/2 bytes) that the row
//   size, strides and base pointer allow; backward: atomicAdd rows into a zeroed float32
//   (x_batch, L, D) buffer (summed over N for a shared batch-1 x), then a cast.
// - patch_mse_loss: one patch row per threadIdx.y (tx = 32..512 threads per row); the target is
//   gathered from the image into registers (up to kMseItems values per thread, so P <= 4096),
//   normalised per patch (two-pass mean / unbiased variance, fp32), and compared with pred. Rows
//   of P > 4096 loop over the patch in global memory instead (three passes, L1/L2-resident).
//   loss = sum(per_patch) / (N*K) by a one-block fixed-order reduction: deterministic, no host
//   sync. The backward recomputes the target the same way; grad_loss is read on the device.
#include "common.cuh"

namespace hpm_cuda {
namespace {

constexpr int kBlockThreads = 256;
constexpr int kMseItems = 8;
constexpr int kMseMaxRowThreads = 512;

// (tx, ty) for kernels that give each row of `width` elements tx threads: tx a power of two in
// [32, max_tx] covering the row in about `per_thread` steps, ty rows per block.
dim3 row_block(int64_t width, int per_thread, int max_tx) {
  int tx = next_pow2(ceil_div(width, per_thread));
  tx = std::max(kWarp, std::min(max_tx, tx));
  const int ty = std::max(1, kBlockThreads / tx);
  return dim3(tx, ty);
}

struct PatchGeom {
  int64_t K;  // patches per image in the patch tensor (K, or L without ids)
  int64_t rows;  // N * K
  int P, C, p, w;
  int64_t s_in, s_ic, s_ih, s_iw;  // image strides
  int64_t s_idn, s_idk;  // ids strides
};

// (n, k, offset of the patch's top-left pixel of channel 0) of patch row `row`.
__device__ __forceinline__ int64_t patch_origin(const PatchGeom& g, const int64_t* __restrict__ ids, int64_t row,
                                                int64_t& n, int64_t& k) {
  n = row / g.K;
  k = row - n * g.K;
  const int64_t l = ids != nullptr ? ids[n * g.s_idn + k * g.s_idk] : k;
  const int64_t pr = l / g.w;
  const int64_t pc = l - pr * g.w;
  return n * g.s_in + pr * g.p * g.s_ih + pc * g.p * g.s_iw;
}

// Walks the patch elements e0, e0 + step, e0 + 2 step, ... of one thread, keeping e's (channel c,
// column j, row i) and its offset from the patch origin without a division per element:
// e = (i*p + j)*C + c, and adding step = (di*p + dj)*C + dc carries at most once into j and i.
struct PatchWalk {
  int c, j, i;
  int dc, dj, di;

  __device__ __forceinline__ PatchWalk(const PatchGeom& g, int e0, int step) {
    c = e0 % g.C;
    int t = e0 / g.C;
    j = t % g.p;
    i = t / g.p;
    dc = step % g.C;
    t = step / g.C;
    dj = t % g.p;
    di = t / g.p;
  }

  __device__ __forceinline__ int64_t offset(const PatchGeom& g) const {
    return c * g.s_ic + i * g.s_ih + j * g.s_iw;
  }

  __device__ __forceinline__ void next(const PatchGeom& g) {
    c += dc;
    int carry = c >= g.C;
    if (carry) c -= g.C;
    j += dj + carry;
    carry = j >= g.p;
    if (carry) j -= g.p;
    i += di + carry;
  }
};

// ---------------------------------------------------------------------------------------------
// patchify / unpatchify / patchify_backward

template <typename T>
__global__ void patchify_kernel(const T* __restrict__ img, const int64_t* __restrict__ ids, T* __restrict__ out,
                                PatchGeom g) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= g.rows) return;
  int64_t n, k;
  const T* src = img + patch_origin(g, ids, row, n, k);
  T* dst = out + row * g.P;
  PatchWalk walk(g, threadIdx.x, blockDim.x);
  for (int e = threadIdx.x; e < g.P; e += blockDim.x, walk.next(g)) dst[e] = src[walk.offset(g)];
}

template <typename T, typename acc_t>
__global__ void patch_scatter_add_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids,
                                         acc_t* __restrict__ acc, PatchGeom g) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= g.rows) return;
  int64_t n, k;
  acc_t* dst = acc + patch_origin(g, ids, row, n, k);
  const T* src = grad + row * g.P;
  PatchWalk walk(g, threadIdx.x, blockDim.x);
  for (int e = threadIdx.x; e < g.P; e += blockDim.x, walk.next(g)) {
    atomicAdd(dst + walk.offset(g), static_cast<acc_t>(src[e]));
  }
}

// One image row (n, c, y) per threadIdx.y, grid-stride over the N*C*H rows; the threads of a row
// write its W pixels (coalesced), each read from patch l = (y/p)*w + x/p, element
// e = ((y%p)*p + x%p)*C + c of the patch tensor.
template <typename T>
__global__ void unpatchify_kernel(const T* __restrict__ patches, int64_t s_pn, int64_t s_pl, int64_t s_pe,
                                  T* __restrict__ out, int64_t rows, int C, int H, int W, int p, int w) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int y = static_cast<int>(r % H);
    const int64_t t = r / H;
    const int c = static_cast<int>(t % C);
    const int64_t n = t / C;
    const T* src = patches + n * s_pn + static_cast<int64_t>(y / p) * w * s_pl +
                   static_cast<int64_t>((y % p) * p * C + c) * s_pe;
    T* dst = out + r * W;
    for (int x = threadIdx.x; x < W; x += blockDim.x) {
      const int px = x / p;
      dst[x] = src[px * s_pl + static_cast<int64_t>(x - px * p) * C * s_pe];
    }
  }
}

PatchGeom patch_geom(const at::Tensor& img, int64_t p, int64_t K, int64_t N, const std::optional<at::Tensor>& ids) {
  PatchGeom g;
  g.K = K;
  g.rows = N * K;
  g.C = static_cast<int>(img.size(1));
  g.p = static_cast<int>(p);
  g.P = static_cast<int>(p * p * img.size(1));
  g.w = static_cast<int>(img.size(3) / p);
  g.s_in = img.stride(0);
  g.s_ic = img.stride(1);
  g.s_ih = img.stride(2);
  g.s_iw = img.stride(3);
  g.s_idn = ids.has_value() ? ids->stride(0) : 0;
  g.s_idk = ids.has_value() ? ids->stride(1) : 0;
  return g;
}

void check_patch_size(int64_t p, int64_t H, int64_t W) {
  TORCH_CHECK(p >= 1 && H % p == 0 && W % p == 0, "hpm_C (CUDA): the patch size p = ", p,
              " must be positive and divide H = ", H, " and W = ", W);
}

at::Tensor patchify_cuda(const at::Tensor& imgs, int64_t p, const std::optional<at::Tensor>& ids) {
  check_float(imgs, "imgs");
  check_dim(imgs, 4, "imgs", "(N, C, H, W)");
  const int64_t N = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  check_patch_size(p, H, W);
  if (ids.has_value()) {
    check_ids(*ids, "ids", N);
    check_same_device(imgs, *ids, "imgs", "ids");
  }
  const c10::cuda::CUDAGuard guard(imgs.device());
  const int64_t L = (H / p) * (W / p);
  const int64_t K = ids.has_value() ? ids->size(1) : L;
  const int64_t P = p * p * C;
  at::Tensor out = new_output({N, K, P}, imgs.scalar_type(), imgs.device());
  if (out.numel() == 0) return out;
  const PatchGeom g = patch_geom(imgs, p, K, N, ids);
  const dim3 block = row_block(P, 4, kBlockThreads);
  const int64_t blocks = ceil_div(g.rows, block.y);
  const int64_t* ids_ptr = ids.has_value() ? ids->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "hpm_C::patchify (CUDA)", [&] {
    patchify_kernel<scalar_t><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        imgs.const_data_ptr<scalar_t>(), ids_ptr, out.mutable_data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor unpatchify_cuda(const at::Tensor& patches, int64_t p, int64_t H, int64_t W) {
  check_float(patches, "patches");
  check_dim(patches, 3, "patches", "(N, L, P)");
  check_patch_size(p, H, W);
  const int64_t N = patches.size(0), L = patches.size(1), P = patches.size(2);
  TORCH_CHECK(L == (H / p) * (W / p), "hpm_C (CUDA): `patches` must have L = (H/p)*(W/p) = ", (H / p) * (W / p),
              " patches, got ", L);
  TORCH_CHECK(P > 0 && P % (p * p) == 0, "hpm_C (CUDA): `patches` must have P = p*p*C values per patch, got ", P);
  const int64_t C = P / (p * p);
  const c10::cuda::CUDAGuard guard(patches.device());
  at::Tensor out = new_output({N, C, H, W}, patches.scalar_type(), patches.device());
  if (out.numel() == 0) return out;
  const int64_t rows = N * C * H;
  const dim3 block = row_block(W, 2, kBlockThreads);
  const int64_t blocks = grid_stride_blocks(rows, static_cast<int>(block.y));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(), "hpm_C::unpatchify (CUDA)", [&] {
    unpatchify_kernel<scalar_t><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        patches.const_data_ptr<scalar_t>(), patches.stride(0), patches.stride(1), patches.stride(2),
        out.mutable_data_ptr<scalar_t>(), rows, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
        static_cast<int>(p), static_cast<int>(W / p));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor patchify_backward_cuda(const at::Tensor& grad_in, int64_t p, int64_t H, int64_t W,
                                  const std::optional<at::Tensor>& ids) {
  if (!ids.has_value()) return unpatchify_cuda(grad_in, p, H, W);
  check_float(grad_in, "grad");
  check_dim(grad_in, 3, "grad", "(N, K, P)");
  check_patch_size(p, H, W);
  const int64_t N = grad_in.size(0), K = grad_in.size(1), P = grad_in.size(2);
  check_ids(*ids, "ids", N);
  check_same_device(grad_in, *ids, "grad", "ids");
  TORCH_CHECK(ids->size(1) == K, "hpm_C (CUDA): `ids` must have K = ", K, " columns (dim 1 of `grad`), got ",
              ids->size(1));
  TORCH_CHECK(P > 0 && P % (p * p) == 0, "hpm_C (CUDA): `grad` must have P = p*p*C values per patch, got ", P);
  const int64_t C = P / (p * p);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const auto acc_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({N, C, H, W}, grad.options().dtype(acc_dtype));
  if (N * K > 0) {
    const PatchGeom g = patch_geom(acc, p, K, N, ids);
    const dim3 block = row_block(P, 4, kBlockThreads);
    const int64_t blocks = ceil_div(g.rows, block.y);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "hpm_C::patchify_backward (CUDA)",
                                    [&] {
                                      using acc_t = at::acc_type<scalar_t, true>;
                                      patch_scatter_add_kernel<scalar_t, acc_t>
                                          <<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
                                              grad.const_data_ptr<scalar_t>(), ids->const_data_ptr<int64_t>(),
                                              acc.mutable_data_ptr<acc_t>(), g);
                                      C10_CUDA_KERNEL_LAUNCH_CHECK();
                                    });
  }
  return acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// gather_tokens / gather_tokens_backward

template <typename V>
__global__ void gather_rows_kernel(const char* __restrict__ x, int64_t s_xn_bytes, int64_t s_xl_bytes,
                                   const int64_t* __restrict__ ids, int64_t s_idn, int64_t s_idk,
                                   char* __restrict__ out, int64_t rows, int64_t K, int64_t units) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int64_t n = row / K;
  const int64_t k = row - n * K;
  const int64_t l = ids[n * s_idn + k * s_idk];
  const V* src = reinterpret_cast<const V*>(x + n * s_xn_bytes + l * s_xl_bytes);
  V* dst = reinterpret_cast<V*>(out) + row * units;
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = src[u];
}

template <typename T, typename acc_t>
__global__ void scatter_add_rows_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids, int64_t s_idn,
                                        int64_t s_idk, acc_t* __restrict__ acc, bool shared_x, int64_t rows,
                                        int64_t K, int64_t L, int64_t D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int64_t n = row / K;
  const int64_t k = row - n * K;
  const int64_t l = ids[n * s_idn + k * s_idk];
  acc_t* dst = acc + ((shared_x ? 0 : n) * L + l) * D;
  const T* src = grad + row * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(dst + d, static_cast<acc_t>(src[d]));
}

template <typename V>
void launch_gather_rows(const at::Tensor& x, const at::Tensor& ids, at::Tensor& out, int64_t s_xn_bytes,
                        int64_t s_xl_bytes, int64_t row_bytes) {
  const int64_t N = ids.size(0), K = ids.size(1);
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(V));
  const dim3 block = row_block(units, 2, kBlockThreads);
  const int64_t blocks = ceil_div(N * K, block.y);
  gather_rows_kernel<V><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const char*>(x.const_data_ptr()), s_xn_bytes, s_xl_bytes, ids.const_data_ptr<int64_t>(),
      ids.stride(0), ids.stride(1), static_cast<char*>(out.mutable_data_ptr()), N * K, K, units);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_tokens_cuda(const at::Tensor& x_in, const at::Tensor& ids) {
  check_float(x_in, "x");
  check_dim(x_in, 3, "x", "(N, L, D) or (1, L, D)");
  check_ids(ids, "ids", -1);
  check_same_device(x_in, ids, "x", "ids");
  const int64_t N = ids.size(0), K = ids.size(1), D = x_in.size(2);
  TORCH_CHECK(x_in.size(0) == N || x_in.size(0) == 1, "hpm_C (CUDA): `x` must have batch size 1 or N = ", N,
              ", got ", x_in.size(0));
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = new_output({N, K, D}, x_in.scalar_type(), x_in.device());
  if (out.numel() == 0) return out;
  const at::Tensor x = x_in.stride(2) == 1 || D == 1 ? x_in : x_in.contiguous();
  const int64_t es = x.element_size();
  const bool shared_x = x.size(0) != N;
  const int64_t s_xn_bytes = shared_x ? 0 : x.stride(0) * es;
  const int64_t s_xl_bytes = x.stride(1) * es;
  const int64_t row_bytes = D * es;
  const auto base = reinterpret_cast<uintptr_t>(x.const_data_ptr());
  const auto fits = [&](int64_t v) {
    return row_bytes % v == 0 && s_xn_bytes % v == 0 && s_xl_bytes % v == 0 && base % v == 0;
  };
  if (fits(16)) {
    launch_gather_rows<uint4>(x, ids, out, s_xn_bytes, s_xl_bytes, row_bytes);
  } else if (fits(8)) {
    launch_gather_rows<uint2>(x, ids, out, s_xn_bytes, s_xl_bytes, row_bytes);
  } else if (fits(4)) {
    launch_gather_rows<uint32_t>(x, ids, out, s_xn_bytes, s_xl_bytes, row_bytes);
  } else {
    launch_gather_rows<uint16_t>(x, ids, out, s_xn_bytes, s_xl_bytes, row_bytes);
  }
  return out;
}

at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids, int64_t L, int64_t x_batch) {
  check_float(grad_in, "grad");
  check_dim(grad_in, 3, "grad", "(N, K, D)");
  const int64_t N = grad_in.size(0), K = grad_in.size(1), D = grad_in.size(2);
  check_ids(ids, "ids", N);
  check_same_device(grad_in, ids, "grad", "ids");
  TORCH_CHECK(ids.size(1) == K, "hpm_C (CUDA): `ids` must have K = ", K, " columns, got ", ids.size(1));
  TORCH_CHECK(x_batch == N || x_batch == 1, "hpm_C (CUDA): `x_batch` must be 1 or N = ", N, ", got ", x_batch);
  TORCH_CHECK(L >= 0, "hpm_C (CUDA): `L` must be >= 0, got ", L);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const auto acc_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({x_batch, L, D}, grad.options().dtype(acc_dtype));
  if (grad.numel() > 0) {
    const dim3 block = row_block(D, 2, kBlockThreads);
    const int64_t blocks = ceil_div(N * K, block.y);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "hpm_C::gather_tokens_backward (CUDA)", [&] {
          using acc_t = at::acc_type<scalar_t, true>;
          scatter_add_rows_kernel<scalar_t, acc_t><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), ids.stride(0), ids.stride(1),
              acc.mutable_data_ptr<acc_t>(), x_batch != N, N * K, K, L, D);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// patch_mse_loss / patch_mse_loss_backward

struct MseGeom {
  PatchGeom g;  // image side; g.K, g.rows, g.P as for the (N, K, P) pred
  int64_t s_pn, s_pk, s_pe;  // pred strides
};

// Sum over the tx threads of this row (threadIdx.y); every thread of the block must call it
// (tx > 32: two syncs). tx is a power of two >= 32, so a warp never spans two rows.
template <typename acc_t>
__device__ __forceinline__ acc_t row_sum(acc_t v, acc_t* scratch) {
  v = warp_sum(v);
  if (blockDim.x == kWarp) return v;
  const int wpr = blockDim.x / kWarp;
  if ((threadIdx.x & (kWarp - 1)) == 0) scratch[threadIdx.y * wpr + threadIdx.x / kWarp] = v;
  __syncthreads();
  acc_t t = scratch[threadIdx.y * wpr];
  for (int q = 1; q < wpr; ++q) t += scratch[threadIdx.y * wpr + q];
  __syncthreads();
  return t;
}

// The target patch of this row. In registers (t[q] = element threadIdx.x + q*blockDim.x, 0 past
// P) when `in_regs`; otherwise only (mean, sd) are computed here and the caller walks the patch
// again with value().
template <typename TI, typename acc_t>
struct Target {
  const TI* __restrict__ base;
  acc_t t[kMseItems];
  acc_t mean = 0;
  acc_t sd = 1;

  __device__ __forceinline__ acc_t load(const PatchGeom& g, const PatchWalk& walk) const {
    return static_cast<acc_t>(base[walk.offset(g)]);
  }

  // Target value of a loaded element (long-row path).
  __device__ __forceinline__ acc_t value(acc_t x, bool norm) const { return norm ? (x - mean) / sd : x; }

  // Every thread of the block must call it (row sums sync).
  __device__ __forceinline__ void build(const PatchGeom& g, bool in_regs, bool norm, acc_t eps, acc_t* scratch) {
    const int tx = blockDim.x;
    const int P = g.P;
    if (in_regs) {
      acc_t sum = 0;
      PatchWalk walk(g, threadIdx.x, tx);
#pragma unroll
      for (int q = 0; q < kMseItems; ++q) {
        const int e = threadIdx.x + q * tx;
        t[q] = e < P ? load(g, walk) : acc_t(0);
        sum += t[q];
        walk.next(g);
      }
      if (norm) {
        mean = row_sum(sum, scratch) / static_cast<acc_t>(P);
        acc_t sq = 0;
#pragma unroll
        for (int q = 0; q < kMseItems; ++q) {
          const int e = threadIdx.x + q * tx;
          t[q] = e < P ? t[q] - mean : acc_t(0);
          sq += t[q] * t[q];
        }
        sd = sqrt(row_sum(sq, scratch) / static_cast<acc_t>(P - 1) + eps);
#pragma unroll
        for (int q = 0; q < kMseItems; ++q) t[q] = t[q] / sd;
      }
    } else if (norm) {
      acc_t sum = 0;
      PatchWalk walk(g, threadIdx.x, tx);
      for (int e = threadIdx.x; e < P; e += tx, walk.next(g)) sum += load(g, walk);
      mean = row_sum(sum, scratch) / static_cast<acc_t>(P);
      acc_t sq = 0;
      walk = PatchWalk(g, threadIdx.x, tx);
      for (int e = threadIdx.x; e < P; e += tx, walk.next(g)) {
        const acc_t d = load(g, walk) - mean;
        sq += d * d;
      }
      sd = sqrt(row_sum(sq, scratch) / static_cast<acc_t>(P - 1) + eps);
    }
  }
};

template <typename T, typename TI>
__global__ void __launch_bounds__(kMseMaxRowThreads)
    patch_mse_fwd_kernel(const T* __restrict__ pred, const TI* __restrict__ img, const int64_t* __restrict__ ids,
                         at::acc_type<T, true>* __restrict__ per_patch, MseGeom m, bool norm,
                         at::acc_type<T, true> eps) {
  using acc_t = at::acc_type<T, true>;
  __shared__ acc_t scratch[kMseMaxRowThreads / kWarp];
  const PatchGeom& g = m.g;
  const int64_t row_raw = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row_raw < g.rows;
  const int64_t row = active ? row_raw : g.rows - 1;  // idle rows redo the last row: the syncs need them
  int64_t n, k;
  Target<TI, acc_t> tgt;
  tgt.base = img + patch_origin(g, ids, row, n, k);
  const T* y = pred + n * m.s_pn + k * m.s_pk;
  const int tx = blockDim.x;
  const int P = g.P;
  const bool in_regs = P <= tx * kMseItems;
  tgt.build(g, in_regs, norm, eps, scratch);
  acc_t sq = 0;
  if (in_regs) {
#pragma unroll
    for (int q = 0; q < kMseItems; ++q) {
      const int e = threadIdx.x + q * tx;
      if (e < P) {
        const acc_t d = static_cast<acc_t>(y[e * m.s_pe]) - tgt.t[q];
        sq += d * d;
      }
    }
  } else {
    PatchWalk walk(g, threadIdx.x, tx);
    for (int e = threadIdx.x; e < P; e += tx, walk.next(g)) {
      const acc_t d = static_cast<acc_t>(y[e * m.s_pe]) - tgt.value(tgt.load(g, walk), norm);
      sq += d * d;
    }
  }
  const acc_t total = row_sum(sq, scratch);
  if (active && threadIdx.x == 0) per_patch[row] = total / static_cast<acc_t>(P);
}

template <typename T, typename TI>
__global__ void __launch_bounds__(kMseMaxRowThreads)
    patch_mse_bwd_kernel(const at::acc_type<T, true>* __restrict__ grad_loss,
                         const at::acc_type<T, true>* __restrict__ grad_per_patch, int64_t s_gn, int64_t s_gk,
                         const T* __restrict__ pred, const TI* __restrict__ img, const int64_t* __restrict__ ids,
                         T* __restrict__ out, MseGeom m, bool norm, at::acc_type<T, true> eps) {
  using acc_t = at::acc_type<T, true>;
  __shared__ acc_t scratch[kMseMaxRowThreads / kWarp];
  const PatchGeom& g = m.g;
  const int64_t row_raw = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row_raw < g.rows;
  const int64_t row = active ? row_raw : g.rows - 1;
  int64_t n, k;
  Target<TI, acc_t> tgt;
  tgt.base = img + patch_origin(g, ids, row, n, k);
  const int tx = blockDim.x;
  const int P = g.P;
  const bool in_regs = P <= tx * kMseItems;
  tgt.build(g, in_regs, norm, eps, scratch);
  if (!active) return;  // no sync below
  const acc_t coef = (grad_per_patch[n * s_gn + k * s_gk] + grad_loss[0] / static_cast<acc_t>(g.rows)) *
                     (acc_t(2) / static_cast<acc_t>(P));
  const T* y = pred + n * m.s_pn + k * m.s_pk;
  T* dst = out + row * P;
  if (in_regs) {
#pragma unroll
    for (int q = 0; q < kMseItems; ++q) {
      const int e = threadIdx.x + q * tx;
      if (e < P) dst[e] = static_cast<T>(coef * (static_cast<acc_t>(y[e * m.s_pe]) - tgt.t[q]));
    }
  } else {
    PatchWalk walk(g, threadIdx.x, tx);
    for (int e = threadIdx.x; e < P; e += tx, walk.next(g)) {
      dst[e] = static_cast<T>(coef * (static_cast<acc_t>(y[e * m.s_pe]) - tgt.value(tgt.load(g, walk), norm)));
    }
  }
}

struct MseArgs {
  int64_t N, K, P;
};

MseArgs check_mse(const at::Tensor& pred, const at::Tensor& imgs, int64_t p, const at::Tensor& ids, bool norm_pix) {
  check_float(pred, "pred");
  check_float(imgs, "imgs");
  check_dim(pred, 3, "pred", "(N, K, P)");
  check_dim(imgs, 4, "imgs", "(N, C, H, W)");
  check_same_device(pred, imgs, "pred", "imgs");
  check_same_device(pred, ids, "pred", "ids");
  const int64_t N = imgs.size(0);
  check_patch_size(p, imgs.size(2), imgs.size(3));
  check_ids(ids, "ids", N);
  const int64_t K = ids.size(1), P = p * p * imgs.size(1);
  TORCH_CHECK(pred.size(0) == N && pred.size(1) == K && pred.size(2) == P,
              "hpm_C (CUDA): `pred` must have shape (N, K, p*p*C) = (", N, ", ", K, ", ", P, "), got ", pred.sizes());
  TORCH_CHECK(!norm_pix || P >= 2, "hpm_C (CUDA): `norm_pix` needs P = p*p*C >= 2, got P = ", P);
  return {N, K, P};
}

MseGeom mse_geom(const at::Tensor& pred, const at::Tensor& imgs, int64_t p, const at::Tensor& ids) {
  MseGeom m;
  m.g = patch_geom(imgs, p, ids.size(1), imgs.size(0), ids);
  m.s_pn = pred.stride(0);
  m.s_pk = pred.stride(1);
  m.s_pe = pred.stride(2);
  return m;
}

at::ScalarType loss_dtype(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> patch_mse_loss_cuda(const at::Tensor& pred_in, const at::Tensor& imgs_in, int64_t p,
                                                       const at::Tensor& ids, bool norm_pix, double eps) {
  const MseArgs a = check_mse(pred_in, imgs_in, p, ids, norm_pix);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const auto acc_dtype = loss_dtype(pred_in, imgs_in);
  at::Tensor per_patch = new_output({a.N, a.K}, acc_dtype, pred_in.device());
  at::Tensor loss = new_output(std::vector<int64_t>{}, acc_dtype, pred_in.device());
  if (a.N * a.K == 0) {
    loss.zero_();
    return {loss, per_patch};
  }
  at::Tensor pred = pred_in, imgs = imgs_in;
  dispatch_pair(pred, imgs, [&](auto t_tag, auto ti_tag) {
    using T = typename decltype(t_tag)::type;
    using TI = typename decltype(ti_tag)::type;
    using acc_t = at::acc_type<T, true>;
    const MseGeom m = mse_geom(pred, imgs, p, ids);
    const dim3 block = row_block(a.P, 4, kMseMaxRowThreads);
    const int64_t blocks = ceil_div(m.g.rows, block.y);
    patch_mse_fwd_kernel<T, TI><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        pred.const_data_ptr<T>(), imgs.const_data_ptr<TI>(), ids.const_data_ptr<int64_t>(),
        per_patch.mutable_data_ptr<acc_t>(), m, norm_pix, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_sum_div<acc_t>(per_patch.const_data_ptr<acc_t>(), a.N * a.K, nullptr, 0, a.N * a.K,
                          loss.mutable_data_ptr<acc_t>());
  });
  return {loss, per_patch};
}

at::Tensor patch_mse_loss_backward_cuda(const at::Tensor& grad_loss_in, const at::Tensor& grad_per_patch_in,
                                        const at::Tensor& pred_in, const at::Tensor& imgs_in, int64_t p,
                                        const at::Tensor& ids, bool norm_pix, double eps) {
  const MseArgs a = check_mse(pred_in, imgs_in, p, ids, norm_pix);
  check_float(grad_loss_in, "grad_loss");
  check_float(grad_per_patch_in, "grad_per_patch");
  check_same_device(pred_in, grad_loss_in, "pred", "grad_loss");
  check_same_device(pred_in, grad_per_patch_in, "pred", "grad_per_patch");
  TORCH_CHECK(grad_loss_in.numel() == 1, "hpm_C (CUDA): `grad_loss` must hold one value, got ", grad_loss_in.sizes());
  TORCH_CHECK(grad_per_patch_in.dim() == 2 && grad_per_patch_in.size(0) == a.N && grad_per_patch_in.size(1) == a.K,
              "hpm_C (CUDA): `grad_per_patch` must have shape (N, K) = (", a.N, ", ", a.K, "), got ",
              grad_per_patch_in.sizes());
  const c10::cuda::CUDAGuard guard(pred_in.device());
  if (a.N * a.K == 0) return new_output(pred_in.sizes(), pred_in.scalar_type(), pred_in.device());
  at::Tensor pred = pred_in, imgs = imgs_in;
  at::Tensor out;
  dispatch_pair(pred, imgs, [&](auto t_tag, auto ti_tag) {
    using T = typename decltype(t_tag)::type;
    using TI = typename decltype(ti_tag)::type;
    using acc_t = at::acc_type<T, true>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor gl = grad_loss_in.to(acc_dtype).reshape({});
    const at::Tensor gpp = grad_per_patch_in.to(acc_dtype);
    out = new_output(pred.sizes(), pred.scalar_type(), pred.device());
    const MseGeom m = mse_geom(pred, imgs, p, ids);
    const dim3 block = row_block(a.P, 4, kMseMaxRowThreads);
    const int64_t blocks = ceil_div(m.g.rows, block.y);
    patch_mse_bwd_kernel<T, TI><<<blocks, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        gl.const_data_ptr<acc_t>(), gpp.const_data_ptr<acc_t>(), gpp.stride(0), gpp.stride(1),
        pred.const_data_ptr<T>(), imgs.const_data_ptr<TI>(), ids.const_data_ptr<int64_t>(), out.mutable_data_ptr<T>(),
        m, norm_pix, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.scalar_type() == pred_in.scalar_type() ? out : out.to(pred_in.scalar_type());
}

}  // namespace
}  // namespace hpm_cuda

TORCH_LIBRARY_IMPL(hpm_C, CUDA, m) {
  m.impl("patchify", &hpm_cuda::patchify_cuda);
  m.impl("patchify_backward", &hpm_cuda::patchify_backward_cuda);
  m.impl("unpatchify", &hpm_cuda::unpatchify_cuda);
  m.impl("gather_tokens", &hpm_cuda::gather_tokens_cuda);
  m.impl("gather_tokens_backward", &hpm_cuda::gather_tokens_backward_cuda);
  m.impl("patch_mse_loss", &hpm_cuda::patch_mse_loss_cuda);
  m.impl("patch_mse_loss_backward", &hpm_cuda::patch_mse_loss_backward_cuda);
}
