"""Tiny Qwen3 models and LoRA adapters, built locally: the demo's base, and the tests' models.

No weights can be downloaded, so the demo and the tests go through the loading path real
checkpoints use (safetensors, tokenizer files, chat template, PEFT adapter folders) with
models small enough to build in seconds and run on two CPU cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TINY_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# vLLM and most kernels prefer an embedding size that is a multiple of 64;
# the spare rows are simply never produced by the tokenizer.
_VOCAB_MULTIPLE = 64
# PEFT's random (init_lora_weights=False) factors are already large next to
# the 0.02-std base weights; this keeps the effect strong but finite.
_LORA_B_SCALE = 4.0
# Word-level pre-tokens for a base trained on a known corpus (the demo): words, whitespace
# runs and punctuation runs each stand alone, so a word copied from a note into a JSON string
# keeps its token ids (with GPT-2 style pre-tokens the note has ` dolore` and the answer
# `"dolore`, and the first token of every copied span must be translated).
WORD_PRETOKENS = r"\w+|\s+|[^\w\s]+"

# Same text layout as Qwen3's template, minus tools and reasoning history,
# which the tiny model never sees.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}"
    "{%- set content = message['content'] %}"
    "{%- else %}"
    "{%- set content = '' %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Invented notes (no real patient data); accents and symbols make the BPE
# learn multi-byte merges that real Italian notes need.
_CORPUS = """\
Paziente di 72 anni ricoverato per polmonite, febbre 38,5 °C.
Terapia con amoxicillina 1 g per os ogni 8 ore per sette giorni.
Paziente con febbre e tosse da tre giorni, dispnea da sforzo, SpO2 94% in aria.
Anamnesi: ipertensione arteriosa in terapia con ramipril 5 mg/die.
Diabete mellito tipo 2 in metformina 850 mg due volte al dì.
All'esame obiettivo: murmure vescicolare ridotto alla base destra.
Rantoli crepitanti bibasali, addome trattabile e non dolente.
Esami: PCR 12,4 mg/dL, leucociti 14.300/µL, creatinina 1,1 mg/dL.
Rx torace: addensamento parenchimale al lobo inferiore destro.
Si imposta terapia con ceftriaxone 2 g e.v. ed azitromicina 500 mg per os.
La paziente riferisce dolore toracico oppressivo irradiato al braccio sinistro.
ECG: ritmo sinusale, sopraslivellamento del tratto ST in sede inferiore.
Allergie: penicillina (orticaria). Nega allergie alimentari. Non fumatore.
Dimesso in buone condizioni generali, controllo ambulatoriale tra due settimane.
Terapia domiciliare: bisoprololo 2,5 mg, atorvastatina 40 mg, cardioaspirina.
Diagnosi di dimissione: polmonite acquisita in comunità, già risolta.
Il paziente è vigile, orientato e collaborante; nessun edema declive.
Proseguire paracetamolo 1000 mg al bisogno, massimo tre volte al giorno.
Frattura scomposta del radio distale sinistro dopo caduta accidentale.
Glicemia a digiuno 182 mg/dL, emoglobina glicata 8,1%: insulina glargine 14 UI.
Visita neurologica: deficit di forza all'arto superiore destro, afasia.
Patient is a 54-year-old male presenting to the ED with chest pain.
History of hypertension, type 2 diabetes and hyperlipidemia.
Takes lisinopril 10 mg daily and metformin 500 mg BID.
Vitals: BP 158/94, HR 102, RR 20, T 37.9 °C, SpO2 96% on room air.
Troponin I elevated at 0.45 ng/mL; ECG shows ST depression in leads V4-V6.
Started on aspirin 325 mg, heparin drip and nitroglycerin.
Chief complaint: fever, productive cough and shortness of breath for three days.
Chest X-ray: right lower lobe consolidation, community-acquired pneumonia.
Allergic to sulfa drugs (rash). Denies smoking; drinks alcohol socially.
Assessment and plan: sepsis secondary to urinary tract infection.
Discharged home on amoxicillin-clavulanate 875 mg twice daily for seven days.
The patient denies nausea, vomiting, headache or abdominal pain.
Labs: WBC 15.2, hemoglobin 11.9, platelets 245, sodium 134, potassium 4.1.
Follow up with primary care in one week; return to the ED if symptoms worsen.
Nota: "dolore" riferito come 'bruciante'; path C:\\referti\\2024\\nota.txt
Colonne separate da tab:\tfarmaco\tdose\tvia.
Caffè, perché, città, più, già, però: è così. Àncora, Èrba, Òpera.
{"entities": [{"text": "amoxicillina", "label": "DRUG"}]}
Riepilogo: 1) sospendere warfarin; 2) enoxaparina 4000 UI s.c.; 3) INR.
Emergency note — patient reports “severe” pain 8/10; ibuprofen 400 mg given.
""".splitlines()


@dataclass(frozen=True)
class TinyShape:
    """Transformer size of a tiny base (the default is the tests' random-weight model)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1


def train_word_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with word-level pre-tokens (`WORD_PRETOKENS`), merges learnt from the
    built-in corpus plus `corpus`, wrapped as a transformers fast tokenizer with Qwen3's
    special tokens and chat layout (the demo base's tokenizer)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level, with the full 256-byte alphabet seeded, so that any Unicode
    # input (emoji, CRLF, control chars) maps to tokens and never to <unk>.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PRETOKENS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*_CORPUS, *corpus], trainer=trainer)
    # Qwen3 registers the think markers as added but non-special tokens, so
    # skip_special_tokens keeps them and reasoning parsers can see them.
    tok.add_tokens(
        [
            AddedToken(THINK_OPEN, special=False, normalized=False),
            AddedToken(THINK_CLOSE, special=False, normalized=False),
        ]
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call,unused-ignore]
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=40960,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_base(
    out_dir: Path,
    *,
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    shape: TinyShape = TinyShape(),
    vocab_size: int | None = None,
) -> Path:
    """Write a random-weight tiny Qwen3ForCausalLM (safetensors) with `tokenizer` into out_dir,
    as a real checkpoint is laid out (config, weights, tokenizer, chat template); return out_dir.

    The embedding has `vocab_size` rows (default: the tokenizer's size rounded up to 64).
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = vocab_size or -(-len(tokenizer) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    if rows < len(tokenizer):
        raise ValueError(f"vocab_size {rows} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    if not isinstance(pad_id, int) or not isinstance(eos_id, int):
        raise RuntimeError("the tokenizer lacks Qwen3's special tokens")

    config = Qwen3Config(
        vocab_size=rows,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        # vLLM's CPU attention rejects small head sizes such as 16.
        head_dim=64,
        max_position_embeddings=40960,  # as Qwen3-1.7B
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="bfloat16",
    )
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).bfloat16()  # type: ignore[no-untyped-call,unused-ignore]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call,unused-ignore]
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    rank: int = 8,
    target_modules: Sequence[str] = TINY_TARGET_MODULES,
) -> Path:
    """Write a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for the tiny base; return out_dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = str(Path(base_dir).resolve())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    # LoRA factors are drawn when the layers are wrapped, so seed right before.
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(_LORA_B_SCALE)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)

    # vLLM and our registry read this field; pin it to the absolute base path
    # whatever PEFT derived from the model's name_or_path.
    config_path = out_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_path
    # PEFT stores target_modules from a set; sort it so the file is reproducible.
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True), encoding="utf-8")
    return out_dir
