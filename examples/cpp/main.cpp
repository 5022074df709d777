// qinterp from C++: dead neurons of three layers over a task's prompts, for the full-precision
// model and its NF4 copy, and the integrated-gradient salience of one prompt.
//   qinterp_example MODEL TASK_CSV_OR_NAME [DATA_DIR]
#include <ATen/ATen.h>

#include <iostream>

#include <qinterp/qinterp.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: qinterp_example MODEL TASK [DATA_DIR]\n";
    return 2;
  }
  try {
    const std::string path = argv[1];
    const auto task = qinterp::experiment::load_task(argv[2], argc > 3 ? argv[3] : "");
    auto tok = qinterp::load_tokenizer(qinterp::text::find_tokenizer(path));
    for (const std::string spec : {"fp32", "nf4"}) {
      qinterp::LoadOptions lo;
      lo.quant = spec;
      auto model = qinterp::load_model(path, lo);
      const auto layers = qinterp::experiment::default_layers(model->config().num_layers);
      std::vector<qinterp::analysis::DeadNeurons> dead(layers.size());
      qinterp::model::Hooks hooks;
      for (size_t i = 0; i < layers.size(); ++i)
        hooks.add("blocks." + std::to_string(layers[i]) + ".mlp.hook_act",
                  [&dead, i](const at::Tensor& act, const qinterp::model::HookContext& ctx) -> std::optional<at::Tensor> {
                    dead[i].update(act, ctx.mask);  // [B, T, neurons], padding masked out
                    return std::nullopt;
                  });
      std::vector<std::string> prompts;
      for (size_t i = 0; i < 16 && i < task.examples.size(); ++i) prompts.push_back(task.prompt(i));
      const auto batch = qinterp::text::encode_batch(*tok, prompts);  // left padding
      {
        c10::InferenceMode im;
        model->forward(batch.ids, batch.mask, &hooks);
      }
      std::cout << spec << " dead neurons:";
      for (size_t i = 0; i < layers.size(); ++i)
        std::cout << " layer " << layers[i] << " " << dead[i].finalize().at("count").item<int64_t>() << "/"
                  << model->config().intermediate_size;
      std::cout << " (" << dead[0].tokens() << " tokens)\n";

      // IG on the first prompt, target = the model's greedy answer token.
      const at::Tensor ids = at::tensor(tok->encode(prompts[0]), at::kLong);
      const int64_t target = model->forward(ids.unsqueeze(0)).select(1, ids.size(0) - 1).argmax(-1).item<int64_t>();
      std::vector<std::string> names;
      for (int64_t l : layers) names.push_back("blocks." + std::to_string(l) + ".mlp.hook_act");
      qinterp::analysis::IntegratedGradients ig(model, names);
      const auto res = ig.attribute(ids, target);
      std::cout << spec << " salient neurons (positions mode):";
      for (const auto& n : names) {
        qinterp::analysis::SalientNeurons s("positions");
        s.update({res.at(n).attributions});
        std::cout << " " << n << " " << s.finalize().at("count").item<int64_t>();
      }
      std::cout << "\n";
    }
  } catch (const qinterp::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
