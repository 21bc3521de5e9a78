// CPU kernels of the patch ops: patchify / unpatchify / patchify_backward, gather_tokens (+ backward),
// patch_mse_loss (+ backward). Images are read through their strides (NCHW, channels-last, sliced),
// so no input is copied; outputs are fresh contiguous tensors from new_output().
//
// Image-side work is split into tasks (n, patch row): a task touches only the p image rows of its
// patch row, reads (or writes) each of them from left to right once for all the patches of that
// row it needs, and so streams through memory. Patch by patch would be p * C short reads at
// scattered addresses per patch, which leaves the loads waiting on memory.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/common.h"

namespace hpm::cpu {
namespace {

// Geometry of an (N, C, H, W) image tensor cut into p x p patches, strides in elements.
struct Grid {
  int64_t p, C, rows, cols, P;
  int64_t sn, sc, sh, sw;
  Grid(const at::Tensor& img, int64_t p_)
      : p(p_),
        C(img.size(1)),
        rows(img.size(2) / p_),
        cols(img.size(3) / p_),
        P(p_ * p_ * img.size(1)),
        sn(img.stride(0)),
        sc(img.stride(1)),
        sh(img.stride(2)),
        sw(img.stride(3)) {}
};

// The patches each sample takes, grouped by patch row: for sample n, order[n K + t] (t = 0..K-1)
// lists k by ascending ids[n, k] (ties: ascending k), and row pr holds t in
// [begin[n (rows + 1) + pr], begin[n (rows + 1) + pr + 1]). col[n K + t] is that patch's column.
struct RowPlan {
  int64_t K, rows;
  std::vector<int64_t> order, col, begin;

  // ids (N, K) contiguous; nullptr: every patch, k = l (patchify without ids).
  RowPlan(const int64_t* ids, int64_t N, int64_t K_, int64_t rows_, int64_t cols)
      : K(K_), rows(rows_), order(N * K_), col(N * K_), begin(N * (rows_ + 1)) {
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      std::vector<std::pair<int64_t, int64_t>> key(K);
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t k = 0; k < K; ++k) key[k] = {ids ? ids[n * K + k] : k, k};
        if (ids) std::sort(key.begin(), key.end());
        int64_t* b = begin.data() + n * (rows + 1);
        int64_t t = 0;
        for (int64_t pr = 0; pr <= rows; ++pr) {
          while (t < K && key[t].first / cols < pr) ++t;
          b[pr] = t;
        }
        for (int64_t u = 0; u < K; ++u) {
          order[n * K + u] = key[u].second;
          col[n * K + u] = key[u].first % cols;
        }
      }
    });
  }
  std::pair<int64_t, int64_t> range(int64_t n, int64_t pr) const {
    return {begin[n * (rows + 1) + pr], begin[n * (rows + 1) + pr + 1]};
  }
};

// Tasks (n, patch row) per parallel chunk: at least ~32K pixels' worth of work each.
inline int64_t row_task_grain(int64_t pixels_per_task) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(pixels_per_task, 1));
}

// Reads the m patches of patch row pr at columns col[0..m) of one sample (img_n: its origin) into
// dst(t) (P values each, MAE order: (i * p + j) * C + c), one image row at a time.
template <typename T, typename U, typename Dst>
inline void read_row_patches(const T* img_n, const Grid& g, int64_t pr, const int64_t* col, int64_t m, Dst dst) {
  const int64_t p = g.p, C = g.C, sc = g.sc, sw = g.sw;
  const T* base = img_n + pr * p * g.sh;
  if (sc == 1 && C > 1) {  // channels-last: a pixel's C values are adjacent
    for (int64_t i = 0; i < p; ++i) {
      const T* row = base + i * g.sh;
      for (int64_t t = 0; t < m; ++t) {
        const T* s = row + col[t] * p * sw;
        U* o = dst(t) + i * p * C;
        for (int64_t j = 0; j < p; ++j)
          for (int64_t c = 0; c < C; ++c) o[j * C + c] = static_cast<U>(s[j * sw + c]);
      }
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < p; ++i) {
      const T* row = base + c * sc + i * g.sh;
      for (int64_t t = 0; t < m; ++t) {
        const T* s = row + col[t] * p * sw;
        U* o = dst(t) + i * p * C + c;
        if (sw == 1) {
          for (int64_t j = 0; j < p; ++j) o[j * C] = static_cast<U>(s[j]);
        } else {
          for (int64_t j = 0; j < p; ++j) o[j * C] = static_cast<U>(s[j * sw]);
        }
      }
    }
}

// ---------------------------------------------------------------------------------------------
// patchify / unpatchify / patchify_backward

at::Tensor patchify_cpu(const at::Tensor& imgs, int64_t p, const std::optional<at::Tensor>& ids) {
  const int64_t N = imgs.size(0);
  const Grid g(imgs, p);
  const int64_t L = g.rows * g.cols, P = g.P;
  const bool gather = ids.has_value() && ids->defined();
  const int64_t K = gather ? ids->size(1) : L;
  at::Tensor out = new_output({N, K, P}, imgs.options());
  if (out.numel() == 0) return out;
  at::Tensor idx = gather ? ids->contiguous() : at::Tensor();
  const RowPlan plan(gather ? idx.const_data_ptr<int64_t>() : nullptr, N, K, g.rows, g.cols);
  HPM_DISPATCH_FLOAT(imgs.scalar_type(), "hpm_patchify_cpu", [&] {
    const scalar_t* src = imgs.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * g.rows, row_task_grain(g.C * p * imgs.size(3)), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / g.rows, pr = task % g.rows;
        const auto [t0, t1] = plan.range(n, pr);
        const int64_t* ks = plan.order.data() + n * K + t0;
        read_row_patches<scalar_t, scalar_t>(src + n * g.sn, g, pr, plan.col.data() + n * K + t0, t1 - t0,
                                             [&](int64_t t) { return dst + (n * K + ks[t]) * P; });
      }
    });
  });
  return out;
}

at::Tensor unpatchify_cpu(const at::Tensor& patches, int64_t p, int64_t H, int64_t W) {
  const int64_t N = patches.size(0), P = patches.size(2), C = P / (p * p);
  const int64_t rows = H / p, cols = W / p;
  at::Tensor out = new_output({N, C, H, W}, patches.options());
  if (out.numel() == 0) return out;
  const int64_t sn = patches.stride(0), sl = patches.stride(1), se = patches.stride(2);
  HPM_DISPATCH_FLOAT(patches.scalar_type(), "hpm_unpatchify_cpu", [&] {
    const scalar_t* src = patches.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    // Task (n, patch row): writes image rows pr p .. pr p + p - 1 of every channel, each from left
    // to right in one go (its patches, 14 x 3 KB for ViT-B, stay in cache across the C p rows).
    at::parallel_for(0, N * rows, row_task_grain(C * p * W), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / rows, pr = task % rows;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) {
            scalar_t* o = dst + ((n * C + c) * H + pr * p + i) * W;
            for (int64_t pc = 0; pc < cols; ++pc) {
              const scalar_t* in = src + n * sn + (pr * cols + pc) * sl + (i * p * C + c) * se;
              for (int64_t j = 0; j < p; ++j) o[pc * p + j] = in[j * C * se];
            }
          }
      }
    });
  });
  return out;
}

at::Tensor patchify_backward_cpu(const at::Tensor& grad, int64_t p, int64_t H, int64_t W, const std::optional<at::Tensor>& ids) {
  if (!(ids.has_value() && ids->defined())) return unpatchify_cpu(grad, p, H, W);
  const int64_t N = grad.size(0), K = grad.size(1), P = grad.size(2), C = P / (p * p);
  const int64_t rows = H / p, cols = W / p;
  at::Tensor out = new_output({N, C, H, W}, grad.options());
  if (out.numel() == 0) return out;
  at::Tensor idx = ids->contiguous();
  const RowPlan plan(idx.const_data_ptr<int64_t>(), N, K, rows, cols);
  const int64_t sn = grad.stride(0), sk = grad.stride(1), se = grad.stride(2);
  HPM_DISPATCH_FLOAT(grad.scalar_type(), "hpm_patchify_backward_cpu", [&] {
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    constexpr bool direct = std::is_same_v<scalar_t, float>;
    // Task (n, patch row): owns image rows pr p .. pr p + p - 1 of sample n (every channel), adds
    // the patches of that row in the plan's order (repeats of one id by ascending k) in float32,
    // so the result does not depend on the threads; rows no patch covers stay 0.
    at::parallel_for(0, N * rows, row_task_grain(C * p * W), [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(direct ? 0 : C * p * W);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / rows, pr = task % rows;
        // acc(c, i) -> row i of the patch row in channel c, W floats
        auto acc = [&](int64_t c, int64_t i) -> float* {
          if constexpr (direct) {
            return reinterpret_cast<float*>(dst) + ((n * C + c) * H + pr * p + i) * W;
          } else {
            return scratch.data() + (c * p + i) * W;
          }
        };
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) std::fill(acc(c, i), acc(c, i) + W, 0.0f);
        const auto [t0, t1] = plan.range(n, pr);
        for (int64_t t = t0; t < t1; ++t) {
          const scalar_t* in = src + n * sn + plan.order[n * K + t] * sk;
          const int64_t x0 = plan.col[n * K + t] * p;
          for (int64_t i = 0; i < p; ++i) {  // the patch read in order, C accumulator rows written
            const scalar_t* s = in + i * p * C * se;
            for (int64_t c = 0; c < C; ++c) {
              float* o = acc(c, i) + x0;
              for (int64_t j = 0; j < p; ++j) o[j] += static_cast<float>(s[(j * C + c) * se]);
            }
          }
        }
        if constexpr (!direct) {
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < p; ++i) {
              scalar_t* o = dst + ((n * C + c) * H + pr * p + i) * W;
              const float* a = acc(c, i);
              for (int64_t x = 0; x < W; ++x) o[x] = static_cast<scalar_t>(a[x]);
            }
        }
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// gather_tokens / gather_tokens_backward

at::Tensor gather_tokens_cpu(const at::Tensor& x, const at::Tensor& ids) {
  const int64_t N = ids.size(0), K = ids.size(1), D = x.size(2);
  at::Tensor out = new_output({N, K, D}, x.options());
  if (out.numel() == 0) return out;
  at::Tensor idx = ids.contiguous();
  const int64_t* id = idx.const_data_ptr<int64_t>();
  const int64_t sb = x.size(0) == 1 ? 0 : x.stride(0), sl = x.stride(1), sd = x.stride(2);
  HPM_DISPATCH_FLOAT(x.scalar_type(), "hpm_gather_tokens_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * K, std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* in = src + (r / K) * sb + id[r] * sl;
        scalar_t* o = dst + r * D;
        if (sd == 1) {
          std::memcpy(o, in, D * sizeof(scalar_t));
        } else {
          for (int64_t d = 0; d < D; ++d) o[d] = in[d * sd];
        }
      }
    });
  });
  return out;
}

at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad, const at::Tensor& ids, int64_t L, int64_t x_batch) {
  const int64_t N = grad.size(0), K = grad.size(1), D = grad.size(2);
  at::Tensor out = new_output({x_batch, L, D}, grad.options());
  if (out.numel() == 0) return out;
  at::Tensor idx = ids.contiguous();
  const int64_t* id = idx.const_data_ptr<int64_t>();
  const int64_t sn = grad.stride(0), sk = grad.stride(1), sd = grad.stride(2);
  // x of batch 1 was broadcast over the N samples: its gradient sums over all of them.
  const int64_t per_group = x_batch == N ? 1 : N;
  constexpr int64_t kCols = 64;  // one task: one output batch, kCols columns of D
  const int64_t chunks = (D + kCols - 1) / kCols;
  HPM_DISPATCH_FLOAT(grad.scalar_type(), "hpm_gather_tokens_backward_cpu", [&] {
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_group * K * kCols, 1));
    at::parallel_for(0, x_batch * chunks, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(L * kCols);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / chunks, d0 = (t % chunks) * kCols, w = std::min(kCols, D - d0);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t n = b * per_group; n < (b + 1) * per_group; ++n) {
          for (int64_t k = 0; k < K; ++k) {
            float* a = acc.data() + id[n * K + k] * kCols;
            const scalar_t* in = src + n * sn + k * sk + d0 * sd;
            if (sd == 1) {
              for (int64_t d = 0; d < w; ++d) a[d] += static_cast<float>(in[d]);
            } else {
              for (int64_t d = 0; d < w; ++d) a[d] += static_cast<float>(in[d * sd]);
            }
          }
        }
        for (int64_t l = 0; l < L; ++l) {
          scalar_t* o = dst + (b * L + l) * D + d0;
          const float* a = acc.data() + l * kCols;
          for (int64_t d = 0; d < w; ++d) o[d] = static_cast<scalar_t>(a[d]);
        }
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// patch_mse_loss / patch_mse_loss_backward: the target patch is rebuilt per (n, k) in a buffer of
// P floats (patchify + gather + norm-pix), never stored as an (N, K, P) tensor.

HPM_FAST_BEGIN
// ---------------------------------------------------------------------------------------------
// patch_mse_loss / patch_mse_loss_backward: the target patches are rebuilt per patch row in a
// float buffer (patchify + gather + norm-pix), never stored as an (N, K, P) tensor.

HPM_FAST_BEGIN
// Sum of (a - b)^2 (the difference and square in float32, as the reference), summed in float64.
HPM_CLONES double sum_sq_diff(const float* __restrict a, const float* __restrict b, int64_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    for (int u = 0; u < 8; ++u) {
      const float d = a[e + u] - b[e + u];
      lane[u] += static_cast<double>(d * d);
    }
  double s = 0;
  for (; e < n; ++e) {
    const float d = a[e] - b[e];
    s += static_cast<double>(d * d);
  }
  for (int u = 0; u < 8; ++u) s += lane[u];
  return s;
}

// t = (t - mean) / sqrt(var + eps) with the unbiased variance (P - 1 in the denominator); the
// moments in float64, the normalisation in float32 as the reference (mean and var rounded first).
HPM_CLONES void normalize(float* __restrict t, int64_t P, float eps) {
  const double mean = sum_f64(t, P) / static_cast<double>(P);
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= P; e += 8)
    for (int u = 0; u < 8; ++u) {
      const double d = static_cast<double>(t[e + u]) - mean;
      lane[u] += d * d;
    }
  double ss = 0;
  for (; e < P; ++e) {
    const double d = static_cast<double>(t[e]) - mean;
    ss += d * d;
  }
  for (int u = 0; u < 8; ++u) ss += lane[u];
  const float var = static_cast<float>(ss / static_cast<double>(P - 1));
  const float mean_f = static_cast<float>(mean);
  const float denom = __builtin_sqrtf(var + eps);
  for (int64_t i = 0; i < P; ++i) t[i] = (t[i] - mean_f) / denom;
}

// out = coef * (x - t), in float32.
HPM_CLONES void scaled_diff(const float* __restrict x, const float* __restrict t, float coef, int64_t n, float* __restrict out) {
  for (int64_t e = 0; e < n; ++e) out[e] = coef * (x[e] - t[e]);
}
HPM_FAST_END


// A row of pred as float: in place when it already is a contiguous float32 row, else copied to buf.
template <typename T>
inline const float* pred_row(const T* row, int64_t stride, int64_t P, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) return row;
  }
  load_float(row, stride, P, buf);
  return buf;
}

// Calls fn(r, target) for every patch r = n K + k of the batch, target being its P target values
// (float, normalised when norm_pix), built one patch row at a time by read_row_patches.
template <typename I, typename Fn>
void for_each_target(const at::Tensor& imgs, int64_t p, const at::Tensor& ids, bool norm_pix, double eps, Fn fn) {
  const int64_t N = ids.size(0), K = ids.size(1);
  const Grid g(imgs, p);
  const int64_t P = g.P;
  at::Tensor idx = ids.contiguous();
  const RowPlan plan(idx.const_data_ptr<int64_t>(), N, K, g.rows, g.cols);
  const I* img = imgs.const_data_ptr<I>();
  const float eps_f = static_cast<float>(eps);
  at::parallel_for(0, N * g.rows, row_task_grain(g.C * p * imgs.size(3)), [&](int64_t begin, int64_t end) {
    std::vector<float> target;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.rows, pr = task % g.rows;
      const auto [t0, t1] = plan.range(n, pr);
      if (t1 == t0) continue;
      target.resize((t1 - t0) * P);
      read_row_patches<I, float>(img + n * g.sn, g, pr, plan.col.data() + n * K + t0, t1 - t0,
                                 [&](int64_t t) { return target.data() + t * P; });
      for (int64_t t = 0; t < t1 - t0; ++t) {
        float* tg = target.data() + t * P;
        if (norm_pix) normalize(tg, P, eps_f);
        fn(n * K + plan.order[n * K + t0 + t], static_cast<const float*>(tg));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> patch_mse_loss_cpu(
    const at::Tensor& pred, const at::Tensor& imgs, int64_t p, const at::Tensor& ids, bool norm_pix, double eps) {
  const int64_t N = pred.size(0), K = pred.size(1), P = pred.size(2);
  const auto f32 = pred.options().dtype(at::kFloat);
  at::Tensor loss = new_output({}, f32);
  at::Tensor per_patch = new_output({N, K}, f32);
  float* pp = per_patch.mutable_data_ptr<float>();
  const int64_t sn = pred.stride(0), sk = pred.stride(1), se = pred.stride(2);
  HPM_DISPATCH_FLOAT(imgs.scalar_type(), "hpm_patch_mse_loss_cpu", [&] {
    using img_t = scalar_t;
    HPM_DISPATCH_FLOAT(pred.scalar_type(), "hpm_patch_mse_loss_cpu", [&] {
      const scalar_t* pr = pred.const_data_ptr<scalar_t>();
      for_each_target<img_t>(imgs, p, ids, norm_pix, eps, [&](int64_t r, const float* target) {
        thread_local std::vector<float> x;
        x.resize(P);
        const float* xr = pred_row(pr + (r / K) * sn + (r % K) * sk, se, P, x.data());
        pp[r] = static_cast<float>(sum_sq_diff(xr, target, P) / static_cast<double>(P));
      });
    });
  });
  // The batch mean, summed in a fixed order after the parallel part: deterministic.
  double total = 0;
  for (int64_t r = 0; r < N * K; ++r) total += pp[r];
  *loss.mutable_data_ptr<float>() = static_cast<float>(total / static_cast<double>(std::max<int64_t>(N * K, 1)));
  return {loss, per_patch};
}

at::Tensor patch_mse_loss_backward_cpu(
    const at::Tensor& grad_loss,
    const at::Tensor& grad_per_patch,
    const at::Tensor& pred,
    const at::Tensor& imgs,
    int64_t p,
    const at::Tensor& ids,
    bool norm_pix,
    double eps) {
  const int64_t N = pred.size(0), K = pred.size(1), P = pred.size(2);
  at::Tensor out = new_output(pred.sizes(), pred.options());
  if (out.numel() == 0) return out;
  // As the reference, in float32: coef = (grad_per_patch + grad_loss / (N K)) * (2 / P).
  const float g_loss = grad_loss.item().toFloat() / static_cast<float>(std::max<int64_t>(N * K, 1));
  const float two_over_p = static_cast<float>(2.0 / static_cast<double>(P));
  at::Tensor gpp = grad_per_patch.to(at::kFloat).contiguous();
  const float* gp = gpp.const_data_ptr<float>();
  const int64_t sn = pred.stride(0), sk = pred.stride(1), se = pred.stride(2);
  HPM_DISPATCH_FLOAT(imgs.scalar_type(), "hpm_patch_mse_loss_backward_cpu", [&] {
    using img_t = scalar_t;
    HPM_DISPATCH_FLOAT(pred.scalar_type(), "hpm_patch_mse_loss_backward_cpu", [&] {
      const scalar_t* pr = pred.const_data_ptr<scalar_t>();
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      for_each_target<img_t>(imgs, p, ids, norm_pix, eps, [&](int64_t r, const float* target) {
        thread_local std::vector<float> x, g;
        x.resize(P);
        const float* xr = pred_row(pr + (r / K) * sn + (r % K) * sk, se, P, x.data());
        const float coef = (gp[r] + g_loss) * two_over_p;
        scalar_t* o = dst + r * P;
        if constexpr (std::is_same_v<scalar_t, float>) {
          scaled_diff(xr, target, coef, P, reinterpret_cast<float*>(o));
        } else {
          g.resize(P);
          scaled_diff(xr, target, coef, P, g.data());
          for (int64_t e = 0; e < P; ++e) o[e] = static_cast<scalar_t>(g[e]);
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hpm_C, CPU, m) {
  m.impl("patchify", &patchify_cpu);
  m.impl("unpatchify", &unpatchify_cpu);
  m.impl("patchify_backward", &patchify_backward_cpu);
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cpu);
  m.impl("patch_mse_loss", &patch_mse_loss_cpu);
  m.impl("patch_mse_loss_backward", &patch_mse_loss_backward_cpu);
}

}  // namespace hpm::cpu
