// CPU kernels of the row-wise ops: select_patches, pairwise_ranking_loss (+ backward) and
// resized_crop (a task per output image row), one at::parallel_for task per row; plus the debug op
// hpm_C::_set_poison.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu/common.h"

namespace hpm::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// select_patches

// An order-preserving map of a (non-NaN) float to uint32: a < b as floats <=> key(a) < key(b).
// -0.0 is folded onto +0.0 first, so the two compare equal (ties go by index), as in the reference.
inline uint32_t ordered_bits(float x) {
  if (x == 0.0f) x = 0.0f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The k-th largest (1 <= k <= m) of keys[0..m): radix select, one byte per pass from the top;
// after each pass only the keys in the chosen bin move on (into buf, m elements), so the later
// passes see few keys. No sort. Four histograms, so that runs of keys in one bin (the exponent
// byte of similar floats) do not serialise on one counter.
uint32_t kth_largest(const uint32_t* keys, int64_t m, int64_t k, uint32_t* buf) {
  const uint32_t* src = keys;
  uint32_t prefix = 0;
  for (int shift = 24;; shift -= 8) {
    int32_t hist[4][256] = {};
    uint32_t top = 0;  // the largest byte present: the walk down the bins starts there
    int64_t i = 0;
    for (; i + 4 <= m; i += 4)
      for (int u = 0; u < 4; ++u) {
        const uint32_t byte = (src[i + u] >> shift) & 255u;
        ++hist[u][byte];
        top = byte > top ? byte : top;
      }
    for (; i < m; ++i) {
      const uint32_t byte = (src[i] >> shift) & 255u;
      ++hist[0][byte];
      top = byte > top ? byte : top;
    }
    uint32_t d = top;
    for (;; --d) {  // stops: the keys in the bins walked number >= k
      const int32_t count = hist[0][d] + hist[1][d] + hist[2][d] + hist[3][d];
      if (count >= k) break;
      k -= count;
    }
    prefix |= d << shift;
    if (shift == 0) return prefix;
    int64_t c = 0;
    for (i = 0; i < m; ++i) {
      const uint32_t x = src[i];
      buf[c] = x;
      c += ((x >> shift) & 255u) == d;
    }
    src = buf;
    m = c;
  }
}

// flag[i] = 1 for the k largest of keys[0..m) (ties: lower position first), else 0. buf: m scratch.
void mark_top_k(const uint32_t* keys, int64_t m, int64_t k, uint8_t* flag, uint32_t* buf) {
  if (k == 0) {
    std::fill(flag, flag + m, uint8_t{0});
    return;
  }
  const uint32_t t = kth_largest(keys, m, k, buf);
  int64_t above = 0;
  for (int64_t i = 0; i < m; ++i) above += keys[i] > t;
  const int64_t tie_quota = k - above;  // of the keys equal to t, the first tie_quota are taken
  int64_t ties = 0;
  for (int64_t i = 0; i < m; ++i) {
    const bool tie = keys[i] == t;
    flag[i] = (keys[i] > t) | (tie & (ties < tie_quota));
    ties += tie;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_patches_cpu(
    const at::Tensor& scores, const at::Tensor& noise, int64_t len_keep, int64_t num_hard) {
  const int64_t N = scores.size(0), L = scores.size(1), num_mask = L - len_keep;
  TORCH_CHECK(
      0 <= len_keep && len_keep <= L && 0 <= num_hard && num_hard <= num_mask,
      "select_patches: need 0 <= len_keep <= L and 0 <= num_hard <= L - len_keep, got L = ", L,
      ", len_keep = ", len_keep, ", num_hard = ", num_hard);
  TORCH_CHECK(L < (int64_t{1} << 31), "select_patches: rows longer than 2^31 - 1 are not supported");
  const auto i64 = scores.options().dtype(at::kLong);
  at::Tensor ids_keep = new_output({N, len_keep}, i64);
  at::Tensor ids_mask = new_output({N, num_mask}, i64);
  at::Tensor ids_restore = new_output({N, L}, i64);
  at::Tensor mask = new_output({N, L}, scores.options().dtype(at::kBool));
  if (N == 0 || L == 0) return {ids_keep, ids_mask, ids_restore, mask};
  RowReader::check(scores, "select_patches: scores");
  RowReader::check(noise, "select_patches: noise");
  const RowReader score_rows(scores), noise_rows(noise);
  int64_t* keep = ids_keep.mutable_data_ptr<int64_t>();
  int64_t* masked = ids_mask.mutable_data_ptr<int64_t>();
  int64_t* restore = ids_restore.mutable_data_ptr<int64_t>();
  bool* is_masked = mask.mutable_data_ptr<bool>();

  // A row is a few microseconds of work: split into tasks of >= ~8k elements (ViT-B rows: 41).
  at::parallel_for(0, N, std::max<int64_t>(1, (int64_t{1} << 13) / L), [&](int64_t begin, int64_t end) {
    std::vector<float> s(L), z(L);
    std::vector<uint32_t> key(L), buf(L);  // rank keys: larger = chosen first
    std::vector<int64_t> lane(L);  // the lane of each key in the second (kept) pass
    std::vector<uint8_t> state(L), chosen(L);  // state: 0 free, 1 hard, 2 kept
    for (int64_t n = begin; n < end; ++n) {
      score_rows.load(n, L, s.data());
      noise_rows.load(n, L, z.data());
      // Hard set: the num_hard highest scores (NaN ranks as -inf), lower index first on ties.
      for (int64_t l = 0; l < L; ++l) key[l] = ordered_bits(std::isnan(s[l]) ? -INFINITY : s[l]);
      mark_top_k(key.data(), L, num_hard, state.data(), buf.data());
      // Kept: of the others, the len_keep smallest noises (NaN ranks as +inf), lower index first
      // (the free lanes are packed in index order, so a lower position is a lower index).
      int64_t m = 0;
      for (int64_t l = 0; l < L; ++l) {
        key[m] = ~ordered_bits(std::isnan(z[l]) ? INFINITY : z[l]);
        lane[m] = l;
        m += state[l] == 0;
      }
      mark_top_k(key.data(), m, len_keep, chosen.data(), buf.data());
      for (int64_t i = 0; i < m; ++i) state[lane[i]] = chosen[i] ? 2 : 0;
      // Compaction in raster order: both id lists ascending, ids_restore their inverse.
      // Branch-free (the kept/masked pattern is random, a branch would mispredict half the time).
      int64_t a = 0, b = 0;
      int64_t* const keep_row = keep + n * len_keep;
      int64_t* const masked_row = masked + n * num_mask;
      for (int64_t l = 0; l < L; ++l) {
        const bool kept = state[l] == 2;
        *(kept ? keep_row + a : masked_row + b) = l;
        restore[n * L + l] = kept ? a : len_keep + b;
        a += kept;
        b += !kept;
        is_masked[n * L + l] = !kept;
      }
    }
  });
  return {ids_keep, ids_mask, ids_restore, mask};
}

// ---------------------------------------------------------------------------------------------
// pairwise_ranking_loss
//
// A row's non-NaN targets are sorted ascending; the entries with a strictly smaller target than
// sorted position k are then the prefix [0, start[k]) (start[k]: first position of k's tie group).
// An unordered pair (a above b) stands for the two ordered pairs (b, a) and (a, b) of the formula,
// which give the same term -log(sigmoid(s_a - s_b) + eps) (the second as -log(sigmoid(-d) + eps)
// with d = s_b - s_a, and -(s_b - s_a) == s_a - s_b exactly), so each unordered pair is evaluated
// once, branch-free over a contiguous prefix, and counted twice. No M x M buffer.

struct SortedRow {
  std::vector<float> pred, target;  // the row as loaded
  std::vector<float> s;  // pred of sorted position k
  std::vector<int64_t> order, start;  // element at sorted position k; first position of its tie group
  int64_t m = 0;  // entries with a non-NaN target
  explicit SortedRow(int64_t M) : pred(M), target(M), s(M), order(M), start(M) {}

  void load(const RowReader& pred_rows, const RowReader& target_rows, int64_t n) {
    const int64_t M = static_cast<int64_t>(s.size());
    pred_rows.load(n, M, pred.data());
    target_rows.load(n, M, target.data());
    m = 0;
    for (int64_t i = 0; i < M; ++i)
      if (!std::isnan(target[i])) order[m++] = i;
    const float* t = target.data();
    std::sort(order.begin(), order.begin() + m, [t](int64_t a, int64_t b) { return t[a] < t[b] || (t[a] == t[b] && a < b); });
    for (int64_t k = 0; k < m; ++k) {
      s[k] = pred[order[k]];
      start[k] = (k > 0 && t[order[k]] == t[order[k - 1]]) ? start[k - 1] : k;
    }
  }
  // Unordered non-tied pairs of the row.
  int64_t pairs() const {
    int64_t c = 0;
    for (int64_t k = 0; k < m; ++k) c += start[k];
    return c;
  }
};

// Rows per task: about M^2 / 2 pairs a row; small problems stay on the calling thread.
inline int64_t row_grain(int64_t M) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(M * M / 2, 1)); }

HPM_FAST_BEGIN
// out[b] = -log(sigmoid(sk - s[b]) + eps): one pair's term, for every b of a prefix.
HPM_CLONES void pair_terms(const float* __restrict s, int64_t n, float sk, float eps, float* __restrict out) {
  for (int64_t b = 0; b < n; ++b) {
    float sig, sig_neg;
    sigmoid_pair(sk - s[b], sig, sig_neg);
    out[b] = -log_nonneg(sig + eps);
  }
}

// out[b] = G(sk - s[b]), G(x) = sigmoid(x) sigmoid(-x) / (sigmoid(x) + eps) = -d term / dx.
HPM_CLONES void pair_slopes(const float* __restrict s, int64_t n, float sk, float eps, float* __restrict out) {
  for (int64_t b = 0; b < n; ++b) {
    float sig, sig_neg;
    sigmoid_pair(sk - s[b], sig, sig_neg);
    out[b] = sig * sig_neg / (sig + eps);
  }
}

// g[b] += x[b] in float64.
HPM_CLONES void add_to(double* __restrict g, const float* __restrict x, int64_t n) {
  for (int64_t b = 0; b < n; ++b) g[b] += static_cast<double>(x[b]);
}
HPM_FAST_END

at::Tensor ranking_loss_cpu(const at::Tensor& pred, const at::Tensor& target, double eps) {
  const int64_t N = pred.size(0), M = pred.size(1);
  at::Tensor out = new_output({}, pred.options().dtype(at::kFloat));
  const float eps_f = static_cast<float>(eps);
  std::vector<double> row_sum(N, 0.0);
  std::vector<int64_t> row_pairs(N, 0);
  RowReader::check(pred, "pairwise_ranking_loss: pred");
  RowReader::check(target, "pairwise_ranking_loss: target");
  const RowReader pred_rows(pred), target_rows(target);
  at::parallel_for(0, N, row_grain(M), [&](int64_t begin, int64_t end) {
    SortedRow row(M);
    std::vector<float> tmp(M);
    for (int64_t n = begin; n < end; ++n) {
      row.load(pred_rows, target_rows, n);
      double sum = 0.0;
      for (int64_t k = 0; k < row.m; ++k) {
        pair_terms(row.s.data(), row.start[k], row.s[k], eps_f, tmp.data());
        sum += sum_f64(tmp.data(), row.start[k]);
      }
      row_sum[n] = sum;
      row_pairs[n] = row.pairs();
    }
  });
  // Rows combined in a fixed order: deterministic whatever the threads. Each unordered pair is
  // two ordered pairs with equal terms, so sum / pairs is the reference's (2 sum) / (2 pairs).
  double total = 0.0;
  int64_t pairs = 0;
  for (int64_t n = 0; n < N; ++n) {
    total += row_sum[n];
    pairs += row_pairs[n];
  }
  *out.mutable_data_ptr<float>() = static_cast<float>(pairs > 0 ? total / static_cast<double>(pairs) : 0.0);
  return out;
}

at::Tensor ranking_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target, double eps) {
  const int64_t N = pred.size(0), M = pred.size(1);
  at::Tensor out = new_output({N, M}, pred.options());
  if (out.numel() == 0) return out;
  const float eps_f = static_cast<float>(eps);
  // Unscaled d loss / d s per element (the pair count of the whole batch is known only at the end).
  std::vector<float> d(N * M);
  std::vector<int64_t> row_pairs(N, 0);
  RowReader::check(pred, "pairwise_ranking_loss: pred");
  RowReader::check(target, "pairwise_ranking_loss: target");
  const RowReader pred_rows(pred), target_rows(target);
  at::parallel_for(0, N, row_grain(M), [&](int64_t begin, int64_t end) {
    SortedRow row(M);
    std::vector<float> tmp(M);
    std::vector<double> g(M);
    for (int64_t n = begin; n < end; ++n) {
      row.load(pred_rows, target_rows, n);
      std::fill(g.begin(), g.end(), 0.0);
      // Pair (a above b), x = s_a - s_b: both ordered pairs give d/dx = -G and d/ds_b = +G, with
      // G = sigmoid(x) sigmoid(-x) / (sigmoid(x) + eps); the factor 2 is applied below.
      for (int64_t k = 0; k < row.m; ++k) {
        pair_slopes(row.s.data(), row.start[k], row.s[k], eps_f, tmp.data());
        g[k] -= sum_f64(tmp.data(), row.start[k]);
        add_to(g.data(), tmp.data(), row.start[k]);
      }
      float* dn = d.data() + n * M;
      std::fill(dn, dn + M, 0.0f);  // NaN targets take part in no pair
      for (int64_t k = 0; k < row.m; ++k) dn[row.order[k]] = static_cast<float>(2.0 * g[k]);
      row_pairs[n] = row.pairs();
    }
  });
  int64_t pairs = 0;
  for (int64_t n = 0; n < N; ++n) pairs += row_pairs[n];
  // As the reference: d_s * (grad / ordered pairs), in float32.
  const float scale = grad.item().toFloat() / static_cast<float>(std::max<int64_t>(2 * pairs, 1));
  HPM_DISPATCH_FLOAT(pred.scalar_type(), "hpm_ranking_loss_backward_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) o[e] = static_cast<scalar_t>(d[e] * scale);
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// resized_crop (in this file rather than its own: a separate .cpp measured +33 s on the 2-core
// build, most of it the ATen headers every file parses again; this file compiles alongside the
// slowest one, patches.cpp).
//
// hpm_C::resized_crop: crop + resize (bicubic a = -0.75 or bilinear, align_corners =
// False, borders clamped to the crop, as torch.nn.functional.interpolate) + horizontal flip +
// per-channel normalisation, for a batch of boxes over images read in place through their strides
// (uint8, float32, bfloat16 or float16; an image is chosen per output by `index`).
//
// Per output image n the taps are computed once: for each output column the source columns (crop
// offset and clamping included, flip applied) and their weights, for each output row the source
// rows and weights, in float32 with the arithmetic of ATen's upsample kernels. Tasks are output
// rows (n, c, y): each interpolates its source rows horizontally and combines them vertically
// (the order of ATen's kernels), all in float32.
//
// The image dtypes of resized_crop: uint8 and the float dtypes of HPM_DISPATCH_FLOAT.
#define HPM_DISPATCH_IMAGE(TYPE, NAME, ...)                                                          \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kByte, __VA_ARGS__) AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)                            \
                                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

// ATen's cubic convolution coefficients (UpSample.h: get_cubic_upsample_coefficients, A = -0.75).
inline void cubic_coefficients(float t, float w[4]) {
  constexpr float A = -0.75f;
  auto conv1 = [](float x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  auto conv2 = [](float x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  w[0] = conv2(t + 1.0f);
  w[1] = conv1(t);
  const float x2 = 1.0f - t;
  w[2] = conv1(x2);
  w[3] = conv2(x2 + 1.0f);
}

// Source indices (in [0, in)) and weights of the `taps` (4 bicubic, 2 bilinear) samples of output
// position o of a 1-D resize in -> out, align_corners = False (ATen's area_pixel_compute_source_index).
inline void resize_taps(int64_t o, int64_t in, int64_t out, bool bicubic, int64_t* idx, float* w) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  float real = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
  if (bicubic) {
    const float fl = std::floor(real);
    const int64_t i0 = static_cast<int64_t>(fl);
    cubic_coefficients(real - fl, w);
    for (int k = 0; k < 4; ++k) idx[k] = std::min(std::max<int64_t>(i0 - 1 + k, 0), in - 1);
  } else {
    real = real < 0.0f ? 0.0f : real;
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
    const float lambda = std::min(std::max(real - static_cast<float>(i0), 0.0f), 1.0f);
    idx[0] = i0;
    idx[1] = i0 + (i0 < in - 1 ? 1 : 0);
    w[0] = 1.0f - lambda;
    w[1] = lambda;
  }
}

template <typename T>
void resized_crop_impl(const at::Tensor& images, const int64_t* src, const int64_t* box, const bool* flip,
                       int64_t N, int64_t Ho, int64_t Wo, const std::vector<float>& mean,
                       const std::vector<float>& stdev, bool bicubic, float* out) {
  const int64_t C = images.size(1);
  const int64_t sn = images.stride(0), sc = images.stride(1), sh = images.stride(2), sw = images.stride(3);
  const int taps = bicubic ? 4 : 2;
  // Taps per output image: columns as element offsets (x * sw) into a source row, rows as offsets (y * sh).
  std::vector<int64_t> col_off(N * Wo * 4), row_off(N * Ho * 4);
  std::vector<float> col_w(N * Wo * 4), row_w(N * Ho * 4);
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    int64_t idx[4];
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t top = box[n * 4], left = box[n * 4 + 1], h = box[n * 4 + 2], w = box[n * 4 + 3];
      for (int64_t x = 0; x < Wo; ++x) {
        const int64_t xs = flip[n] ? Wo - 1 - x : x;
        resize_taps(xs, w, Wo, bicubic, idx, col_w.data() + (n * Wo + x) * 4);
        for (int k = 0; k < taps; ++k) col_off[(n * Wo + x) * 4 + k] = (left + idx[k]) * sw;
      }
      for (int64_t y = 0; y < Ho; ++y) {
        resize_taps(y, h, Ho, bicubic, idx, row_w.data() + (n * Ho + y) * 4);
        for (int k = 0; k < taps; ++k) row_off[(n * Ho + y) * 4 + k] = (top + idx[k]) * sh;
      }
    }
  });
  constexpr bool is_uint8 = std::is_same_v<T, uint8_t>;
  const T* img = images.const_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(Wo * taps * taps, 1));
  at::parallel_for(0, N * C * Ho, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(Wo), acc(Wo);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % Ho, c = (task / Ho) % C, n = task / (Ho * C);
      const T* plane = img + src[n] * sn + c * sc;
      const int64_t* co = col_off.data() + n * Wo * 4;
      const float* cw = col_w.data() + n * Wo * 4;
      for (int ky = 0; ky < taps; ++ky) {
        const T* s = plane + row_off[(n * Ho + y) * 4 + ky];
        const float wy = row_w[(n * Ho + y) * 4 + ky];
        if (bicubic) {
          for (int64_t x = 0; x < Wo; ++x) {
            const int64_t* o = co + x * 4;
            const float* w = cw + x * 4;
            row[x] = static_cast<float>(s[o[0]]) * w[0] + static_cast<float>(s[o[1]]) * w[1] +
                     static_cast<float>(s[o[2]]) * w[2] + static_cast<float>(s[o[3]]) * w[3];
          }
        } else {
          for (int64_t x = 0; x < Wo; ++x) {
            const int64_t* o = co + x * 4;
            const float* w = cw + x * 4;
            row[x] = w[0] * static_cast<float>(s[o[0]]) + w[1] * static_cast<float>(s[o[1]]);
          }
        }
        if (ky == 0) {
          for (int64_t x = 0; x < Wo; ++x) acc[x] = row[x] * wy;
        } else {
          for (int64_t x = 0; x < Wo; ++x) acc[x] += row[x] * wy;
        }
      }
      float* o = out + ((n * C + c) * Ho + y) * Wo;
      const float m = mean[c], sd = stdev[c];
      for (int64_t x = 0; x < Wo; ++x) {
        float v = acc[x];
        if constexpr (is_uint8) v = std::min(std::max(v, 0.0f), 255.0f) / 255.0f;
        o[x] = (v - m) / sd;
      }
    }
  });
}

at::Tensor resized_crop_cpu(const at::Tensor& images, const at::Tensor& index, const at::Tensor& boxes,
                            const at::Tensor& flip, int64_t out_h, int64_t out_w, at::ArrayRef<double> mean,
                            at::ArrayRef<double> stdev, bool bicubic) {
  TORCH_CHECK(images.dim() == 4, "resized_crop: `images` must be (B, C, H, W)");
  TORCH_CHECK(index.scalar_type() == at::kLong && boxes.scalar_type() == at::kLong && flip.scalar_type() == at::kBool,
              "resized_crop: `index` and `boxes` must be int64, `flip` bool");
  const int64_t N = boxes.size(0), C = images.size(1);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && index.numel() == N && flip.numel() == N,
              "resized_crop: `boxes` must be (N, 4), `index` and `flip` (N,)");
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == C && static_cast<int64_t>(stdev.size()) == C,
              "resized_crop: `mean` and `std` must have C values");
  at::Tensor out = new_output({N, C, out_h, out_w}, images.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const at::Tensor idx = index.contiguous(), bx = boxes.contiguous(), fl = flip.contiguous();
  const std::vector<float> m(mean.begin(), mean.end()), s(stdev.begin(), stdev.end());
  HPM_DISPATCH_IMAGE(images.scalar_type(), "hpm_resized_crop_cpu", [&] {
    resized_crop_impl<scalar_t>(images, idx.const_data_ptr<int64_t>(), bx.const_data_ptr<int64_t>(),
                                fl.const_data_ptr<bool>(), N, out_h, out_w, m, s, bicubic, out.mutable_data_ptr<float>());
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Debug hook: poison every output the CPU kernels allocate from now on (see common.h).

void set_poison(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "hpm_C::_set_poison: mode must be 0 (off), 1 or 2, got ", mode);
  poison_mode().store(static_cast<int>(mode), std::memory_order_relaxed);
}

}  // namespace

TORCH_LIBRARY_IMPL(hpm_C, CPU, m) {
  m.impl("select_patches", &select_patches_cpu);
  m.impl("pairwise_ranking_loss", &ranking_loss_cpu);
  m.impl("pairwise_ranking_loss_backward", &ranking_loss_backward_cpu);
  m.impl("resized_crop", &resized_crop_cpu);
}

// No tensor argument: the dispatcher routes the call to the CompositeExplicitAutograd kernel.
TORCH_LIBRARY_IMPL(hpm_C, CompositeExplicitAutograd, m) { m.impl("_set_poison", &set_poison); }

}  // namespace hpm::cpu
