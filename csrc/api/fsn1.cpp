// The FSN1 noise ops: fsn1_normal_ (normal draws) and fsn1_bits_ (debug: the Philox words of the CPU SIMD path).
#include "api/common.h"
#include "cpu/fsn1_cpu.h"
#include "cpu/step_cpu.h"  // fsn1_bits_cpu

#ifdef FASTSDE_WITH_CUDA
#include "cuda/fsn1_cuda.h"
#endif

TORCH_LIBRARY_FRAGMENT(fastsde, m) {
  // out[b, j] = FSN1(seed, sample_ids[b], draw, j); seed and draw are uint64 passed as their int64 bits.
  m.def("fsn1_normal_(Tensor(a!) out, int seed, Tensor sample_ids, int draw) -> ()");
  // Debug: out (B, blocks, 4) int32 = the FSN1 Philox words of the CPU SIMD path (CPU only).
  m.def("fsn1_bits_(Tensor(a!) out, int seed, Tensor sample_ids, int draw) -> ()");
}

namespace fastsde {
namespace api {
namespace {

void check_fsn1_normal_args(const at::Tensor& out, const at::Tensor& sample_ids) {
  TORCH_CHECK(out.dim() == 2, "fsn1_normal_: out must be 2-D (batch, numel), got shape ", out.sizes());
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "fsn1_normal_: out must be float32 or float64, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "fsn1_normal_: out must be contiguous, got strides ", out.strides());
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong, "fsn1_normal_: sample_ids must be int64, got ",
              sample_ids.scalar_type());
  TORCH_CHECK(sample_ids.dim() == 1 && sample_ids.size(0) == out.size(0),
              "fsn1_normal_: sample_ids must have shape (", out.size(0), ",) (the batch size of out), got ",
              sample_ids.sizes());
  TORCH_CHECK(sample_ids.device() == out.device(), "fsn1_normal_: sample_ids must be on ", out.device(),
              " (the device of out), got ", sample_ids.device());
  TORCH_CHECK(out.size(1) <= kMaxElementsPerSample, "fsn1_normal_: at most 2^34 elements per sample, got ",
              out.size(1));
}

void fsn1_normal_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  check_fsn1_normal_args(out, sample_ids);
  if (checks_only(out) || out.numel() == 0) return;
  const DeviceScope scope(out.device());
  const at::Tensor ids = sample_ids.contiguous();
  check_id_values("fsn1_normal_", ids);
  Fsn1NormalArgs args;
  args.dtype = to_dtype(out.scalar_type());
  args.batch = out.size(0);
  args.numel = out.size(1);
  args.out = out.data_ptr();
  args.seed = as_u64(seed);
  args.draw = as_u64(draw);
  args.sample_ids = ids.data_ptr<int64_t>();
  FASTSDE_LAUNCH(out, fsn1_normal_cpu(args), fsn1_normal_cuda(args, current_stream()));
}

void fsn1_bits_op(const at::Tensor& out, int64_t seed, const at::Tensor& sample_ids, int64_t draw) {
  TORCH_CHECK(out.dim() == 3 && out.size(2) == 4, "fsn1_bits_: out must be (batch, blocks, 4), got shape ",
              out.sizes());
  TORCH_CHECK(out.scalar_type() == at::kInt, "fsn1_bits_: out must be int32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "fsn1_bits_: out must be contiguous");
  TORCH_CHECK(out.size(1) <= (int64_t(1) << 32), "fsn1_bits_: at most 2^32 blocks, got ", out.size(1));
  check_ids("fsn1_bits_", sample_ids, out);
  if (checks_only(out) || out.numel() == 0) return;
  const at::Tensor ids = sample_ids.contiguous();
  check_id_values("fsn1_bits_", ids);
  fsn1_bits_cpu(reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), out.size(0), out.size(1), as_u64(seed),
                ids.data_ptr<int64_t>(), as_u64(draw));
}

}  // namespace
}  // namespace api
}  // namespace fastsde

FASTSDE_IMPL("fsn1_normal_", &fastsde::api::fsn1_normal_op)
TORCH_LIBRARY_IMPL(fastsde, CPU, m) { m.impl("fsn1_bits_", &fastsde::api::fsn1_bits_op); }
TORCH_LIBRARY_IMPL(fastsde, Meta, m) { m.impl("fsn1_bits_", &fastsde::api::fsn1_bits_op); }
