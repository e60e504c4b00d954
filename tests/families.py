"""Tiny random models of the families users bring, built offline from transformers' own config classes, each with
the embedded model's tokenizer and a chat template in its family's style (written for these tests).

Sliding windows are a few tokens long, so the tests' prompts and answers run past them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from promptbake.models import EMBEDDED_NAME, resolve_model

WINDOW = 6   # sliding-window length in the tiny configs (the prompts are 20-60 tokens)

LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|im_end|>{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Gemma's older templates refuse a system message outright.
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}"
                  "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
                  "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# Mistral's fold the system message into the first user turn themselves.
MISTRAL_TEMPLATE = ("{{ bos_token }}{% set system = messages[0]['content'] if messages[0]['role'] == 'system' "
                    "else '' %}{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' %}"
                    "[INST] {% if loop.first and system %}{{ system }}\n\n{% endif %}{{ m['content'] }} [/INST]"
                    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}")
PHI3_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
FAMILIES = {
    # name: (config class, extra config, chat template; None keeps SmolLM2's ChatML template, "" removes it)
    "llama3": ("LlamaConfig", {"rope_theta": 500000.0}, LLAMA3_TEMPLATE),
    "qwen2": ("Qwen2Config", {}, None),                     # biases in q/k/v
    "qwen3": ("Qwen3Config", {"head_dim": 8}, None),       # q/k norms
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": WINDOW, "query_pre_attn_scalar": 8,
                                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}, GEMMA_TEMPLATE),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": WINDOW, "query_pre_attn_scalar": 8,
                                    "layer_types": ["sliding_attention", "full_attention"]}, GEMMA_TEMPLATE),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}, MISTRAL_TEMPLATE),
    "phi3": ("Phi3Config", {}, PHI3_TEMPLATE),             # fused qkv_proj and gate_up_proj
    "olmo2": ("Olmo2Config", {}, None),
    "gpt_neox": ("GPTNeoXConfig", {"use_parallel_residual": True}, ""),   # a base model: no chat template
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}, None),
}


def random_model(build, config):
    """build(config) seeded, with larger weights than the default init, so prompts visibly change the distribution."""
    torch.manual_seed(0)
    model = build(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    return model


def tokenizer_for(template: str | None):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_NAME).folder)
    if template == "":
        tokenizer.chat_template = None
    elif template is not None:
        tokenizer.chat_template = template
    return tokenizer


def build_family(name: str, folder: Path) -> Path:
    """Save a tiny random model of family `name` with its tokenizer into `folder`; returns the folder."""
    config_class, extra, template = FAMILIES[name]
    tokenizer = tokenizer_for(template)
    kwargs = dict(COMMON, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
    config = getattr(transformers, config_class)(**kwargs)
    model = random_model(AutoModelForCausalLM.from_config, config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_qwen2_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Qwen2 of `model_dir` as a float32 GGUF: llama.cpp's tensor names for qwen2 (no row reordering: only
    llama-architecture GGUFs reorder q/k), its hyperparameter keys, and the embedded GGUF's tokenizer metadata."""
    import gguf

    from promptbake.models import embedded_gguf_path

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = model.config
    arch = gguf.MODEL_ARCH.QWEN2
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]) if getattr(config, "rope_parameters", None)
                              else float(config.rope_theta))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    source = gguf.GGUFReader(embedded_gguf_path())
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            writer.add_key_value(key, field.contents(), vtype,
                                 sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name, name
        writer.add_tensor(gguf_name, tensor.numpy().astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
