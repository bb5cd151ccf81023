// C++ tests of the torch-free CPU kernels other than FSN1's math: the sampler step (affine_step, step_sq_norms, FSN1
// noise fill) and GroupNorm (NCHW, channels-last, emb_add, SiLU, the float32 overflow path; and its backward),
// called directly
//   1. through every SIMD level this CPU has (the per-level kernel tables), on sizes that hit full vectors, partial
//      vectors and the short-row (flat) path, against float64 references computed here;
//   2. through the public entry points at 1, 2 and 3 OpenMP threads on problems large enough to go parallel: the
//      results must be bit-identical for every thread count.
// Built plain (ctest) and with -fsanitize=address,undefined (FASTSDE_SANITIZE=ON, scripts/test.sh), so every kernel
// runs under ASan/UBSan at every SIMD level and thread count.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cpu/groupnorm_cpu.h"
#include "cpu/step_cpu.h"
#include "expect.h"

namespace {

using fastsde_test::g_failures;
using namespace fastsde;

// A deterministic pseudo-random float in [-1, 1) (not FSN1: inputs only).
float rnd(uint64_t& s) {
  s = s * 6364136223846793005ULL + 1442695040888963407ULL;
  return float(int32_t(s >> 32)) * 0x1p-31f;
}

std::vector<float> random_vec(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& e : v) e = rnd(seed) * scale;
  return v;
}

struct Level {
  SimdLevel level;
  const SimdKernels& step;
  const GroupNormKernels& gn;
  const GroupNormBwdKernels& gn_bwd;
};

std::vector<Level> levels() {
  std::vector<Level> out;
  if (simd_level_supported(SimdLevel::kScalar))
    out.push_back({SimdLevel::kScalar, simd_kernels_scalar(), group_norm_kernels_scalar(),
                   group_norm_bwd_kernels_scalar()});
  if (simd_level_supported(SimdLevel::kAvx2))
    out.push_back({SimdLevel::kAvx2, simd_kernels_avx2(), group_norm_kernels_avx2(),
                   group_norm_bwd_kernels_avx2()});
  if (simd_level_supported(SimdLevel::kAvx512))
    out.push_back({SimdLevel::kAvx512, simd_kernels_avx512(), group_norm_kernels_avx512(),
                   group_norm_bwd_kernels_avx512()});
  return out;
}

// ------------------------------------------------------------------------------------------------- step
struct StepCase {
  int64_t batch, numel;
  std::vector<float> x, score, out, x_mean;
  std::vector<double> a, b, c;
  std::vector<int64_t> ids;
  AffineStepArgs args;
};

StepCase make_step(int64_t batch, int64_t numel, uint64_t seed) {
  StepCase s;
  s.batch = batch;
  s.numel = numel;
  s.x = random_vec(size_t(batch * numel), seed);
  s.score = random_vec(size_t(batch * numel), seed + 1);
  s.out.assign(size_t(batch * numel), NAN);
  s.x_mean.assign(size_t(batch * numel), NAN);
  for (int64_t r = 0; r < batch; ++r) {
    s.a.push_back(0.9 + 0.01 * double(r));
    s.b.push_back(-0.5 + 0.1 * double(r));
    s.c.push_back(0.3);
    s.ids.push_back(7 * r + 1);
  }
  std::memset(&s.args, 0, sizeof(s.args));
  AffineStepArgs& A = s.args;
  A.dtype = Dtype::kFloat32;
  A.batch = batch;
  A.numel = numel;
  A.out = s.out.data();
  A.x = s.x.data();
  A.score = s.score.data();
  A.x_mean = s.x_mean.data();
  A.a = s.a.data();
  A.b = s.b.data();
  A.c = s.c.data();
  A.a_len = A.b_len = batch;
  A.c_len = 1;
  A.seed = 0x123456789abcdefULL;
  A.draw = 3;
  A.sample_ids = s.ids.data();
  return s;
}

// FSN1 normals (batch, numel) of (seed, ids, draw) from the scalar level (the levels agree bit for bit:
// tests/cpp/test_fsn1_simd.cpp).
std::vector<float> fsn1_rows(int64_t batch, int64_t numel, uint64_t seed, const int64_t* ids, uint64_t draw) {
  std::vector<float> z(size_t(batch * numel));
  for (int64_t r = 0; r < batch; ++r)
    simd_kernels_scalar().fsn1_fill_f32(z.data() + r * numel, seed, uint32_t(ids[r]), draw, 0, numel);
  return z;
}

// x' = a x + b s + c z with z the FSN1 normals of (seed, id, draw): checked in float64 within float32 rounding.
void check_step_against_reference(const StepCase& s, const char* what) {
  const std::vector<float> z = fsn1_rows(s.batch, s.numel, s.args.seed, s.ids.data(), s.args.draw);
  for (int64_t r = 0; r < s.batch; ++r)
    for (int64_t j = 0; j < s.numel; ++j) {
      const size_t i = size_t(r * s.numel + j);
      const double mean = s.a[r] * s.x[i] + s.b[r] * s.score[i];
      const double want = mean + s.c[0] * z[i];
      EXPECT(std::fabs(s.out[i] - want) <= 1e-6 * (1 + std::fabs(want)), "%s: out[%lld, %lld] = %.9g, want %.9g",
             what, (long long)r, (long long)j, double(s.out[i]), want);
      EXPECT(std::fabs(s.x_mean[i] - mean) <= 1e-6 * (1 + std::fabs(mean)), "%s: x_mean[%lld, %lld] = %.9g, want %.9g",
             what, (long long)r, (long long)j, double(s.x_mean[i]), mean);
    }
}

void test_step_levels() {
  const int64_t sizes[][2] = {{1, 1}, {3, 7}, {2, 17}, {5, 128}, {2, 129}, {3, 1000}, {1, 8193}};
  for (const Level& L : levels()) {
    for (const auto& sz : sizes) {
      StepCase s = make_step(sz[0], sz[1], 11);
      char what[96];
      std::snprintf(what, sizeof what, "affine %s %lldx%lld", simd_level_name(L.level), (long long)sz[0],
                    (long long)sz[1]);
      if (sz[1] <= kStepFlatMaxNumel) {
        L.step.affine_flat(s.args, 0, s.batch);
        std::vector<float> flat(size_t(s.batch * s.numel));
        L.step.fsn1_flat_f32(flat.data(), s.numel, s.args.seed, s.ids.data(), s.args.draw, 0, s.batch);
        const std::vector<float> rows = fsn1_rows(s.batch, s.numel, s.args.seed, s.ids.data(), s.args.draw);
        EXPECT(flat == rows, "%s: flat FSN1 fill differs from the row fill", what);
      } else {
        for (int64_t r = 0; r < s.batch; ++r) L.step.affine(s.args, r, 0, s.numel);
      }
      check_step_against_reference(s, what);
      // the row kernel on short rows too (it must agree with the flat one)
      StepCase t = make_step(sz[0], sz[1], 11);
      for (int64_t r = 0; r < t.batch; ++r) L.step.affine(t.args, r, 0, t.numel);
      EXPECT(std::memcmp(t.out.data(), s.out.data(), s.out.size() * sizeof(float)) == 0,
             "%s: row and flat kernels differ", what);

      // step_sq_norms: sum of score^2 and of z^2 per row
      SqNormsArgs N;
      std::memset(&N, 0, sizeof N);
      N.dtype = Dtype::kFloat32;
      N.batch = s.batch;
      N.numel = s.numel;
      N.score = s.score.data();
      N.seed = s.args.seed;
      N.draw = s.args.draw;
      N.sample_ids = s.ids.data();
      std::vector<double> got(size_t(2 * s.batch), NAN);
      if (sz[1] <= kStepFlatMaxNumel) {
        L.step.sq_norms_flat(N, 0, s.batch, got.data());
      } else {
        for (int64_t r = 0; r < s.batch; ++r) {
          double part[2] = {0.0, 0.0};
          L.step.sq_norms(N, r, 0, s.numel, part);
          got[size_t(2 * r)] = part[0];
          got[size_t(2 * r + 1)] = part[1];
        }
      }
      const std::vector<float> z = fsn1_rows(s.batch, s.numel, s.args.seed, s.ids.data(), s.args.draw);
      for (int64_t r = 0; r < s.batch; ++r) {
        double ss = 0.0, zz = 0.0;
        for (int64_t j = 0; j < s.numel; ++j) {
          ss += double(s.score[size_t(r * s.numel + j)]) * s.score[size_t(r * s.numel + j)];
          zz += double(z[size_t(r * s.numel + j)]) * z[size_t(r * s.numel + j)];
        }
        EXPECT(std::fabs(got[size_t(2 * r)] - ss) <= 1e-5 * (1 + ss), "%s: ||score||^2 %.9g vs %.9g", what,
               got[size_t(2 * r)], ss);
        EXPECT(std::fabs(got[size_t(2 * r + 1)] - zz) <= 1e-5 * (1 + zz), "%s: ||z||^2 %.9g vs %.9g", what,
               got[size_t(2 * r + 1)], zz);
      }
    }
  }
}

void test_step_threads() {
  std::vector<float> first;
  std::vector<uint32_t> first_noise;
  std::vector<double> first_norms;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    StepCase s = make_step(4, 20011, 5);  // 80k elements: parallel, chunks with a tail
    affine_step_cpu(s.args);
    SqNormsArgs N;
    std::memset(&N, 0, sizeof N);
    N.dtype = Dtype::kFloat32;
    N.batch = s.batch;
    N.numel = s.numel;
    N.score = s.score.data();
    N.seed = 9;
    N.sample_ids = s.ids.data();
    std::vector<double> norms(size_t(2 * s.batch));
    step_sq_norms_cpu(N, norms.data());
    std::vector<uint32_t> noise(size_t(s.batch * 4 * 5003));  // Philox words, chunked over threads
    fsn1_bits_cpu(noise.data(), s.batch, 5003, 1, s.ids.data(), 2);
    if (threads == 1) {
      check_step_against_reference(s, "affine_step_cpu");
      first = s.out;
      first_norms = norms;
      first_noise = noise;
    } else {
      EXPECT(std::memcmp(first.data(), s.out.data(), first.size() * sizeof(float)) == 0,
             "affine_step_cpu: %d threads differ from 1", threads);
      EXPECT(first_norms == norms, "step_sq_norms_cpu: %d threads differ from 1", threads);
      EXPECT(first_noise == noise, "fsn1_bits_cpu: %d threads differ from 1", threads);
    }
  }
  omp_set_num_threads(1);
}

// ------------------------------------------------------------------------------------------------- group norm
struct GnCase {
  int64_t N, C, HW, G;
  bool channels_last;
  std::vector<float> x, y, w, b, emb;
  GroupNormArgs args;
};

GnCase make_gn(int64_t N, int64_t C, int64_t HW, int64_t G, bool cl, bool emb, int act, float scale) {
  GnCase g;
  g.N = N;
  g.C = C;
  g.HW = HW;
  g.G = G;
  g.channels_last = cl;
  g.x = random_vec(size_t(N * C * HW), 3, scale);
  g.y.assign(g.x.size(), NAN);
  g.w = random_vec(size_t(C), 4);
  g.b = random_vec(size_t(C), 5);
  if (emb) g.emb = random_vec(size_t(N * C), 6, scale);
  std::memset(&g.args, 0, sizeof g.args);
  GroupNormArgs& A = g.args;
  A.dtype = Dtype::kFloat32;
  A.N = N;
  A.C = C;
  A.HW = HW;
  A.groups = G;
  A.channels_last = cl;
  A.x = g.x.data();
  A.y = g.y.data();
  A.weight = g.w.data();
  A.bias = g.b.data();
  A.emb_add = emb ? g.emb.data() : nullptr;
  A.eps = 1e-6;
  A.act = act;
  return g;
}

// float64 reference of act((GN(x + emb) w + b)).
void check_gn(const GnCase& g, const char* what) {
  const int64_t cpg = g.C / g.G;
  auto at = [&](int64_t n, int64_t c, int64_t p) {
    return size_t(g.channels_last ? (n * g.HW + p) * g.C + c : (n * g.C + c) * g.HW + p);
  };
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t grp = 0; grp < g.G; ++grp) {
      double sum = 0.0, sq = 0.0;
      const double count = double(cpg * g.HW);
      auto val = [&](int64_t c, int64_t p) {
        return double(g.x[at(n, c, p)]) + (g.emb.empty() ? 0.0 : double(g.emb[size_t(n * g.C + c)]));
      };
      for (int64_t c = grp * cpg; c < (grp + 1) * cpg; ++c)
        for (int64_t p = 0; p < g.HW; ++p) sum += val(c, p);
      const double mean = sum / count;
      for (int64_t c = grp * cpg; c < (grp + 1) * cpg; ++c)
        for (int64_t p = 0; p < g.HW; ++p) sq += (val(c, p) - mean) * (val(c, p) - mean);
      const double rstd = 1.0 / std::sqrt(sq / count + g.args.eps);
      for (int64_t c = grp * cpg; c < (grp + 1) * cpg; ++c)
        for (int64_t p = 0; p < g.HW; ++p) {
          double want = (val(c, p) - mean) * rstd * g.w[size_t(c)] + g.b[size_t(c)];
          if (g.args.act == 1) want = want / (1.0 + std::exp(-want));
          const double got = g.y[at(n, c, p)];
          EXPECT(std::isfinite(got) && std::fabs(got - want) <= 2e-5 * (1 + std::fabs(want)),
                 "%s: y[%lld, %lld, %lld] = %.9g, want %.9g", what, (long long)n, (long long)c, (long long)p, got,
                 want);
        }
    }
}

void test_gn_levels() {
  // (N, C, HW, G): one group, channel tails, rows shorter than a vector, odd sizes
  const int64_t shapes[][4] = {{1, 4, 1, 1}, {2, 6, 7, 3}, {2, 32, 16, 8}, {1, 40, 33, 4}, {3, 17, 5, 1}};
  for (const Level& L : levels())
    for (const auto& sh : shapes)
      for (bool cl : {false, true})
        for (bool emb : {false, true})
          for (int act : {0, 1})
            for (float scale : {1.0f, 1e19f, 1e30f}) {  // 1e19, 1e30: the float32 overflow path
              GnCase g = make_gn(sh[0], sh[1], sh[2], sh[3], cl, emb, act, scale);
              for (int64_t n = 0; n < g.N; ++n) {
                if (cl)
                  L.gn.nhwc(g.args, n);
                else
                  for (int64_t grp = 0; grp < g.G; ++grp) L.gn.nchw(g.args, n, grp);
              }
              char what[128];
              std::snprintf(what, sizeof what, "group_norm %s N%lld C%lld HW%lld G%lld %s emb%d act%d x%g",
                            simd_level_name(L.level), (long long)sh[0], (long long)sh[1], (long long)sh[2],
                            (long long)sh[3], cl ? "nhwc" : "nchw", int(emb), act, double(scale));
              check_gn(g, what);
            }
}

void test_gn_threads() {
  for (bool cl : {false, true}) {
    std::vector<float> first;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      GnCase g = make_gn(4, 64, 400, 8, cl, true, 1, 1.0f);  // 102k elements: parallel
      group_norm_cpu(g.args);
      if (threads == 1) {
        check_gn(g, cl ? "group_norm_cpu nhwc" : "group_norm_cpu nchw");
        first = g.y;
      } else {
        EXPECT(std::memcmp(first.data(), g.y.data(), first.size() * sizeof(float)) == 0,
               "group_norm_cpu %s: %d threads differ from 1", cl ? "nhwc" : "nchw", threads);
      }
    }
  }
  omp_set_num_threads(1);
}

// ---- group norm backward: every level (and 1-3 threads, bit-identical) against the float64 backward of the same
// inputs (csrc/cpu/groupnorm_backward.cpp, itself gradchecked from Python).
struct GnBwdCase {
  GnCase g;
  std::vector<float> dy, dx;
  std::vector<double> sums;
  GroupNormBwdArgs args;
};

GnBwdCase make_gn_bwd(int64_t N, int64_t C, int64_t HW, int64_t G, bool cl, bool emb, int act) {
  GnBwdCase b;
  b.g = make_gn(N, C, HW, G, cl, emb, act, 1.0f);
  b.dy = random_vec(b.g.x.size(), 7);
  b.dx.assign(b.g.x.size(), NAN);
  b.sums.assign(size_t(3 * N * C), NAN);
  b.args.fwd = b.g.args;
  b.args.dy = b.dy.data();
  b.args.dx = b.dx.data();
  b.args.sums = b.sums.data();
  return b;
}

void check_gn_bwd(const GnBwdCase& b, const char* what) {
  const GnCase& g = b.g;
  auto d64 = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  std::vector<double> x = d64(g.x), w = d64(g.w), bias = d64(g.b), emb = d64(g.emb), dy = d64(b.dy);
  std::vector<double> dx(x.size()), sums(b.sums.size());
  GroupNormBwdArgs A = b.args;
  A.fwd.dtype = Dtype::kFloat64;
  A.fwd.x = x.data();
  A.fwd.weight = w.data();
  A.fwd.bias = bias.data();
  A.fwd.emb_add = g.emb.empty() ? nullptr : emb.data();
  A.dy = dy.data();
  A.dx = dx.data();
  A.sums = sums.data();
  group_norm_backward_cpu(A);
  auto scale_of = [](const std::vector<double>& v) {
    double m = 1.0;
    for (double e : v) m = std::fmax(m, std::fabs(e));
    return m;
  };
  const double sx = scale_of(dx), ss = scale_of(sums);
  for (size_t i = 0; i < dx.size(); ++i)
    EXPECT(std::fabs(double(b.dx[i]) - dx[i]) <= 2e-5 * sx, "%s: dx[%zu] = %.9g, want %.9g", what, i,
           double(b.dx[i]), dx[i]);
  for (size_t i = 0; i < sums.size(); ++i)
    EXPECT(std::fabs(b.sums[i] - sums[i]) <= 2e-5 * ss, "%s: sums[%zu] = %.9g, want %.9g", what, i, b.sums[i],
           sums[i]);
}

void test_gn_bwd_levels() {
  const int64_t shapes[][4] = {{1, 4, 1, 1}, {2, 6, 7, 3}, {2, 32, 16, 8}, {1, 40, 33, 4}, {3, 17, 5, 1}};
  for (const Level& L : levels())
    for (const auto& sh : shapes)
      for (bool cl : {false, true})
        for (bool emb : {false, true})
          for (int act : {0, 1}) {
            GnBwdCase b = make_gn_bwd(sh[0], sh[1], sh[2], sh[3], cl, emb, act);
            const GroupNormBwdKernels& k = L.gn_bwd;
            for (int64_t n = 0; n < sh[0]; ++n) {
              if (cl)
                k.nhwc(b.args, n);
              else
                for (int64_t grp = 0; grp < sh[3]; ++grp) k.nchw(b.args, n, grp);
            }
            char what[128];
            std::snprintf(what, sizeof what, "group_norm_backward %s N%lld C%lld HW%lld G%lld %s emb%d act%d",
                          simd_level_name(L.level), (long long)sh[0], (long long)sh[1], (long long)sh[2],
                          (long long)sh[3], cl ? "nhwc" : "nchw", int(emb), act);
            check_gn_bwd(b, what);
          }
}

void test_gn_bwd_threads() {
  for (bool cl : {false, true}) {
    std::vector<float> first;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      GnBwdCase b = make_gn_bwd(4, 64, 400, 8, cl, true, 1);  // 102k elements: parallel
      group_norm_backward_cpu(b.args);
      if (threads == 1) {
        check_gn_bwd(b, cl ? "group_norm_backward_cpu nhwc" : "group_norm_backward_cpu nchw");
        first = b.dx;
      } else {
        EXPECT(std::memcmp(first.data(), b.dx.data(), first.size() * sizeof(float)) == 0,
               "group_norm_backward_cpu %s: %d threads differ from 1", cl ? "nhwc" : "nchw", threads);
      }
    }
  }
  omp_set_num_threads(1);
}

}  // namespace

// The solvers' combine: x' = a x + b s + b2 s2 + b3 s3 + c z in one pass (score2/score3, b2 per sample, b3
// broadcast), every level, flat and chunked rows, against float64.
void test_combine_levels() {
  const int64_t sizes[][2] = {{3, 7}, {5, 128}, {2, 129}, {3, 1000}};
  for (const Level& L : levels()) {
    for (int outputs = 2; outputs <= 3; ++outputs) {
      for (const auto& sz : sizes) {
        StepCase s = make_step(sz[0], sz[1], 23);
        const std::vector<float> s2 = random_vec(size_t(s.batch * s.numel), 31), s3 = random_vec(size_t(s.batch * s.numel), 37);
        std::vector<double> b2, b3 = {0.25};
        for (int64_t r = 0; r < s.batch; ++r) b2.push_back(0.2 - 0.05 * double(r));
        s.args.x_mean = nullptr;
        s.args.score2 = s2.data();
        s.args.b2 = b2.data();
        s.args.b2_len = s.batch;
        if (outputs == 3) {
          s.args.score3 = s3.data();
          s.args.b3 = b3.data();
          s.args.b3_len = 1;
        }
        if (sz[1] <= kStepFlatMaxNumel)
          L.step.affine_flat(s.args, 0, s.batch);
        else
          for (int64_t r = 0; r < s.batch; ++r) L.step.affine(s.args, r, 0, s.numel);
        const std::vector<float> z = fsn1_rows(s.batch, s.numel, s.args.seed, s.ids.data(), s.args.draw);
        for (int64_t r = 0; r < s.batch; ++r)
          for (int64_t j = 0; j < s.numel; ++j) {
            const size_t i = size_t(r * s.numel + j);
            double want = s.a[r] * s.x[i] + s.b[r] * s.score[i] + b2[r] * s2[i] + s.c[0] * z[i];
            if (outputs == 3) want += b3[0] * s3[i];
            EXPECT(std::fabs(s.out[i] - want) <= 2e-6 * (1 + std::fabs(want)),
                   "combine %s %d outputs %lldx%lld: out[%lld, %lld] = %.9g, want %.9g", simd_level_name(L.level),
                   outputs, (long long)sz[0], (long long)sz[1], (long long)r, (long long)j, double(s.out[i]), want);
          }
      }
    }
  }
}

// seed_bits: the seed read from memory when the call runs (a compiled or recorded call serves every seed) -- equal to
// the same step with the seed given directly.
void test_device_seed() {
  StepCase direct = make_step(4, 300, 5), indexed = make_step(4, 300, 5);
  const int64_t seed_bits = int64_t(0x1234567890abcdefULL);
  direct.args.seed = uint64_t(seed_bits);
  indexed.args.seed = 0;
  indexed.args.seed_bits = &seed_bits;
  affine_step_cpu(direct.args);
  affine_step_cpu(indexed.args);
  EXPECT(direct.out == indexed.out && direct.x_mean == indexed.x_mean,
         "seed_bits: the step reading its seed from memory differs from the direct one");
}

int main() {
  std::printf("levels:");
  for (const Level& L : levels()) std::printf(" %s", simd_level_name(L.level));
  std::printf(" (selected %s)\n", simd_level_name(simd_level()));
  test_step_levels();
  test_step_threads();
  test_combine_levels();
  test_device_seed();
  test_gn_levels();
  test_gn_threads();
  test_gn_bwd_levels();
  test_gn_bwd_threads();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all kernel checks passed\n");
  return 0;
}
