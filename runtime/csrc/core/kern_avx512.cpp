// The binary-conv kernels compiled for the avx512 ISA (flags set per file in CMakeLists.txt).
#define SBNN_KERNEL_AVX512
#include "core/kernels_impl.inc"

namespace sbnn {

const KernelTable& kernels_avx512() {
  static const KernelTable table = {
      "avx512",         sparse_prep,  sparse_accum, sparse_accum8, window_sum,   affine_epilogue,
      affine_epilogue8, dense_pack,  dense_im2col, dense_gemm,    dense_epilogue,
      post_plane,       kGemmMR,      kGemmVL,       sgemm,
      affine_epilogue_post, affine_epilogue8_post, sparse_accum8_wrap,
      sparse_accum_wrap};
  return table;
}

}  // namespace sbnn
