// The binary-conv kernels compiled for the scalar ISA (flags set per file in CMakeLists.txt).

#include "core/kernels_impl.inc"

namespace sbnn {

const KernelTable& kernels_scalar() {
  static const KernelTable table = {
      "scalar",         sparse_prep,  sparse_accum, sparse_accum8, window_sum,   affine_epilogue,
      affine_epilogue8, dense_pack,  dense_im2col, dense_gemm,    dense_epilogue,
      post_plane,       kGemmMR,      kGemmVL,       sgemm,
      affine_epilogue_post, affine_epilogue8_post, sparse_accum8_wrap,
      sparse_accum_wrap};
  return table;
}

}  // namespace sbnn
