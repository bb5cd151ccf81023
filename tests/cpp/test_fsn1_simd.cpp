// C++ tests of the FSN1 float32 math (csrc/fsn1.h polynomials) and its SIMD twins (csrc/cpu/step_*.cpp):
//   1. accuracy: r = sqrt(-2 ln u) over all 2^24 u, the (cos, sin) part over all 2^24 v, and 10^7 random words
//      through the selected SIMD level, against float64 libm; prints the measured maxima;
//   2. every SIMD level this CPU has gives bit-identical normals and Philox words (including partial groups).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cpu/step_cpu.h"
#include "expect.h"
#include "fsn1.h"

namespace {

using fastsde_test::g_failures;

using fastsde::fsn1::fsn1_box_muller;

// Units in the last place of a float32 near |x| (at least the smallest normal's).
double ulp32(double x) {
  const float f = float(std::fabs(x));
  return std::fmax(double(std::nextafter(f, INFINITY)) - double(f), 1.17549435e-38);
}

void test_radius_all_u() {
  double worst_rel = 0.0, worst_ulp = 0.0;
  for (uint32_t k = 0; k < (1u << 24); ++k) {
    float z0, z1;
    fsn1_box_muller(k << 8, 0u, z0, z1);  // v = 0: z0 = r exactly as computed
    const double u = (double(k) + 1.0) * 0x1p-24;
    const double r = std::sqrt(-2.0 * std::log(u));
    if (r == 0.0) {
      EXPECT(z0 == 0.0f, "u = 1: r = %g", double(z0));
      continue;
    }
    worst_rel = std::fmax(worst_rel, std::fabs(double(z0) - r) / r);
    worst_ulp = std::fmax(worst_ulp, std::fabs(double(z0) - r) / ulp32(r));
  }
  std::printf("r = sqrt(-2 ln u), all 2^24 u: max relative error %.3g, max %.2f ulp\n", worst_rel, worst_ulp);
  EXPECT(worst_ulp <= 2.0, "r: %.2f ulp", worst_ulp);
}

void test_angle_all_v() {
  // u word with r ~ 1.18 (u = 1/2); z / r isolates cos and sin (plus the final product's rounding).
  const uint32_t wu = ((1u << 23) - 1u) << 8;
  float r32, unused;
  fsn1_box_muller(wu, 0u, r32, unused);
  double worst_ulp = 0.0;
  for (uint32_t k = 0; k < (1u << 24); ++k) {
    float z0, z1;
    fsn1_box_muller(wu, k << 8, z0, z1);
    const double angle = 2.0 * M_PI * (double(k) * 0x1p-24);
    const double c = double(r32) * std::cos(angle), s = double(r32) * std::sin(angle);
    worst_ulp = std::fmax(worst_ulp, std::fabs(double(z0) - c) / ulp32(r32));
    worst_ulp = std::fmax(worst_ulp, std::fabs(double(z1) - s) / ulp32(r32));
  }
  std::printf("r (cos, sin)(2 pi v), all 2^24 v: max error %.2f ulp of r\n", worst_ulp);
  EXPECT(worst_ulp <= 2.0, "angle: %.2f ulp of r", worst_ulp);
}

void test_random_pairs() {
  // 10^7 normals (2.5 10^6 Philox blocks) through the selected SIMD level, against float64 libm.
  const int64_t numel = 10000000;
  const int64_t id = 12345;
  std::vector<float> z(numel);
  fastsde::simd_kernels().fsn1_fill_f32(z.data(), 0x0123456789abcdefull, uint32_t(id), 7, 0, numel);
  double worst_abs = 0.0, worst_ulp = 0.0;
  for (int64_t blk = 0; blk * 4 < numel; ++blk) {
    const fastsde::fsn1::Double4 ref = fastsde::fsn1::fsn1_normals4_f64(
        fastsde::fsn1::fsn1_block(0x0123456789abcdefull, uint32_t(id), 7, uint32_t(blk)));
    for (int t = 0; t < 4; ++t) {
      const double err = std::fabs(double(z[blk * 4 + t]) - ref.z[t]);
      worst_abs = std::fmax(worst_abs, err);
      worst_ulp = std::fmax(worst_ulp, err / ulp32(ref.z[t]));
    }
  }
  std::printf("10^7 random normals (%s): max abs error %.3g, max %.2f ulp\n",
              fastsde::simd_level_name(fastsde::simd_level()), worst_abs, worst_ulp);
  EXPECT(worst_abs <= 2e-6, "abs error %.3g", worst_abs);
  EXPECT(worst_ulp <= 4.0, "%.2f ulp", worst_ulp);
}

void test_levels_identical() {
  using fastsde::SimdLevel;
  const SimdLevel levels[3] = {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512};
  const fastsde::SimdKernels* kernels[3] = {&fastsde::simd_kernels_scalar(), &fastsde::simd_kernels_avx2(),
                                            &fastsde::simd_kernels_avx512()};
  const int64_t numel = 3 * 8192 + 101;  // several groups of every width + a partial group + a partial block
  const uint64_t seed = ~uint64_t(0), draw = (uint64_t(1) << 32) + 5;
  const uint32_t n = (1u << 31) + 3;
  std::vector<float> want(numel);
  std::vector<uint32_t> want_bits(numel + 3);
  kernels[0]->fsn1_fill_f32(want.data(), seed, n, draw, 0, numel);
  kernels[0]->fsn1_bits(want_bits.data(), seed, n, draw, 0, (numel + 3) / 4);
  for (int64_t j = 0; j < numel; j += 37)
    EXPECT(want[j] == fastsde::fsn1::fsn1_normal_at<float>(seed, n, draw, uint64_t(j)), "scalar kernel j=%lld",
           (long long)j);
  for (int i = 1; i < 3; ++i) {
    if (!fastsde::simd_level_supported(levels[i])) {
      std::printf("level %s: not supported by this CPU, skipped\n", fastsde::simd_level_name(levels[i]));
      continue;
    }
    // Chunk-like ranges: [0, 8192), [8192, numel).
    std::vector<float> got(numel, NAN);
    std::vector<uint32_t> bits(numel + 3, 0);
    kernels[i]->fsn1_fill_f32(got.data(), seed, n, draw, 0, 8192);
    kernels[i]->fsn1_fill_f32(got.data(), seed, n, draw, 8192, numel);
    kernels[i]->fsn1_bits(bits.data(), seed, n, draw, 0, (numel + 3) / 4);
    EXPECT(std::memcmp(got.data(), want.data(), sizeof(float) * numel) == 0, "level %s normals differ",
           fastsde::simd_level_name(levels[i]));
    EXPECT(bits == want_bits, "level %s Philox words differ", fastsde::simd_level_name(levels[i]));
    std::printf("level %s: bit-identical to scalar\n", fastsde::simd_level_name(levels[i]));
  }
}

// Short rows (lanes across samples): fsn1_flat_f32 of every level equals fsn1_normal_at, bit for bit, for row
// widths around the block (4) and group sizes, a tile boundary and a row range that starts inside the batch.
void test_flat_rows() {
  using fastsde::SimdLevel;
  const SimdLevel levels[3] = {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512};
  const fastsde::SimdKernels* kernels[3] = {&fastsde::simd_kernels_scalar(), &fastsde::simd_kernels_avx2(),
                                            &fastsde::simd_kernels_avx512()};
  const uint64_t seed = 0x0123456789abcdefull, draw = (uint64_t(1) << 32) + 9;
  const int64_t batch = 700;  // > one tile of short rows
  std::vector<int64_t> ids(batch);
  for (int64_t b = 0; b < batch; ++b) ids[b] = (b * 2654435761ll) & 0xffffffffll;
  for (int64_t numel : {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128}) {
    std::vector<float> want(batch * numel);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < numel; ++j)
        want[b * numel + j] = fastsde::fsn1::fsn1_normal_at<float>(seed, uint32_t(ids[b]), draw, uint64_t(j));
    for (int i = 0; i < 3; ++i) {
      if (!fastsde::simd_level_supported(levels[i])) continue;
      std::vector<float> got(batch * numel, NAN);
      kernels[i]->fsn1_flat_f32(got.data(), numel, seed, ids.data(), draw, 0, 3);
      kernels[i]->fsn1_flat_f32(got.data(), numel, seed, ids.data(), draw, 3, batch);
      EXPECT(std::memcmp(got.data(), want.data(), sizeof(float) * got.size()) == 0, "level %s numel %lld differs",
             fastsde::simd_level_name(levels[i]), (long long)numel);
    }
  }
  std::printf("flat (short-row) normals: bit-identical on every level\n");
}

}  // namespace

int main() {
  test_radius_all_u();
  test_angle_all_v();
  test_random_pairs();
  test_levels_identical();
  test_flat_rows();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("fsn1_simd: OK\n");
  return 0;
}
