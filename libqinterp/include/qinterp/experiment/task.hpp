// Tasks: a CSV of prompts and gold answers, a prompt template, label words, and the paper's
// scoring (PROTOCOLS.md §1.2). Built in: the paper's BoolQ (with its template), PIQA, HellaSwag
// and Jigsaw toxicity from ../shared/datasets/paper1; IMDB and anything else from a CSV the user
// gives (columns `prompt,gold`, or named ones).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qinterp::text {
class Tokenizer;
}

namespace qinterp::experiment {

// RFC 4180 CSV: a header row, then records; fields may be quoted ("..." with "" for a quote) and
// then hold commas and newlines. Throws Error naming the file and line of a malformed record
// (an unterminated quote, text after a closing quote, a record with another number of fields).
struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> lines;  // the line each record starts on (1-based; the header is line 1)
};
CsvTable read_csv(const std::string& path);

struct Example {
  std::string prompt;  // as in the CSV
  std::string gold;
  int64_t line = 0;  // in the CSV
};

struct TaskOptions {
  std::string prompt_template;            // "{}" stands for the CSV prompt; "" = the built-in's
  std::vector<std::string> labels;        // "" = the built-in's, else the distinct gold values
  std::string prompt_column = "prompt", gold_column = "gold";
};

struct Task {
  std::string name;             // boolq, piqa, hellaswag, toxicity, or the CSV's file stem
  std::string source;           // the CSV
  std::string prompt_template;  // "{}" = the prompt as it is
  std::vector<std::string> labels;  // label words, e.g. True, False (gold values are among them)
  std::vector<Example> examples;

  // The prompt the model sees for prediction (template applied).
  std::string prompt(size_t i) const;
  // Index of example i's gold among labels.
  int64_t gold_index(size_t i) const;
};

// Names of the built-in tasks.
const std::vector<std::string>& builtin_tasks();
// A built-in task by name (its CSV under data_dir), or a CSV path. Throws Error for an unknown
// name (listing the built-ins), a missing file, a missing column, an empty table.
Task load_task(const std::string& name_or_csv, const std::string& data_dir, const TaskOptions& o = {});

// The paper's scoring: gold.strip().lower() is a substring of answer.strip().lower() (ASCII case
// folding; Python's str.strip() whitespace).
bool paper_correct(const std::string& answer, const std::string& gold);
std::string strip(const std::string& s);

// The text a token stands for, as the authors' tokenizer.decode(id) gives it: the decoded bytes,
// or for a special token (which decode() leaves out) its piece, e.g. "<|im_end|>".
std::string token_text(const text::Tokenizer& tok, int64_t id);

// Chat templates: a prompt wrapped as one user turn with the generation prompt after it, as
// transformers' apply_chat_template(add_generation_prompt=True) renders the model's template.
// Families recognised from the template's text: ChatML (<|im_start|>, with the template's default
// system message), Llama-2 ([INST]), Gemma (<start_of_turn>). `chat_template_of` reads the template
// from a GGUF (tokenizer.chat_template) or a Hugging Face directory (tokenizer_config.json or
// chat_template.jinja); "" when there is none.
std::string chat_template_of(const std::string& model_path);
std::string apply_chat_template(const std::string& template_text, const std::string& prompt);

}  // namespace qinterp::experiment
