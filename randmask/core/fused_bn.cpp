// Training-mode BatchNorm fused with what follows it in a ResNet unit: the fixed Random Mask, the residual
// addition and ReLU, forward and backward, on channels_last CPU tensors (float32 or bfloat16).
// Eager PyTorch runs these as five to eight separate passes over each activation; here the forward pass reads
// the activation twice and writes it once (and ReLU's gate, one bit a value), the backward pass reads it, its
// gradient and the gate twice, each in one parallel region.
// Built at first use by randmask/core/fused.py (g++ -O3 -march=native -fopenmp); no torch headers, so it compiles in
// about a second. Sums go through fixed blocks of pixels, merged in a fixed order, so results do not depend on
// the number of threads. Tensors: P = N*H*W pixels of C channels each; the mask is H*W*C values of the activation's type, each 0 or 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 256;  // pixels per partial sum
// Only tiny layers run on one thread. Training steps of 0.7-Shallow alternating between builds (2-core EPYC):
// every ResNet-18 layer on both threads was 4.7% faster a step than layers under a million values on one
// (OpenMP's default wait policy) and no slower with OMP_WAIT_POLICY=PASSIVE, whose sleeping threads cost a wake-up.
#ifndef RM_PARALLEL_FROM
#define RM_PARALLEL_FROM (1 << 15)
#endif
constexpr int64_t kParallelFrom = RM_PARALLEL_FROM;
constexpr int64_t kLanes = 16;   // channels are taken 16 at a time (the caller ensures C % 16 == 0)

// 16 lanes as GCC/Clang vector types: one AVX-512 register of floats, two AVX2 ones, plain code elsewhere.
typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vu bf16_bits(vf v) {  // round to nearest even in the top 16 bits, NaN to 0x7fc0, as c10::BFloat16 does
  vu u;
  std::memcpy(&u, &v, sizeof u);
  const vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? vu{} + 0x7fc0u : r;
}
// bfloat16 <-> float. Where AVX-512 (BF16) is there each is one or two instructions: the generic vector code
// took about a third of the kernels' time on Zen 4. The BF16 instruction rounds to nearest even as c10 does;
// it differs only on subnormal floats (read as zero) and in a NaN's payload.
inline vf widen(vh h) {
#ifdef __AVX512F__
  __m256i in;
  std::memcpy(&in, &h, sizeof in);
  const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(in), 16);
#else
  const vu w = __builtin_convertvector(h, vu) << 16;
#endif
  vf v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}
inline vh narrow(vf v) {
#ifdef __AVX512BF16__
  __m512 f;
  std::memcpy(&f, &v, sizeof f);
  const __m256bh n = _mm512_cvtneps_pbh(f);
  vh h;
  std::memcpy(&h, &n, sizeof h);
  return h;
#else
  return __builtin_convertvector(bf16_bits(v), vh);
#endif
}
inline vf load(const uint16_t* p) {  // bfloat16: the top half of a float
  vh h;
  std::memcpy(&h, p, sizeof h);
  return widen(h);
}
inline vf stored(float* p, vf v) {  // store, and return the value as stored
  std::memcpy(p, &v, sizeof v);
  return v;
}
inline vf stored(uint16_t* p, vf v) {
  const vh h = narrow(v);
  std::memcpy(p, &h, sizeof h);
  return widen(h);
}
inline void store(float* p, vf v) { stored(p, v); }
inline void store(uint16_t* p, vf v) { stored(p, v); }  // the unused widening is dead code
template <typename T>
inline vf round_to(vf v) {  // the value a store to T and a load back give, without the round trip
  if constexpr (sizeof(T) == sizeof(float)) {
    return v;
  } else {
    return widen(narrow(v));
  }
}
inline vf relu(vf v) { return v < 0.0f ? vf{} : v; }  // NaN stays NaN, as torch.relu

// ReLU's gate as 16 bits, one a lane: what the backward pass reads instead of the output (2 bytes a value)
inline uint16_t positive_bits(vf v) {
#ifdef __AVX512F__
  __m512 f;
  std::memcpy(&f, &v, sizeof f);
  return _mm512_cmp_ps_mask(f, _mm512_setzero_ps(), _CMP_GT_OQ);
#else
  uint16_t bits = 0;
  for (int j = 0; j < 16; ++j) bits |= static_cast<uint16_t>(v[j] > 0.0f) << j;
  return bits;
#endif
}
inline vf keep_where(uint16_t bits, vf v) {  // v where the lane's bit is set, else 0
#ifdef __AVX512F__
  __m512 f;
  std::memcpy(&f, &v, sizeof f);
  f = _mm512_maskz_mov_ps(bits, f);
  std::memcpy(&v, &f, sizeof v);
  return v;
#else
  const vu lane = {1u << 0, 1u << 1, 1u << 2, 1u << 3, 1u << 4, 1u << 5, 1u << 6, 1u << 7,
                   1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};
  return ((vu{} + bits) & lane) != 0u ? v : vf{};
#endif
}

inline int64_t block_end(int64_t b, int64_t P) { return std::min(P, (b + 1) * kBlock); }

// Sum the blocks' partial sums (nb x width floats, `at` floats into each row) in a fixed order.
inline void total(const std::vector<float>& part, int64_t nb, int64_t width, int64_t at, int64_t C, double* out) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0;
    for (int64_t b = 0; b < nb; ++b) s += part[b * width + at + c];
    out[c] = s;
  }
}

// One block's mean and sum of squared deviations per channel: the second sweep reads the block from cache
// (256 pixels of C channels), so the activation is read from memory once.
template <typename T>
void block_moments(const T* x, int64_t b, int64_t P, int64_t C, float* mean, float* m2) {
  const int64_t begin = b * kBlock, end = block_end(b, P);
  const float n = static_cast<float>(end - begin);
  for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
    // four running sums, so that each addition does not wait for the one before it
    vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
    int64_t p = begin;
    for (; p + 4 <= end; p += 4) {
      s0 += load(x + p * C + c0);
      s1 += load(x + (p + 1) * C + c0);
      s2 += load(x + (p + 2) * C + c0);
      s3 += load(x + (p + 3) * C + c0);
    }
    for (; p < end; ++p) s0 += load(x + p * C + c0);
    const vf mu = ((s0 + s1) + (s2 + s3)) / n;
    vf a0 = {}, a1 = {}, a2 = {}, a3 = {};
    p = begin;
    for (; p + 4 <= end; p += 4) {
      const vf d0 = load(x + p * C + c0) - mu, d1 = load(x + (p + 1) * C + c0) - mu;
      const vf d2 = load(x + (p + 2) * C + c0) - mu, d3 = load(x + (p + 3) * C + c0) - mu;
      a0 += d0 * d0;
      a1 += d1 * d1;
      a2 += d2 * d2;
      a3 += d3 * d3;
    }
    for (; p < end; ++p) {
      const vf d = load(x + p * C + c0) - mu;
      a0 += d * d;
    }
    store(mean + c0, mu);
    store(m2 + c0, (a0 + a1) + (a2 + a3));
  }
}

// The blocks' moments merged in a fixed order (Chan et al.'s pairwise update, in double): mean and biased
// variance per channel.
inline void merge_moments(const std::vector<float>& part, int64_t nb, int64_t P, int64_t C, double* mean,
                          double* var) {
  for (int64_t c = 0; c < C; ++c) {
    double n = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t b = 0; b < nb; ++b) {
      const double nb_ = static_cast<double>(block_end(b, P) - b * kBlock);
      const double mb = part[b * 2 * C + c], delta = mb - mu, total = n + nb_;
      mu += delta * nb_ / total;
      m2 += part[b * 2 * C + C + c] + delta * delta * n * nb_ / total;
      n = total;
    }
    mean[c] = mu;
    var[c] = m2 / n;  // biased: what normalises
  }
}

// What the forward pass keeps for the backward one: four rows of C floats.
enum Saved { kMean, kInvstd, kScale, kShift };

struct Layer {
  int64_t P, C, HW;      // pixels (N*H*W), channels, pixels per image (the mask's period)
  const void* mask;      // H*W*C of 0 and 1 in the activation's type, or null
  const float* weight;   // C
  float* saved;          // 4*C, rows as in Saved
};

// The BatchNorm output before mask, residual and ReLU (rounded to T when a residual is added after it, as eager
// PyTorch stores it in T first).
template <typename T, bool RES>
inline vf normalised(const T* x, int64_t i, vf scale, vf shift) {
  const vf v = load(x + i) * scale + shift;
  return RES ? round_to<T>(v) : v;
}

// Statistics, then out = relu?(round(x*scale + shift) * mask + res), in one parallel region; without a residual
// the BatchNorm value is rounded once, at the end. With ReLU, `gate` gets out > 0 as one bit a value.
template <typename T, bool MASK, bool RES, bool RELU>
void forward(const T* x, T* out, uint16_t* gate, const T* res, const float* bias, double eps, double momentum,
             float* running_mean, float* running_var, const Layer& l) {
  const int64_t nb = (l.P + kBlock - 1) / kBlock, C = l.C;
  std::vector<float> part(nb * 2 * C);
  const float* scale = l.saved + kScale * C;
  const float* shift = l.saved + kShift * C;
#pragma omp parallel if (l.P * C >= kParallelFrom)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b) block_moments(x, b, l.P, C, part.data() + b * 2 * C, part.data() + b * 2 * C + C);
#pragma omp single
    {
      std::vector<double> mean(C), var(C);
      merge_moments(part, nb, l.P, C, mean.data(), var.data());
      for (int64_t c = 0; c < C; ++c) {
        const double invstd = 1.0 / std::sqrt(var[c] + eps), sc = l.weight[c] * invstd;
        l.saved[kMean * C + c] = static_cast<float>(mean[c]);
        l.saved[kInvstd * C + c] = static_cast<float>(invstd);
        l.saved[kScale * C + c] = static_cast<float>(sc);
        l.saved[kShift * C + c] = static_cast<float>(bias[c] - mean[c] * sc);
        if (running_mean) {  // as nn.BatchNorm2d: the unbiased variance goes into the running estimate
          const double unbiased = var[c] * static_cast<double>(l.P) / static_cast<double>(std::max<int64_t>(l.P - 1, 1));
          running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean[c]);
          running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        const vf sc = load(scale + c0), sh = load(shift + c0);
        int64_t hw = b * kBlock % l.HW;  // the pixel's place in the mask, counted up (a division per pixel costs)
        for (int64_t p = b * kBlock; p < block_end(b, l.P); ++p, hw = hw + 1 == l.HW ? 0 : hw + 1) {
          const int64_t i = p * C + c0;
          vf v = normalised<T, RES>(x, i, sc, sh);
          if (MASK) v *= load(static_cast<const T*>(l.mask) + hw * C + c0);
          if (RES) v += load(res + i);
          if (RELU) gate[i / kLanes] = positive_bits(stored(out + i, relu(v)));  // out > 0, as stored
          else store(out + i, v);
        }
      }
  }
}

// The gradient that reaches the BatchNorm output: ReLU's gate (out > 0), then the mask; `gated` is what a
// residual receives.
template <typename T, bool MASK, bool RELU>
inline vf upstream(const T* g, const uint16_t* gate, int64_t i, const T* m, vf* gated) {
  vf d = load(g + i);
  if (RELU) d = keep_where(gate[i / kLanes], d);
  *gated = d;
  if (MASK) d *= load(m);
  return d;
}

// dx = (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) * weight * invstd
template <typename T, bool MASK, bool RES, bool RELU>
void backward(const T* g, const uint16_t* gate, const T* x, T* dx, T* dres, float* grad_weight, float* grad_bias,
              const Layer& l) {
  const int64_t nb = (l.P + kBlock - 1) / kBlock, C = l.C;
  const float *mean = l.saved + kMean * C, *invstd = l.saved + kInvstd * C;
  const T* mask = static_cast<const T*>(l.mask);
  std::vector<float> part(nb * 2 * C), a(C), mean_dy(C), k(C);
#pragma omp parallel if (l.P * C >= kParallelFrom)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        const vf mu = load(mean + c0);
        vf sum = {}, sum_xmu = {}, unused;
        int64_t hw = b * kBlock % l.HW;
        for (int64_t p = b * kBlock; p < block_end(b, l.P); ++p, hw = hw + 1 == l.HW ? 0 : hw + 1) {
          const int64_t i = p * C + c0;
          const vf dy = upstream<T, MASK, RELU>(g, gate, i, mask + hw * C + c0, &unused);
          sum += dy;
          sum_xmu += dy * (load(x + i) - mu);
        }
        store(part.data() + b * 2 * C + c0, sum);
        store(part.data() + b * 2 * C + C + c0, sum_xmu);
      }
#pragma omp single
    {
      std::vector<double> sum_dy(C), sum_dy_xmu(C);
      total(part, nb, 2 * C, 0, C, sum_dy.data());
      total(part, nb, 2 * C, C, C, sum_dy_xmu.data());
      for (int64_t c = 0; c < C; ++c) {
        const double is = invstd[c];
        a[c] = static_cast<float>(l.weight[c] * is);
        mean_dy[c] = static_cast<float>(sum_dy[c] / static_cast<double>(l.P));
        k[c] = static_cast<float>(is * is * sum_dy_xmu[c] / static_cast<double>(l.P));
        grad_weight[c] = static_cast<float>(sum_dy_xmu[c] * is);
        grad_bias[c] = static_cast<float>(sum_dy[c]);
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        const vf mu = load(mean + c0);
        const vf va = load(a.data() + c0), vm = load(mean_dy.data() + c0), vk = load(k.data() + c0);
        int64_t hw = b * kBlock % l.HW;
        for (int64_t p = b * kBlock; p < block_end(b, l.P); ++p, hw = hw + 1 == l.HW ? 0 : hw + 1) {
          const int64_t i = p * C + c0;
          vf gated;
          const vf dy = upstream<T, MASK, RELU>(g, gate, i, mask + hw * C + c0, &gated);
          if (RES) store(dres + i, gated);
          store(dx + i, (dy - vm - (load(x + i) - mu) * vk) * va);
        }
      }
  }
}

// Calls f.template operator()<MASK, RES, RELU>() with the run-time flags as compile-time ones.
template <typename F>
void with_flags(bool mask, bool res, bool relu, F&& f) {
  switch ((mask ? 4 : 0) | (res ? 2 : 0) | (relu ? 1 : 0)) {
    case 0: f.template operator()<false, false, false>(); break;
    case 1: f.template operator()<false, false, true>(); break;
    case 2: f.template operator()<false, true, false>(); break;
    case 3: f.template operator()<false, true, true>(); break;
    case 4: f.template operator()<true, false, false>(); break;
    case 5: f.template operator()<true, false, true>(); break;
    case 6: f.template operator()<true, true, false>(); break;
    default: f.template operator()<true, true, true>(); break;
  }
}

template <typename T>
void forward_as(const void* x, void* out, uint16_t* gate, const void* res, const float* bias, double eps,
                double momentum, float* running_mean, float* running_var, const Layer& l) {
  with_flags(l.mask, res, gate, [&]<bool M, bool R, bool U>() {
    forward<T, M, R, U>(static_cast<const T*>(x), static_cast<T*>(out), gate, static_cast<const T*>(res), bias, eps,
                        momentum, running_mean, running_var, l);
  });
}

template <typename T>
void backward_as(const void* g, const uint16_t* gate, const void* x, void* dx, void* dres, float* grad_weight,
                 float* grad_bias, const Layer& l) {
  with_flags(l.mask, dres, gate, [&]<bool M, bool R, bool U>() {
    backward<T, M, R, U>(static_cast<const T*>(g), gate, static_cast<const T*>(x),
                         static_cast<T*>(dx), static_cast<T*>(dres), grad_weight, grad_bias, l);
  });
}

}  // namespace

// dtype: 0 float32, 1 bfloat16 (bit patterns as uint16). Null pointers: no mask, no residual, no running stats,
// and for `gate` no ReLU; with ReLU the forward pass writes its gate there (P*C/16 words of 16 bits) and the
// backward pass reads it. `dres` (the residual's gradient) is written when not null.
extern "C" {

void rm_bn_forward(int dtype, const void* x, void* out, const void* res, uint16_t* gate, int64_t P, int64_t C,
                   int64_t HW, const void* mask, const float* weight, const float* bias, double eps, double momentum,
                   float* running_mean, float* running_var, float* saved) {
  const Layer l{P, C, HW, mask, weight, saved};
  if (dtype) forward_as<uint16_t>(x, out, gate, res, bias, eps, momentum, running_mean, running_var, l);
  else forward_as<float>(x, out, gate, res, bias, eps, momentum, running_mean, running_var, l);
}

void rm_bn_backward(int dtype, const void* g, const uint16_t* gate, const void* x, void* dx, void* dres, int64_t P,
                    int64_t C, int64_t HW, const void* mask, const float* weight, float* saved, float* grad_weight,
                    float* grad_bias) {
  const Layer l{P, C, HW, mask, weight, saved};
  if (dtype) backward_as<uint16_t>(g, gate, x, dx, dres, grad_weight, grad_bias, l);
  else backward_as<float>(g, gate, x, dx, dres, grad_weight, grad_bias, l);
}

}  // extern "C"
