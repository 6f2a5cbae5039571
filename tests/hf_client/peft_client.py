"""The Hugging Face side of the PEFT interoperability tests, run in its own process.

It imports torch, transformers and peft, never keras or keras_flix (it fails
if either was imported), so what it checks is what a PyTorch user or a
multi-LoRA server gets from the exported files.

    python peft_client.py SPEC.json

runs the sections of the JSON spec that are present, in this order:

* `"checkpoints"`: `{family: folder}`: saves a tiny random Hugging Face
  causal LM of each family (`gpt2`, `llama`, `mistral`, `qwen2`,
  `gemma`) with
  `save_pretrained`.
* `"random_adapters"`: a list of `{"model": folder, "directory": d,
  **LoraConfig arguments}`: saves a PEFT LoRA of random (nonzero) weights,
  as a fine-tuned community adapter would be.
* `"outputs"`: `{"model": folder, "inputs": npz, "path": npz, "adapters":
  {name: [adapter folder, ...]}}`: loads
  `PeftModel.from_pretrained(AutoModel.from_pretrained(folder), adapter)`
  and writes the last hidden states of the inputs without any adapter
  (`"base"`) and with each named set of adapters (one adapter as it is;
  several combined with `add_weighted_adapter(..., [1.0, ...],
  combination_type="cat")`).
"""

import json
import sys

import numpy as np
import torch
import transformers
from peft import LoraConfig
from peft import PeftModel
from peft import get_peft_model

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2
    ),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=16,
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=16,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=16,
    ),
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, max_position_embeddings=16,
    ),
}


def save_checkpoint(family, folder):
    # KerasHub's converters read the causal LM's weight names ("model.").
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[family]()).save_pretrained(folder)


def save_random_adapter(model, directory, **lora_arguments):
    torch.manual_seed(1)
    base = transformers.AutoModel.from_pretrained(model)
    config = LoraConfig(init_lora_weights=False, **lora_arguments)
    get_peft_model(base, config).save_pretrained(directory)


def hidden_states(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state.numpy()


def write_outputs(model, inputs, path, adapters):
    inputs = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
    base = transformers.AutoModel.from_pretrained(model).eval()
    results = {"base": hidden_states(base, inputs)}
    peft_model = None
    for name, folders in adapters.items():
        names = [f"{name}/{index}" for index in range(len(folders))]
        for adapter_name, folder in zip(names, folders):
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, folder, adapter_name=adapter_name)
            else:
                peft_model.load_adapter(folder, adapter_name=adapter_name)
        if len(names) > 1:
            peft_model.add_weighted_adapter(
                names, [1.0] * len(names), name, combination_type="cat"
            )
            names = [name]
        peft_model.set_adapter(names[0])
        results[name] = hidden_states(peft_model.eval(), inputs)
    np.savez(path, **results)


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    for family, folder in spec.get("checkpoints", {}).items():
        save_checkpoint(family, folder)
    for adapter in spec.get("random_adapters", []):
        save_random_adapter(**adapter)
    if "outputs" in spec:
        write_outputs(**spec["outputs"])
    leaked = sorted({"keras", "keras_flix"} & set(sys.modules))
    if leaked:
        raise SystemExit(f"the client imported {leaked}")
