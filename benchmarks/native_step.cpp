// The seed's training step as one native call: what issue 21's speed goals leave room for on a CPU.
//
// sgvb_b, L = 1, Bernoulli decoder, 784-400-20, fp32 or bf16 products (as autocast), Adam (lr 1e-3) with
// FusedAdam's subnormal flush. The same equations as manual_step.HandWrittenStep (its docstring has them), with
// nothing between the kernels: the 11 products are ATen's (oneDNN / MKL, as every contender's), written straight
// into their destinations; the elementwise work is a few loops, fused by hand, vectorised by the compiler; Adam is
// ATen's fused kernel. Built by benchmarks/native_step.py (torch.utils.cpp_extension), which says why -ffast-math
// is a compile flag only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>  // pybind11 with torch's Tensor caster; torch/extension.h builds 12 s slower

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t ROWS_PER_TASK = 16;  // images per parallel task in the elementwise loops

// -sum log p(x|z) over the batch, and d/dl = sigmoid(l) - x into dl. Per element, with t = exp(-|l|):
// BCE(l, x) = max(l, 0) - l x + log(1 + t), and sigmoid(l) = 1 / (1 + t) for l >= 0, t / (1 + t) below.
// Summed per image, then over images in order, so the total does not depend on the thread count.
double bernoulli_nll_and_grad(const Tensor& logits, const Tensor& x, Tensor& dl, Tensor& per_image) {
  const int64_t n = logits.size(0), d = logits.size(1);
  const float* l_p = logits.data_ptr<float>();
  const float* x_p = x.data_ptr<float>();
  float* dl_p = dl.data_ptr<float>();
  float* row_p = per_image.data_ptr<float>();
  at::parallel_for(0, n, ROWS_PER_TASK, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* __restrict l = l_p + i * d;
      const float* __restrict xi = x_p + i * d;
      float* __restrict g = dl_p + i * d;
      float sum = 0.f;
      for (int64_t j = 0; j < d; ++j) {
        const float t = std::exp(-std::fabs(l[j]));
        const float r = 1.f / (1.f + t);
        sum += std::fmax(l[j], 0.f) - l[j] * xi[j] + std::log1p(t);
        g[j] = (l[j] >= 0.f ? r : t * r) - xi[j];
      }
      row_p[i] = sum;
    }
  });
  double total = 0.;
  for (int64_t i = 0; i < n; ++i) total += row_p[i];
  return total;
}

// g = 0 where h <= 0: the ReLU's backward, h being the ReLU's output. On the bits, as signed integers of the
// float's width (int32 for fp32, int16 for bf16): for a number that is not NaN, "> 0" means the same, and the loop
// then vectorises for bf16 too.
template <typename Bits>
void relu_backward_(Tensor& g, const Tensor& h) {
  Bits* g_p = static_cast<Bits*>(g.data_ptr());
  const Bits* h_p = static_cast<const Bits*>(h.data_ptr());
  at::parallel_for(0, g.numel(), ROWS_PER_TASK * g.size(1), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) g_p[k] = h_p[k] > 0 ? g_p[k] : Bits(0);
  });
}

class SeedStep {
 public:
  // weights, grads: fc1.weight, fc1.bias, ..., fc4.bias, views of one flat parameter and its gradient (Adam
  // updates the flat tensors in one kernel); exp_avg, exp_avg_sq, count: Adam's state for the flat parameter.
  // bf16: the products in bfloat16 as autocast runs them (weights, biases and layer inputs cast to bf16, outputs in
  // bf16), the likelihood, the KL and Adam in fp32. The weights are cast in one copy of the flat parameter a step
  // and the gradients back in one copy of the flat gradient.
  SeedStep(Tensor train_x, std::vector<Tensor> weights, std::vector<Tensor> grads, Tensor flat, Tensor flat_grad,
           Tensor exp_avg, Tensor exp_avg_sq, Tensor count, int64_t max_batch, int64_t flush_every, bool bf16)
      : train_x_(std::move(train_x)), w_(std::move(weights)), g_(std::move(grads)), flat_(std::move(flat)),
        flat_grad_(std::move(flat_grad)), m_(std::move(exp_avg)), v_(std::move(exp_avg_sq)),
        count_(std::move(count)), flush_every_(flush_every), bf16_(bf16) {
    TORCH_CHECK(w_.size() == 8 && g_.size() == 8, "SeedStep wants the 4 layers' weights and biases");
    const int64_t pixels = w_[0].size(1), hidden = w_[0].size(0), two_latent = w_[2].size(0);
    latent_ = two_latent / 2;
    const auto f32 = flat_.options(), lp = bf16 ? f32.dtype(at::kBFloat16) : f32;
    if (bf16) {  // bf16 views at the fp32 views' offsets into the flat tensors
      flat_lp_ = at::empty_like(flat_, lp), grad_lp_ = at::empty_like(flat_grad_, lp);
      for (size_t k = 0; k < w_.size(); ++k) {
        wl_.push_back(flat_lp_.as_strided(w_[k].sizes(), w_[k].strides(),
                                          w_[k].storage_offset() - flat_.storage_offset()));
        gl_.push_back(grad_lp_.as_strided(g_[k].sizes(), g_[k].strides(),
                                          g_[k].storage_offset() - flat_grad_.storage_offset()));
      }
    } else {
      flat_lp_ = flat_, grad_lp_ = flat_grad_, wl_ = w_, gl_ = g_;
    }
    auto buffer = [&](int64_t cols, const at::TensorOptions& o) { return at::empty({max_batch, cols}, o); };
    // in the products' precision: what they read and write; in fp32: what the loops and the loss read
    auto alias_or_f32 = [&](const Tensor& t) { return bf16 ? at::empty_like(t, f32) : t; };
    xb_ = buffer(pixels, f32), xl_ = bf16 ? buffer(pixels, lp) : xb_;
    h1_ = buffer(hidden, lp), e_ = buffer(two_latent, lp), ef_ = alias_or_f32(e_);
    sigma_ = buffer(latent_, f32), z_ = buffer(latent_, f32), zl_ = bf16 ? buffer(latent_, lp) : z_;
    h3_ = buffer(hidden, lp), logits_ = buffer(pixels, lp), logitsf_ = alias_or_f32(logits_);
    dl_ = buffer(pixels, f32), dll_ = bf16 ? buffer(pixels, lp) : dl_;
    dh3_ = buffer(hidden, lp), dz_ = buffer(latent_, lp), dzf_ = alias_or_f32(dz_);
    de_ = buffer(two_latent, f32), del_ = bf16 ? buffer(two_latent, lp) : de_, dh1_ = buffer(hidden, lp);
    per_image_ = at::empty({max_batch}, f32);
  }

  // One step on the images train_x[idx] with noise eps [batch, latent]: the gradient, then Adam.
  // Returns (-sum log p(x|z), KL) summed over the batch, before the update.
  std::tuple<double, double> step(const Tensor& idx, const Tensor& eps) {
    const int64_t n = idx.size(0);
    auto rows = [n](const Tensor& t) { return t.narrow(0, 0, n); };
    // (in bf16, a cast; in fp32 the two are one tensor and nothing is copied)
    auto cast = [](const Tensor& dst, const Tensor& src) { if (!dst.is_same(src)) dst.copy_(src); };
    Tensor xb = rows(xb_), xl = rows(xl_), h1 = rows(h1_), e = rows(e_), ef = rows(ef_), sigma = rows(sigma_);
    Tensor z = rows(z_), zl = rows(zl_), h3 = rows(h3_), logits = rows(logits_), logitsf = rows(logitsf_);
    Tensor dl = rows(dl_), dll = rows(dll_), dh3 = rows(dh3_), dz = rows(dz_), dzf = rows(dzf_), de = rows(de_);
    Tensor del = rows(del_), dh1 = rows(dh1_), per_image = rows(per_image_);
    cast(flat_lp_, flat_);
    const Tensor &w1 = wl_[0], &b1 = wl_[1], &w2 = wl_[2], &b2 = wl_[3], &w3 = wl_[4], &b3 = wl_[5], &w4 = wl_[6],
                 &b4 = wl_[7];

    // Forward: h1 = relu(x W1' + b1), [mu, logvar] = h1 W2' + b2, z = mu + exp(logvar / 2) eps,
    // h3 = relu(z W3' + b3), l = h3 W4' + b4.
    at::index_select_out(xb, train_x_, 0, idx);
    cast(xl, xb);
    at::addmm_out(h1, b1, xl, w1.t()).relu_();
    at::addmm_out(e, b2, h1, w2.t());
    cast(ef, e);
    const int64_t J = latent_;
    const float* e_p = ef.data_ptr<float>();
    const float* eps_p = eps.data_ptr<float>();
    float* s_p = sigma.data_ptr<float>();
    float* z_p = z.data_ptr<float>();
    double kld = 0.;  // KL = -1/2 sum (1 + logvar - mu^2 - sigma^2), the seed's closed form
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < J; ++j) {
        const float mu = e_p[i * 2 * J + j], logvar = e_p[i * 2 * J + J + j];
        const float s = std::exp(0.5f * logvar);
        s_p[i * J + j] = s;
        z_p[i * J + j] = mu + s * eps_p[i * J + j];
        kld += -0.5 * (1. + logvar - mu * mu - s * s);
      }
    }
    cast(zl, z);
    at::addmm_out(h3, b3, zl, w3.t()).relu_();
    at::addmm_out(logits, b4, h3, w4.t());
    cast(logitsf, logits);

    // Backward, from d(-ELBO)/dl = sigmoid(l) - x; each layer's weight gradient d_out' inp, bias gradient the
    // column sums of d_out, input gradient d_out W.
    const double nll = bernoulli_nll_and_grad(logitsf, xb, dl, per_image);
    cast(dll, dl);
    layer_grads(dll, h3, 6);
    at::mm_out(dh3, dll, w4);
    relu_backward(dh3, h3);
    layer_grads(dh3, zl, 4);
    at::mm_out(dz, dh3, w3);
    cast(dzf, dz);
    // d/dmu = dz + mu, d/dlogvar = dz eps sigma / 2 + (sigma^2 - 1) / 2
    const float* dz_p = dzf.data_ptr<float>();
    float* de_p = de.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < J; ++j) {
        const float s = s_p[i * J + j], g = dz_p[i * J + j];
        de_p[i * 2 * J + j] = g + e_p[i * 2 * J + j];
        de_p[i * 2 * J + J + j] = 0.5f * g * eps_p[i * J + j] * s + 0.5f * (s * s - 1.f);
      }
    }
    cast(del, de);
    layer_grads(del, h1, 2);
    at::mm_out(dh1, del, w2);
    relu_backward(dh1, h1);
    layer_grads(dh1, xl, 0);
    cast(flat_grad_, grad_lp_);

    // Adam, as FusedAdam: the step counter incremented just before the fused update; every flush_every steps the
    // subnormal moments set to zero (bench/training/adam.py says why that moves no weight).
    count_.add_(1);
    at::_fused_adam_({flat_}, {flat_grad_}, {m_}, {v_}, {}, {count_}, 1e-3, 0.9, 0.999, 0.0, 1e-8, false, false);
    if (flush_every_ > 0 && static_cast<int64_t>(count_.item<float>()) % flush_every_ == 0) {
      flush_subnormals_(m_);
      flush_subnormals_(v_);
    }
    return {nll, kld};
  }

 private:
  void layer_grads(const Tensor& d_out, const Tensor& inp, size_t k) {
    at::mm_out(gl_[k], d_out.t(), inp);
    at::sum_out(gl_[k + 1], d_out, {0});
  }

  void relu_backward(Tensor& g, const Tensor& h) const {
    if (bf16_) {
      relu_backward_<int16_t>(g, h);
    } else {
      relu_backward_<int32_t>(g, h);
    }
  }

  static void flush_subnormals_(Tensor& t) {
    float* p = t.data_ptr<float>();
    const float tiny = std::numeric_limits<float>::min();
    at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) p[k] = std::fabs(p[k]) < tiny ? 0.f : p[k];
    });
  }

  Tensor train_x_;
  std::vector<Tensor> w_, g_, wl_, gl_;  // fp32 views, and the products' views (the same in fp32)
  Tensor flat_, flat_grad_, m_, v_, count_, flat_lp_, grad_lp_;
  int64_t flush_every_, latent_ = 0;
  bool bf16_;
  Tensor xb_, xl_, h1_, e_, ef_, sigma_, z_, zl_, h3_, logits_, logitsf_, dl_, dll_, dh3_, dz_, dzf_, de_, del_;
  Tensor dh1_, per_image_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<SeedStep>(m, "SeedStep")
      .def(pybind11::init<Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor, Tensor, Tensor, Tensor, Tensor,
                          int64_t, int64_t, bool>())
      .def("step", &SeedStep::step, "one training step on train_x[idx] with noise eps; returns (nll, kld)");
}
