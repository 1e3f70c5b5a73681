// Op signatures, declared once; csrc/cpu and csrc/cuda register the implementations.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import apib_kernels._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(apib, m) {
  m.def("kernel_row_means(Tensor x, int kernel, float gamma) -> Tensor");
  m.def(
      "centered_gram(Tensor x, int kernel, float gamma, int row_start, int row_stop, Tensor? row_means) "
      "-> Tensor");
  m.def("lasso_cd(Tensor Q, Tensor b, Tensor alpha, Tensor coef0, float n_rows, bool positive, float tol, int max_iter, bool newton) -> (Tensor, Tensor, Tensor)");
}
