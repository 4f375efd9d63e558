// The CUDA multi-tensor optimizer pass (model/cuda/adamw.cu: grad_norm_squares and
// fused_adamw_step) against the per-tensor path on the same device (Backend's defaults, which
// call scale, adamw_update, copy, fill and sum_squares_many one tensor at a time), over 20
// tensors of odd sizes with mixed decay and expert flags, bf16 compute copies on some, and some
// misaligned (a view one element into its buffer: the scalar code path). f32 master weights, and
// f32_split ones (model/split_float.h) where a compute copy is wanted: the same updates bit for
// bit as f32 masters, their high halves the compute copy. Param, moments and compute copy equal
// bit for bit; the norms agree to 1e-12 relative (another summation order) and repeat bit for bit.
// Outputs that the pass writes without reading (the compute copies) are poisoned with NaN first.
// Skipped when no CUDA device is visible (label gpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/cuda/cuda_backend.h"
#include "model/param.h"
#include "model/rng.h"
#include "model/split_float.h"

namespace sy {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kNormTol = 1e-12;  // relative; docs/cuda.md

const std::vector<int64_t> kSizes = {1,     3,      1023,    4097,      65536,     65537,  131071,
                                     2,     5,      17,      65535,     1000,      12345,  262147,
                                     8,     4096,   999999,  1 << 20,   3000017,   4194309};

std::vector<double> normals(uint64_t key, int64_t n, double scale) {
  CounterRng rng(key);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

// One copy of the optimizer's world: params with grads, compute copies and moments.
struct State {
  std::vector<Param> params;
  std::vector<Tensor> m, v;

  std::vector<Param*> list() {
    std::vector<Param*> out;
    for (Param& p : params) out.push_back(&p);
    return out;
  }
};

// The same initial values every time it is called. split: the tensors with a compute copy hold
// their masters as f32_split, the copy being their high halves (as the Transformer makes them).
// bf16_expert_grads: the expert tensors' grads are bf16 (TransformerOptions::bf16_grad_storage);
// round_expert_grads: their f32 grads are read as their bf16 rounding (Param::bf16_grad).
State make_state(Backend& gpu, bool split = false, bool bf16_expert_grads = false,
                 bool round_expert_grads = false) {
  State s;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    const int64_t n = kSizes[i];
    const bool compute_copy = i % 2 == 0;
    const DType dtype = split && compute_copy ? DType::f32_split : DType::f32;
    Param p;
    p.path = "t" + std::to_string(i) + "[" + std::to_string(n) + "]";
    if (i % 5 == 3) {
      // A view one element into its buffer: not aligned for vectors, so the pass takes the
      // scalar path.
      p.value = gpu.alloc({n + 1}, dtype).rows(1, n + 1);
    } else {
      p.value = gpu.alloc({n}, dtype);
    }
    gpu.write(p.value, std::span<const double>(normals(10 + i, n, 0.5)));
    const bool expert = i % 4 == 1;
    p.grad = gpu.zeros({n}, bf16_expert_grads && expert ? DType::bf16 : DType::f32);
    if (dtype == DType::f32_split) p.compute = p.value.high_half();
    else if (compute_copy) p.compute = gpu.zeros({n}, DType::bf16);
    else p.compute = p.value;  // no copy
    p.decay = i % 3 != 0;
    p.is_expert = expert;
    p.bf16_grad = expert && (bf16_expert_grads || round_expert_grads);
    s.params.push_back(std::move(p));
    Tensor m = gpu.alloc({n}, DType::f32), v = gpu.alloc({n}, DType::f32);
    gpu.write(m, std::span<const double>(normals(100 + i, n, 0.01)));
    std::vector<double> v0 = normals(200 + i, n, 0.01);
    for (double& x : v0) x = static_cast<float>(x * x);
    gpu.write(v, std::span<const double>(v0));
    s.m.push_back(m);
    s.v.push_back(v);
  }
  return s;
}

void write_grads(Backend& gpu, State& s, int step) {
  for (size_t i = 0; i < s.params.size(); ++i)
    gpu.write(s.params[i].grad,
              std::span<const double>(normals(1000 * step + i, kSizes[i], 0.1)));
}

void poison_compute(Backend& gpu, State& s) {
  for (Param& p : s.params)
    if (p.compute.data() != p.value.data()) gpu.fill(p.compute, kNaN);
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

// a == b element by element (a NaN, e.g. a poisoned element left unwritten, never matches); on a
// mismatch, reports how many differ and the first, not the whole arrays.
void expect_same(const std::vector<double>& a, const std::vector<double>& b,
                 const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i]) && differ++ == 0) first = i;
  EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << a.size() << " differ, first ["
                        << first << "] " << a[first] << " vs " << b[first];
}

void expect_zero(const std::vector<double>& a, const std::string& what) {
  expect_same(a, std::vector<double>(a.size(), 0.0), what);
}

class CudaOptim : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    gpu_ = make_cuda_backend(0);
  }
  Backend& gpu() { return *gpu_; }

  // Every array of `a` equals the same array of `b` bit for bit (read as doubles, exactly).
  void expect_equal(State& a, State& b, const std::string& when) {
    for (size_t i = 0; i < a.params.size(); ++i) {
      const Param& pa = a.params[i];
      const Param& pb = b.params[i];
      const std::string what = pa.path + " " + when;
      expect_same(gpu().read(pa.value), gpu().read(pb.value), "value " + what);
      expect_same(gpu().read(a.m[i]), gpu().read(b.m[i]), "exp_avg " + what);
      expect_same(gpu().read(a.v[i]), gpu().read(b.v[i]), "exp_avg_sq " + what);
      expect_same(gpu().read(pa.grad), gpu().read(pb.grad), "grad " + what);
      if (pa.compute.data() != pa.value.data())
        expect_same(gpu().read(pa.compute), gpu().read(pb.compute), "compute " + what);
    }
  }

  // The values and moments of `a` equal those of `b` bit for bit (their grads may differ in
  // dtype).
  void expect_same_update(State& a, State& b, const std::string& when) {
    for (size_t i = 0; i < a.params.size(); ++i) {
      const std::string what = a.params[i].path + " " + when;
      expect_same(gpu().read(a.params[i].value), gpu().read(b.params[i].value), "value " + what);
      expect_same(gpu().read(a.m[i]), gpu().read(b.m[i]), "exp_avg " + what);
      expect_same(gpu().read(a.v[i]), gpu().read(b.v[i]), "exp_avg_sq " + what);
    }
  }

  std::unique_ptr<Backend> gpu_;
};

AdamWStep hyper(int step, double grad_scale, bool zero_grads) {
  AdamWStep hp;
  hp.lr = 1e-3 * step;
  hp.beta1 = 0.9;
  hp.beta2 = 0.95;
  hp.eps = 1e-8;
  hp.weight_decay = 0.1;
  hp.step = step;
  hp.grad_scale = grad_scale;
  hp.zero_grads = zero_grads;
  return hp;
}

TEST_F(CudaOptim, FusedStepEqualsPerTensorOpsBitwise) {
  State fused = make_state(gpu()), each = make_state(gpu());
  const std::vector<double> scales = {1.0, 0.37, 0.8, 0.5};
  for (int step = 1; step <= 4; ++step) {
    write_grads(gpu(), fused, step);
    write_grads(gpu(), each, step);
    poison_compute(gpu(), fused);
    poison_compute(gpu(), each);
    const bool zero = step < 4;  // the last step keeps its (scaled) grads
    const AdamWStep hp = hyper(step, scales[step - 1], zero);
    gpu().fused_adamw_step(fused.list(), fused.m, fused.v, hp);
    gpu().Backend::fused_adamw_step(each.list(), each.m, each.v, hp);  // per tensor
    expect_equal(fused, each, "after step " + std::to_string(step));
    if (zero)
      for (const Param& p : fused.params) expect_zero(gpu().read(p.grad), p.path + " grad");
  }
  // A different list (a subset, in another order) rebuilds the chunk table.
  std::vector<Param*> fused_list = fused.list(), each_list = each.list();
  std::vector<Param*> fused_sub = {fused_list[17], fused_list[3], fused_list[0]};
  std::vector<Param*> each_sub = {each_list[17], each_list[3], each_list[0]};
  std::vector<Tensor> fm = {fused.m[17], fused.m[3], fused.m[0]};
  std::vector<Tensor> fv = {fused.v[17], fused.v[3], fused.v[0]};
  std::vector<Tensor> em = {each.m[17], each.m[3], each.m[0]};
  std::vector<Tensor> ev = {each.v[17], each.v[3], each.v[0]};
  write_grads(gpu(), fused, 5);
  write_grads(gpu(), each, 5);
  gpu().fused_adamw_step(fused_sub, fm, fv, hyper(5, 0.9, true));
  gpu().Backend::fused_adamw_step(each_sub, em, ev, hyper(5, 0.9, true));
  expect_equal(fused, each, "after a step of a subset");
}

// f32_split masters: every update bitwise that of f32 masters (the fused pass and the per-tensor
// path, which updates a joined f32 copy and splits it again), and the compute copy is the split's
// high half of the updated value: round to nearest, ties away from zero (the f32 masters' copy
// rounds ties to even, so the two copies are not compared).
TEST_F(CudaOptim, SplitMastersUpdateAsF32MastersDo) {
  State plain = make_state(gpu()), fused = make_state(gpu(), true), each = make_state(gpu(), true);
  const std::vector<double> scales = {1.0, 0.37, 0.8};
  for (int step = 1; step <= 3; ++step) {
    for (State* s : {&plain, &fused, &each}) write_grads(gpu(), *s, step);
    const AdamWStep hp = hyper(step, scales[step - 1], step < 3);
    gpu().fused_adamw_step(plain.list(), plain.m, plain.v, hp);
    gpu().fused_adamw_step(fused.list(), fused.m, fused.v, hp);
    gpu().Backend::fused_adamw_step(each.list(), each.m, each.v, hp);  // per tensor
    const std::string when = "after step " + std::to_string(step);
    expect_equal(fused, each, "split, fused against per tensor, " + when);
    for (size_t i = 0; i < plain.params.size(); ++i) {
      const Param& a = plain.params[i];
      const Param& b = fused.params[i];
      const std::vector<double> value = gpu().read(a.value);
      expect_same(gpu().read(b.value), value, "value " + a.path + " " + when);
      expect_same(gpu().read(fused.m[i]), gpu().read(plain.m[i]), "exp_avg " + a.path);
      expect_same(gpu().read(fused.v[i]), gpu().read(plain.v[i]), "exp_avg_sq " + a.path);
      expect_same(gpu().read(b.grad), gpu().read(a.grad), "grad " + a.path);
      if (b.value.dtype() != DType::f32_split) continue;
      std::vector<double> high(value.size());
      for (size_t k = 0; k < value.size(); ++k) {
        const float f = static_cast<float>(value[k]);
        uint32_t bits = 0;
        std::memcpy(&bits, &f, sizeof bits);
        const uint32_t high_bits = static_cast<uint32_t>(split_float_bits(bits).high) << 16;
        float h = 0;
        std::memcpy(&h, &high_bits, sizeof h);
        high[k] = h;
      }
      expect_same(gpu().read(b.compute), high, "compute (high halves) " + a.path + " " + when);
    }
  }
}

// SY_ADAMW_BLOCKS caps the pass's grid (each block then runs every N-th chunk): the same bits
// as one block a chunk, for caps of 1, 3 and more blocks than chunks; a bad value is an error.
// bf16 expert gradients (written whole by the experts' weight-gradient GEMM): the fused pass
// equals the per-tensor path, which widens them to f32 first, bit for bit (the grads kept scaled
// on the last step are rounded back to bf16 alike); and both update as f32 gradients of the same
// values do. The norm reads their values as f32 gradients holding them would.
TEST_F(CudaOptim, Bf16ExpertGradsUpdateAsTheirF32ValuesDo) {
  State fused = make_state(gpu(), true, true), each = make_state(gpu(), true, true);
  State wide = make_state(gpu(), true);  // f32 grads holding the bf16 values
  const std::vector<double> scales = {1.0, 0.37, 0.8};
  for (int step = 1; step <= 3; ++step) {
    write_grads(gpu(), fused, step);
    write_grads(gpu(), each, step);
    for (size_t i = 0; i < wide.params.size(); ++i)
      gpu().write(wide.params[i].grad, std::span<const double>(gpu().read(fused.params[i].grad)));
    double shared[2], expert[2];
    gpu().grad_norm_squares(fused.list(), shared[0], expert[0]);
    gpu().grad_norm_squares(wide.list(), shared[1], expert[1]);
    EXPECT_EQ(shared[0], shared[1]) << "step " << step;
    EXPECT_LT(relative(expert[0], expert[1]), kNormTol) << "step " << step;
    const bool zero = step < 3;  // the last step keeps its (scaled) grads
    const AdamWStep hp = hyper(step, scales[step - 1], zero);
    gpu().fused_adamw_step(fused.list(), fused.m, fused.v, hp);
    gpu().Backend::fused_adamw_step(each.list(), each.m, each.v, hp);  // per tensor, widened
    gpu().fused_adamw_step(wide.list(), wide.m, wide.v, hp);
    const std::string when = "after step " + std::to_string(step);
    expect_equal(fused, each, when);
    expect_same_update(fused, wide, "against f32 grads " + when);
  }
  for (const Param& p : fused.params)
    EXPECT_EQ(p.grad.dtype(), p.is_expert ? DType::bf16 : DType::f32) << p.path;
}

// f32 gradients read as their bf16 rounding (Param::bf16_grad: the layouts that cannot hold them
// in bf16, with gradient accumulation or replicas): the same update and norm, bit for bit, as
// the bf16 gradients of the same values; and the per-tensor path (which rounds through a bf16
// copy) equal to the fused pass, the scaled grads kept on the last step included.
TEST_F(CudaOptim, RoundedF32GradsUpdateAsBf16GradsDo) {
  State rounded = make_state(gpu(), true, false, true), each = make_state(gpu(), true, false, true);
  State narrow = make_state(gpu(), true, true);
  const std::vector<double> scales = {0.37, 1.0, 0.8};
  for (int step = 1; step <= 3; ++step) {
    for (State* s : {&rounded, &each, &narrow}) write_grads(gpu(), *s, step);
    double shared[2], expert[2];
    gpu().grad_norm_squares(rounded.list(), shared[0], expert[0]);
    gpu().grad_norm_squares(narrow.list(), shared[1], expert[1]);
    EXPECT_EQ(shared[0], shared[1]) << "step " << step;
    EXPECT_EQ(expert[0], expert[1]) << "step " << step;
    const bool zero = step < 3;
    const AdamWStep hp = hyper(step, scales[step - 1], zero);
    gpu().fused_adamw_step(rounded.list(), rounded.m, rounded.v, hp);
    gpu().Backend::fused_adamw_step(each.list(), each.m, each.v, hp);
    gpu().fused_adamw_step(narrow.list(), narrow.m, narrow.v, hp);
    const std::string when = "after step " + std::to_string(step);
    expect_equal(rounded, each, when);
    expect_same_update(rounded, narrow, "against bf16 grads " + when);
  }
}

// The fused pass refuses environment variable `name` set to `value`, naming the variable.
void expect_knob_refused(Backend& gpu, const char* name, const char* value) {
  State state = make_state(gpu);
  setenv(name, value, 1);
  try {
    gpu.fused_adamw_step(state.list(), state.m, state.v, hyper(1, 1.0, true));
    ADD_FAILURE() << name << "='" << value << "' was taken";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  unsetenv(name);
}

// The update's blocks a chunk (SY_ADAMW_PARTS; unset: 4) and their shape (SY_ADAMW_SHAPE: threads,
// vectors a thread in flight, blocks an SM) change no bit, for fp32 and split masters, with f32
// and bf16 grads; an unlisted value is refused by name.
TEST_F(CudaOptim, BlocksPerChunkGiveTheSameBits) {
  struct Knobs {
    const char* parts;  // SY_ADAMW_PARTS, or null: unset
    const char* shape;  // SY_ADAMW_SHAPE, or null: unset
  };
  const std::vector<Knobs> settings = {{"1", nullptr},      {"16", nullptr},     {nullptr, "wide2"},
                                       {nullptr, "mid"},    {nullptr, "short"},  {"4", "short"},
                                       {nullptr, "short4"}, {nullptr, "short8"}, {nullptr, "auto"}};
  for (const bool split : {false, true}) {
    State plain = make_state(gpu(), split, true), each = make_state(gpu(), split, true);
    std::vector<State> set;  // one a setting
    for (size_t k = 0; k < settings.size(); ++k) set.push_back(make_state(gpu(), split, true));
    for (int step = 1; step <= 2; ++step) {
      write_grads(gpu(), plain, step);
      write_grads(gpu(), each, step);
      for (State& s : set) write_grads(gpu(), s, step);
      const AdamWStep hp = hyper(step, step == 1 ? 1.0 : 0.37, step == 1);
      for (size_t k = 0; k < settings.size(); ++k) {
        if (settings[k].parts) setenv("SY_ADAMW_PARTS", settings[k].parts, 1);
        if (settings[k].shape) setenv("SY_ADAMW_SHAPE", settings[k].shape, 1);
        gpu().fused_adamw_step(set[k].list(), set[k].m, set[k].v, hp);
        unsetenv("SY_ADAMW_PARTS");
        unsetenv("SY_ADAMW_SHAPE");
      }
      gpu().fused_adamw_step(plain.list(), plain.m, plain.v, hp);
      gpu().Backend::fused_adamw_step(each.list(), each.m, each.v, hp);
      const std::string when =
          std::string(split ? "split" : "f32") + ", step " + std::to_string(step);
      expect_equal(plain, each, "per tensor, " + when);
      for (size_t k = 0; k < settings.size(); ++k)
        expect_equal(set[k], plain,
                     std::string("SY_ADAMW_PARTS=") + (settings[k].parts ? settings[k].parts : "") +
                         " SY_ADAMW_SHAPE=" + (settings[k].shape ? settings[k].shape : "") + ", " +
                         when);
    }
  }
  expect_knob_refused(gpu(), "SY_ADAMW_PARTS", "3");
  expect_knob_refused(gpu(), "SY_ADAMW_SHAPE", "narrow");
}

// Unless SY_ADAMW_SHAPE or SY_ADAMW_PARTS pins a shape, the first passes each run one candidate
// shape, timed on the stream, and the fastest runs from then on; the profile report names it.
// Whichever runs, each pass gives the bits of the pinned default shape.
TEST_F(CudaOptim, TunedShapesGiveTheBitsOfThePinnedOne) {
  cuda_profile_begin(gpu());
  for (const bool split : {false, true}) {  // split: the tuner has chosen by then
    State tuned = make_state(gpu(), split, true), pinned = make_state(gpu(), split, true);
    for (int step = 1; step <= 7; ++step) {
      write_grads(gpu(), tuned, step);
      write_grads(gpu(), pinned, step);
      const AdamWStep hp = hyper(step, step % 2 ? 1.0 : 0.37, step == 1);
      gpu().fused_adamw_step(tuned.list(), tuned.m, tuned.v, hp);
      setenv("SY_ADAMW_SHAPE", "wide", 1);
      gpu().fused_adamw_step(pinned.list(), pinned.m, pinned.v, hp);
      unsetenv("SY_ADAMW_SHAPE");
      expect_equal(tuned, pinned,
                   std::string(split ? "split" : "f32") + ", step " + std::to_string(step));
    }
  }
  const std::string report = cuda_profile_report(gpu(), 0);
  for (const char* shape :
       {"fused_adamw_step shapes: wide:4", "wide:8", "mid:16", "short4:16", "wide:16", "(chosen, "})
    EXPECT_NE(report.find(shape), std::string::npos) << shape << " not in\n" << report;
}

TEST_F(CudaOptim, CappedGridGivesTheSameBits) {
  for (const char* cap : {"1", "3", "100000"}) {
    State capped = make_state(gpu()), plain = make_state(gpu());
    for (int step = 1; step <= 2; ++step) {
      write_grads(gpu(), capped, step);
      write_grads(gpu(), plain, step);
      const AdamWStep hp = hyper(step, step == 1 ? 1.0 : 0.37, step == 1);
      setenv("SY_ADAMW_BLOCKS", cap, 1);
      gpu().fused_adamw_step(capped.list(), capped.m, capped.v, hp);
      unsetenv("SY_ADAMW_BLOCKS");
      gpu().fused_adamw_step(plain.list(), plain.m, plain.v, hp);
      expect_equal(capped, plain,
                   std::string("SY_ADAMW_BLOCKS=") + cap + ", step " + std::to_string(step));
    }
  }
  expect_knob_refused(gpu(), "SY_ADAMW_BLOCKS", "a few");
}

TEST_F(CudaOptim, NormSquaresAgreeAndRepeat) {
  State s = make_state(gpu());
  write_grads(gpu(), s, 1);
  long double host_shared = 0, host_expert = 0;  // 64-bit mantissas: exact enough for 1e-12
  for (const Param& p : s.params)
    for (double g : gpu().read(p.grad)) (p.is_expert ? host_expert : host_shared) += g * g;
  double shared = 0, expert = 0, shared2 = 0, expert2 = 0, ref_shared = 0, ref_expert = 0;
  gpu().grad_norm_squares(s.list(), shared, expert);
  gpu().grad_norm_squares(s.list(), shared2, expert2);
  gpu().Backend::grad_norm_squares(s.list(), ref_shared, ref_expert);  // sum_squares_many
  EXPECT_EQ(shared, shared2) << "the norm repeats bit for bit";
  EXPECT_EQ(expert, expert2);
  EXPECT_LT(relative(shared, ref_shared), kNormTol) << shared << " vs " << ref_shared;
  EXPECT_LT(relative(expert, ref_expert), kNormTol) << expert << " vs " << ref_expert;
  EXPECT_LT(relative(shared, static_cast<double>(host_shared)), kNormTol);
  EXPECT_LT(relative(expert, static_cast<double>(host_expert)), kNormTol);
  std::printf("norm squares: shared %.17g (per tensor %.17g), expert %.17g (per tensor %.17g)\n",
              shared, ref_shared, expert, ref_expert);

  double none_shared = -1, none_expert = -1;
  gpu().grad_norm_squares({}, none_shared, none_expert);
  EXPECT_EQ(none_shared, 0.0);
  EXPECT_EQ(none_expert, 0.0);
}

// Two runs from the same start: the same norms and the same weights, bit for bit.
TEST_F(CudaOptim, TwoRunsAreBitwiseEqual) {
  auto run = [&](State& s) {
    std::vector<double> norms;
    for (int step = 1; step <= 3; ++step) {
      write_grads(gpu(), s, step);
      double shared = 0, expert = 0;
      gpu().grad_norm_squares(s.list(), shared, expert);
      norms.push_back(shared);
      norms.push_back(expert);
      const double norm = std::sqrt(shared + expert);
      gpu().fused_adamw_step(s.list(), s.m, s.v, hyper(step, std::min(1.0, 1.0 / norm), true));
    }
    return norms;
  };
  State first = make_state(gpu());
  const std::vector<double> first_norms = run(first);
  State second = make_state(gpu());
  const std::vector<double> second_norms = run(second);
  EXPECT_EQ(first_norms, second_norms);
  expect_equal(first, second, "after two runs");
}

// f64 masters take the per-tensor path (the fused kernels are f32); a param listed twice is an
// error, not a race.
TEST_F(CudaOptim, F64FallsBackAndAliasingIsRefused) {
  Param p;
  p.path = "w";
  p.value = gpu().alloc({5}, DType::f64);
  gpu().write(p.value, std::span<const double>(normals(1, 5, 1.0)));
  p.grad = gpu().alloc({5}, DType::f64);
  gpu().write(p.grad, std::span<const double>(normals(2, 5, 1.0)));
  Tensor m = gpu().zeros({5}, DType::f64), v = gpu().zeros({5}, DType::f64);
  Tensor value = gpu().zeros({5}, DType::f64), m2 = gpu().zeros({5}, DType::f64),
         v2 = gpu().zeros({5}, DType::f64), grad = gpu().zeros({5}, DType::f64);
  gpu().copy(value, p.value);
  gpu().copy(grad, p.grad);
  p.decay = false;
  std::vector<Param*> list = {&p};
  std::vector<Tensor> ms = {m}, vs = {v};
  gpu().fused_adamw_step(list, ms, vs, hyper(1, 0.5, true));
  gpu().scale(grad, 0.5);
  gpu().adamw_update(value, grad, m2, v2, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1);
  expect_same(gpu().read(p.value), gpu().read(value), "f64 value");
  expect_same(gpu().read(m), gpu().read(m2), "f64 exp_avg");
  expect_zero(gpu().read(p.grad), "f64 grad");

  State s = make_state(gpu());
  std::vector<Param*> twice = s.list();
  twice.push_back(twice.front());
  std::vector<Tensor> m_twice = s.m, v_twice = s.v;
  m_twice.push_back(s.m.front());
  v_twice.push_back(s.v.front());
  EXPECT_THROW(gpu().fused_adamw_step(twice, m_twice, v_twice, hyper(1, 1.0, true)),
               std::runtime_error);
}

}  // namespace
}  // namespace sy
