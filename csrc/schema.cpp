// The hpm_C operator schemas, defined once. Kernels register per device in
// cpu/*.cpp (TORCH_LIBRARY_IMPL(hpm_C, CPU, ...)) and cuda/*.cu (TORCH_LIBRARY_IMPL(hpm_C, CUDA, ...)).
// The public ops (torch.ops.hpm.*, autograd, fake kernels) live in Python and call these as the
// "cpu" and "cuda" backends; every hpm_C op takes already-validated inputs.
#include <Python.h>
#include <torch/library.h>

// `import hpm_kernels._C` loads this library, which registers the ops below; the module itself is empty.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hpm_C, m) {
  m.def("patchify(Tensor imgs, int p, Tensor? ids) -> Tensor");
  m.def("patchify_backward(Tensor grad, int p, int H, int W, Tensor? ids) -> Tensor");
  m.def("unpatchify(Tensor patches, int p, int H, int W) -> Tensor");
  m.def("patch_mse_loss(Tensor pred, Tensor imgs, int p, Tensor ids, bool norm_pix, float eps) -> (Tensor, Tensor)");
  m.def(
      "patch_mse_loss_backward(Tensor grad_loss, Tensor grad_per_patch, Tensor pred, Tensor imgs, int p, Tensor ids, "
      "bool norm_pix, float eps) -> Tensor");
  m.def("select_patches(Tensor scores, Tensor noise, int len_keep, int num_hard) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gather_tokens(Tensor x, Tensor ids) -> Tensor");
  m.def("gather_tokens_backward(Tensor grad, Tensor ids, int L, int x_batch) -> Tensor");
  m.def("pairwise_ranking_loss(Tensor pred, Tensor target, float eps) -> Tensor");
  m.def("pairwise_ranking_loss_backward(Tensor grad, Tensor pred, Tensor target, float eps) -> Tensor");
  m.def(
      "resized_crop(Tensor images, Tensor index, Tensor boxes, Tensor flip, int out_h, int out_w, float[] mean, "
      "float[] std, bool bicubic) -> Tensor");
  // Debug hook for tests: 0 off; 1 / 2 fill every output the CPU kernels allocate before they write
  // it (floats NaN; int64 INT64_MAX / INT64_MIN; bools true / false), so unwritten elements show.
  m.def("_set_poison(int mode) -> ()");
}
