#include "optim/clip.h"

#include <algorithm>
#include <cmath>

namespace sy {

GradSquares grad_squares(Backend& backend, const std::vector<Param*>& params) {
  GradSquares squares;
  backend.grad_norm_squares(params, squares.shared, squares.expert);
  return squares;
}

double global_grad_norm_squared(Backend& backend, const std::vector<Param*>& params) {
  const GradSquares squares = grad_squares(backend, params);
  return squares.shared + squares.expert;
}

double global_grad_norm(Backend& backend, const std::vector<Param*>& params,
                        const std::function<double(const GradSquares&)>& finish) {
  const GradSquares squares = grad_squares(backend, params);
  const double total = finish ? finish(squares) : squares.shared + squares.expert;
  return std::sqrt(total);
}

double clip_factor(double total_norm, double grad_clip) {
  if (!(grad_clip > 0)) return 1.0;
  // A NaN norm gives factor 1 (grads left alone): the caller must notice a non-finite norm.
  return std::min(1.0, grad_clip / (total_norm + 1e-6));
}

double clip_gradients(Backend& backend, std::vector<Param*>& params, double total_norm,
                      double grad_clip) {
  const double factor = clip_factor(total_norm, grad_clip);
  if (factor < 1.0)
    for (Param* param : params) {
      backend.scale(param->grad, factor);
      param->grad_squares_valid = false;
    }
  return factor;
}

}  // namespace sy
