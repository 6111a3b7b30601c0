"""Writing a merged Llama-family model and its tokenizer as one GGUF file, with the ``gguf`` package.

Why not llama.cpp's ``convert_hf_to_gguf.py``: it is a script of the llama.cpp repository, not a
package, and pulls the whole of llama.cpp's Python tree. The GGUF layout of a Llama model is small
and stable: the tensor names come from ``gguf``'s own name map, Q and K rows are permuted into the
interleaved rotary order llama.cpp expects (transformers undoes it on load), 1-D norms stay F32, and
the tokenizer is the byte-level BPE vocabulary with its merges, special ids and chat template. The
round trip (``transformers`` loading the file with ``gguf_file=`` and answering as the merged model
does) is checked by the export stage before anything is published.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from private_finetuning.errors import ExportError

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# GGUF tensor types this module writes, by the name used in file names and the config.
TYPES = ("f16", "q8_0")
SUPPORTED_MODEL_TYPES = ("llama",)


def unsupported(config: dict[str, Any], tokenizer_dir: Path) -> str | None:
    """Why this model cannot be written as GGUF here, or None if it can."""
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return (f"GGUF export writes {', '.join(SUPPORTED_MODEL_TYPES)} models; this one is "
                f"{config.get('model_type')!r}")
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    kind, pre = spec.get("model", {}).get("type"), (spec.get("pre_tokenizer") or {}).get("type")
    if kind != "BPE" or pre not in ("ByteLevel", "Sequence"):
        return f"GGUF export writes byte-level BPE vocabularies; this tokenizer is {kind} with a {pre} pre-tokenizer"
    return None


def rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection from HF's half-split rotary order to llama.cpp's interleaved one."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_type(array: np.ndarray, kind: str) -> Any:
    import gguf

    if array.ndim == 1 or kind == "f32":
        return gguf.GGMLQuantizationType.F32
    if kind == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _add_tensors(writer: GGUFWriter, state: dict[str, Any], config: dict[str, Any], kind: str) -> None:
    import gguf

    blocks = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # tied: llama.cpp reuses token_embd, as the source model does
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r} of a llama model; cannot export it")
        array = tensor.float().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            array = rotary_permute(array, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = rotary_permute(array, kv_heads)
        qtype = _tensor_type(array, kind)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _add_hparams(writer: GGUFWriter, config: dict[str, Any], name: str, kind: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer: GGUFWriter, tokenizer_dir: Path, tokenizer: PreTrainedTokenizerBase,
                   vocab_size: int) -> None:
    """The byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``), padded to the embedding rows."""
    import gguf

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model", {})
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    added = {t["id"] for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token in (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token),
                       ("unk", tokenizer.unk_token), ("pad", tokenizer.pad_token)):
        if token is not None:
            getattr(writer, f"add_{key}_token_id" if key != "unk" else "add_unk_token_id")(
                tokenizer.convert_tokens_to_ids(token))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer_name(tokenizer_dir: Path) -> str:
    """llama.cpp's name for the pre-tokenizer, as the source GGUF had it (see the tokenizer stage), else default."""
    recorded = tokenizer_dir / "gguf_tokenizer.json"
    if recorded.is_file():
        pre = json.loads(recorded.read_text(encoding="utf-8")).get("tokenizer.ggml.pre")
        if isinstance(pre, str) and pre:
            return pre
    log.warning("the base tokenizer records no llama.cpp pre-tokenizer name; writing 'default' (transformers "
                "ignores it; llama.cpp may tokenize some text differently)")
    return "default"


def write_gguf(path: Path, state: dict[str, Any], config: dict[str, Any], tokenizer_dir: Path,
               tokenizer: PreTrainedTokenizerBase, *, name: str, kind: str) -> None:
    """Write ``state`` (a merged HF state dict) as a GGUF file of type ``kind`` (f16 or q8_0)."""
    import gguf

    if kind not in TYPES:
        raise ExportError(f"GGUF type {kind!r} is not one of {', '.join(TYPES)}")
    reason = unsupported(config, tokenizer_dir)
    if reason:
        raise ExportError(reason)
    writer = gguf.GGUFWriter(path, "llama")
    _add_hparams(writer, config, name, kind)
    _add_tokenizer(writer, tokenizer_dir, tokenizer, config["vocab_size"])
    _add_tensors(writer, state, config, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
