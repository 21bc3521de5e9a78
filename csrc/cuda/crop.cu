// CUDA kernel of hpm_C::resized_crop: crop + resize (bicubic a = -0.75 or bilinear, align_corners =
// False, borders clamped to the crop, as torch.nn.functional.interpolate) + horizontal flip +
// per-channel normalisation, the math of the CPU kernel in csrc/cpu/rows.cpp (float32 throughout).
// Its own file: it adds 16 s to the 2-core build (measured; nvcc files compile two at a time).
//
// One thread per output element (grid-stride loop over N*C*Ho*Wo, x fastest so that a warp writes
// consecutive floats); each thread computes its own taps from its box (a few flops, no tables) and
// reads the 16 (4) source pixels through the image's strides (uint8, float32, bfloat16, float16).
// mean and std ride in a small float32 device tensor (2C values).
#include "common.cuh"

namespace hpm_cuda {
namespace {

// ATen's cubic convolution coefficients (UpSample.h, A = -0.75).
__device__ __forceinline__ void cubic_coefficients(float t, float w[4]) {
  constexpr float A = -0.75f;
  const float x0 = t + 1.0f, x1 = t, x2 = 1.0f - t, x3 = x2 + 1.0f;
  w[0] = ((A * x0 - 5 * A) * x0 + 8 * A) * x0 - 4 * A;
  w[1] = ((A + 2) * x1 - (A + 3)) * x1 * x1 + 1;
  w[2] = ((A + 2) * x2 - (A + 3)) * x2 * x2 + 1;
  w[3] = ((A * x3 - 5 * A) * x3 + 8 * A) * x3 - 4 * A;
}

// Source indices in [0, in) and weights of output position o of a 1-D resize in -> out.
__device__ __forceinline__ void resize_taps(int64_t o, int64_t in, int64_t out, bool bicubic, int64_t idx[4],
                                            float w[4]) {
  const float scale = __fdiv_rn(static_cast<float>(in), static_cast<float>(out));
  float real = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
  if (bicubic) {
    const float fl = floorf(real);
    const int64_t i0 = static_cast<int64_t>(fl);
    cubic_coefficients(real - fl, w);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 - 1 + k;
      idx[k] = i < 0 ? 0 : (i > in - 1 ? in - 1 : i);
    }
  } else {
    real = real < 0.0f ? 0.0f : real;
    const int64_t fl = static_cast<int64_t>(floorf(real));
    const int64_t i0 = fl < in - 1 ? fl : in - 1;
    const float lambda = fminf(fmaxf(real - static_cast<float>(i0), 0.0f), 1.0f);
    idx[0] = i0;
    idx[1] = i0 + (i0 < in - 1 ? 1 : 0);
    idx[2] = idx[3] = i0;
    w[0] = 1.0f - lambda;
    w[1] = lambda;
    w[2] = w[3] = 0.0f;
  }
}

struct CropGeom {
  int64_t N, C, Ho, Wo;
  int64_t sn, sc, sh, sw;  // image strides
  int64_t s_idx, s_b0, s_b1, s_fl;  // index, boxes, flip strides
};

template <typename T, bool kBicubic>
__global__ void resized_crop_kernel(const T* __restrict__ img, const int64_t* __restrict__ index,
                                    const int64_t* __restrict__ boxes, const bool* __restrict__ flip,
                                    const float* __restrict__ stats, float* __restrict__ out, CropGeom g) {
  constexpr int kTaps = kBicubic ? 4 : 2;
  const int64_t total = g.N * g.C * g.Ho * g.Wo;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = e % g.Wo;
    int64_t t = e / g.Wo;
    const int64_t y = t % g.Ho;
    t /= g.Ho;
    const int64_t c = t % g.C;
    const int64_t n = t / g.C;
    const int64_t* b = boxes + n * g.s_b0;
    const int64_t top = b[0], left = b[g.s_b1], h = b[2 * g.s_b1], w = b[3 * g.s_b1];
    const int64_t xs = flip[n * g.s_fl] ? g.Wo - 1 - x : x;
    int64_t iy[4], ix[4];
    float wy[4], wx[4];
    resize_taps(y, h, g.Ho, kBicubic, iy, wy);
    resize_taps(xs, w, g.Wo, kBicubic, ix, wx);
    const T* plane = img + index[n * g.s_idx] * g.sn + c * g.sc + top * g.sh + left * g.sw;
    float acc = 0.0f;
#pragma unroll
    for (int ky = 0; ky < kTaps; ++ky) {
      const T* row = plane + iy[ky] * g.sh;
      float r = 0.0f;
#pragma unroll
      for (int kx = 0; kx < kTaps; ++kx) r += static_cast<float>(row[ix[kx] * g.sw]) * wx[kx];
      acc += r * wy[ky];
    }
    if constexpr (std::is_same_v<T, uint8_t>) acc = fminf(fmaxf(acc, 0.0f), 255.0f) / 255.0f;
    out[e] = (acc - stats[c]) / stats[g.C + c];
  }
}

at::Tensor resized_crop_cuda(const at::Tensor& images, const at::Tensor& index, const at::Tensor& boxes,
                             const at::Tensor& flip, int64_t out_h, int64_t out_w, at::ArrayRef<double> mean,
                             at::ArrayRef<double> stdev, bool bicubic) {
  check_cuda(images, "images");
  check_cuda(index, "index");
  check_cuda(boxes, "boxes");
  check_cuda(flip, "flip");
  check_dim(images, 4, "images", "(B, C, H, W)");
  check_same_device(images, index, "images", "index");
  check_same_device(images, boxes, "images", "boxes");
  check_same_device(images, flip, "images", "flip");
  const int64_t N = boxes.size(0), C = images.size(1);
  TORCH_CHECK(index.scalar_type() == at::kLong && boxes.scalar_type() == at::kLong && flip.scalar_type() == at::kBool,
              "hpm_C (CUDA): `index` and `boxes` must be int64, `flip` bool");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && index.dim() == 1 && index.size(0) == N && flip.dim() == 1 &&
                  flip.size(0) == N,
              "hpm_C (CUDA): `boxes` must be (N, 4), `index` and `flip` (N,)");
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == C && static_cast<int64_t>(stdev.size()) == C,
              "hpm_C (CUDA): `mean` and `std` must have C values");
  const c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = new_output({N, C, out_h, out_w}, at::kFloat, images.device());
  if (out.numel() == 0) return out;
  at::Tensor host = at::empty({2 * C}, at::TensorOptions().dtype(at::kFloat));
  float* h = host.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    h[c] = static_cast<float>(mean[c]);
    h[C + c] = static_cast<float>(stdev[c]);
  }
  const at::Tensor stats = host.to(images.device());
  const CropGeom g{N,
                   C,
                   out_h,
                   out_w,
                   images.stride(0),
                   images.stride(1),
                   images.stride(2),
                   images.stride(3),
                   index.stride(0),
                   boxes.stride(0),
                   boxes.stride(1),
                   flip.stride(0)};
  constexpr int kThreads = 256;
  const int64_t blocks = grid_stride_blocks(out.numel(), kThreads);
  auto launch = [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = bicubic ? resized_crop_kernel<T, true> : resized_crop_kernel<T, false>;
    kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        images.const_data_ptr<T>(), index.const_data_ptr<int64_t>(), boxes.const_data_ptr<int64_t>(),
        flip.const_data_ptr<bool>(), stats.const_data_ptr<float>(), out.mutable_data_ptr<float>(), g);
  };
  AT_DISPATCH_SWITCH(images.scalar_type(), "hpm_resized_crop_cuda",
                     AT_DISPATCH_CASE(at::kByte, [&] { launch(Type<scalar_t>{}); })
                         AT_DISPATCH_CASE(at::kFloat, [&] { launch(Type<scalar_t>{}); })
                             AT_DISPATCH_CASE(at::kHalf, [&] { launch(Type<scalar_t>{}); })
                                 AT_DISPATCH_CASE(at::kBFloat16, [&] { launch(Type<scalar_t>{}); }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace hpm_cuda

TORCH_LIBRARY_IMPL(hpm_C, CUDA, m) { m.impl("resized_crop", &hpm_cuda::resized_crop_cuda); }
