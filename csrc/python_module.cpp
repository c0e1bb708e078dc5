// Makes the extension importable as `dynrcnn._C`, so that `import dynrcnn._C` loads the
// shared library and runs the TORCH_LIBRARY registrations. Only setup.py builds this file;
// the CMake library (for libtorch users) has no Python dependency.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "dynrcnn fused operators (see torch.ops.dynrcnn)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}
