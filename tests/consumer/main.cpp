// Loads a model through the installed qinterp and prints the argmax after BOS.
#include <ATen/ATen.h>

#include <iostream>

#include <qinterp/qinterp.hpp>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    auto model = qinterp::load_model(argv[1]);
    at::Tensor logits = model->forward(at::tensor({int64_t{1}}, at::kLong).view({1, 1}));
    std::cout << "argmax " << logits[0][0].argmax().item<int64_t>() << std::endl;
  } catch (const qinterp::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
