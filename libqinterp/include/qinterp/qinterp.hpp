// Umbrella header: the whole public C++ API of qinterp.
#pragma once
#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/io/llama2c.hpp"
#include "qinterp/io/safetensors.hpp"
#include "qinterp/model/config.hpp"
#include "qinterp/model/hooks.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/quant/dequantize.hpp"
#include "qinterp/quant/gguf_blocks.hpp"
#include "qinterp/text/tokenizer.hpp"
#include "qinterp/version.hpp"
