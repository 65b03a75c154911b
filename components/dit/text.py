"""The text encoder: a T5-family encoder turning captions into embeddings and a key-padding mask.

    encoder = load_text_encoder(TextEncoderConfig(source="tiny"))     # or a folder, a hub id, an s3:// URI
    text, mask = encoder.encode(["a red circle moving left"])          # (B, L, C) float, (B, L) int64 0/1
    encoder.save("runs/tiny/text-encoder")                              # reloads with load_text_encoder(path)

v1.2 conditions on mT5-XXL (`google/mt5-xxl`, d_model 4096): captions cleaned twice, tokenized to 512
tokens (padding "max_length", truncation, `</s>` appended), encoded in bf16 with the attention mask
(reference notes §3.6, §4, §5.6). The `tiny` source is a small T5 encoder over ByT5's byte-level vocabulary
(no vocabulary file, so nothing is downloaded) with weights drawn from a seed, for CPU runs and tests.

Nothing downloads unless `allow_download` is true; until then a hub id resolves from the local Hugging Face
cache only. Our saved folder is a Hugging Face folder (`config.json`, `model.safetensors` in the dtype the
encoder is held in, tokenizer files) plus `text_encoder.json` with the tokenization settings, so the text
side of a run reloads exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from components.core import runtime, storage
from components.core.config import StrictModel
from components.dit.captions import clean_caption

SETTINGS_FILE = "text_encoder.json"  # marks our folder; holds the tokenization settings
_FORMAT = "t2v-text-encoder"
# A hub id is `name` or `owner/name`; anything else that is not an existing folder is a missing folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class TinyTextEncoderConfig(StrictModel):
    """A small T5 encoder (gated-GELU, relative position buckets, as T5 v1.1/mT5) over ByT5's byte vocabulary."""

    d_model: int = Field(64, ge=8)  # embedding width: the DiT's `caption_channels` must equal it
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    d_kv: int = Field(16, ge=1)  # width of one attention head
    d_ff: int = Field(128, ge=1)  # hidden width of the feed-forward block
    seed: int = 0  # weights are drawn from this seed alone: equal seeds give bitwise-equal weights


class TextEncoderConfig(StrictModel):
    """Which encoder turns captions into embeddings, and how captions are tokenized."""

    # "tiny" (built from the `tiny` group), a local folder (ours or a Hugging Face T5/mT5/UMT5 folder),
    # an s3:// URI of our folder, or a hub id such as google/mt5-xxl (from the local cache, see allow_download).
    source: str = "tiny"
    tiny: TinyTextEncoderConfig = TinyTextEncoderConfig()
    max_length: int = Field(512, ge=1)  # tokens per caption, `</s>` included (v1.2: 512)
    allow_download: bool = False  # let a hub id download into the Hugging Face cache (off: cache only)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on cuda/npu, fp32 on cpu
    clean_captions: bool = True  # the reference's caption cleaning (captions.py), applied twice
    # Keep common Chinese ideographs when cleaning. auto: kept for mT5/UMT5 and the byte-level tiny encoder,
    # removed for T5, whose vocabulary has none (the reference keys this on "mt5" in the encoder's name).
    keep_chinese: bool | Literal["auto"] = "auto"


class TextEncoder:
    """A T5-family encoder with its tokenizer and tokenization settings; weights frozen, eval mode."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, clean_captions: bool, keep_chinese: bool):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clean_captions = clean_captions
        self.keep_chinese = keep_chinese

    @property
    def d_model(self) -> int:
        """Embedding width (the DiT's `caption_channels`)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    def prepare(self, captions: Sequence[str]) -> list[str]:
        """Captions as they are tokenized: cleaned (twice) when `clean_captions` is on."""
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not one string")
        if not self.clean_captions:
            return [str(caption) for caption in captions]
        return [clean_caption(caption, keep_chinese=self.keep_chinese) for caption in captions]

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, max_length) int64 on CPU; `""` gives `</s>` then padding."""
        if len(captions) == 0:
            raise ValueError("encode() needs at least one caption")
        tokens = self.tokenizer(
            self.prepare(captions),
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]

    def encode(self, captions: Sequence[str], pad_to_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, d_model) in the encoder's dtype and the mask (B, L) int64 (1 = caption token).

        L is `max_length`, or with `pad_to_max=False` the longest caption of this batch (its valid tokens are
        unchanged: T5 attention masks padded keys and its position bias is relative). Rows beyond a caption's
        valid length hold the encoder's output for padding tokens; consumers must use the mask.
        """
        input_ids, mask = self.tokenize(captions)  # (B, max_length) each
        if not pad_to_max:
            longest = int(mask.sum(dim=1).max())
            input_ids, mask = input_ids[:, :longest], mask[:, :longest]
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, C)
        # An inference-mode tensor cannot be saved for backward; cloning outside that mode gives a normal
        # tensor, so callers may feed the embeddings to a model they are training.
        return hidden.clone(), mask

    def settings(self) -> dict[str, Any]:
        return {"format": _FORMAT, "max_length": self.max_length, "clean_captions": self.clean_captions,
                "keep_chinese": self.keep_chinese}

    def save(self, folder_or_uri: str | Path) -> str:
        """Write our folder (local or s3://): model config + safetensors, tokenizer files, then settings last."""
        uri = str(folder_or_uri)
        local = storage.local_dir(uri)
        if local is not None:
            self._save_local(Path(local))
            return uri
        with storage.staging_dir("t2v-text-") as staging:
            self._save_local(Path(staging))
            names = sorted(p.name for p in Path(staging).iterdir() if p.name != SETTINGS_FILE)
            for name in [*names, SETTINGS_FILE]:  # settings last: a folder with them is complete
                storage.put_file(Path(staging) / name, storage.join(uri, name))
        return uri

    def _save_local(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        storage.write_json(folder / SETTINGS_FILE, self.settings())


def load_text_encoder(source: str | Path | TextEncoderConfig, device: torch.device | str = "cpu") -> TextEncoder:
    """Load a text encoder on `device`, in the configured precision.

    `source` is a `TextEncoderConfig`, or any of its `source` values: "tiny", our saved folder (its saved
    settings apply, except those a config sets explicitly), a Hugging Face T5/mT5/UMT5 folder, an s3://
    URI of our folder, or a hub id (cached copies only unless `allow_download`).
    """
    config = source if isinstance(source, TextEncoderConfig) else TextEncoderConfig(source=str(source))
    device = torch.device(device)
    dtype = runtime.autocast_dtype(device, config.precision) or torch.float32
    if config.source == "tiny":
        model, tokenizer = build_tiny(config.tiny)
        encoder = _with_settings(model, tokenizer, config, saved={}, model_type="byte-level")
    elif storage.is_s3(config.source):
        encoder = _load_s3(config, dtype)
    else:
        encoder = _load_local_or_hub(config, dtype)
    return encoder.to(device, dtype)


def build_tiny(config: TinyTextEncoderConfig) -> tuple[Any, Any]:
    """The tiny encoder and its byte-level tokenizer, weights drawn from `config.seed` (bitwise reproducible)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    model_config = T5Config(
        vocab_size=len(tokenizer),  # 256 bytes + 3 special tokens + 125 sentinels, as ByT5
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / mT5
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = T5EncoderModel(model_config)
    _init_from_seed(model, config)
    return model.eval(), tokenizer


@torch.no_grad()
def _init_from_seed(model: torch.nn.Module, config: TinyTextEncoderConfig) -> None:
    """Draw every weight from one generator, in parameter order, with T5's scales (Mesh TensorFlow init).

    We do not rely on transformers' own initialisation, whose order and scales may change between versions.
    T5 does not divide attention logits by sqrt(d_kv), so the query projection is drawn smaller instead.
    """
    generator = torch.Generator().manual_seed(config.seed)
    for name, param in model.named_parameters():
        if "layer_norm" in name:
            param.fill_(1.0)
            continue
        if name.endswith("relative_attention_bias.weight") or name.startswith(("shared", "encoder.embed_tokens")):
            std = 1.0 if "relative_attention_bias" not in name else config.d_model**-0.5
        elif name.endswith(".q.weight"):
            std = (config.d_model * config.d_kv) ** -0.5
        else:
            std = param.shape[1] ** -0.5  # linear layers: 1/sqrt(fan_in)
        param.copy_(torch.randn(param.shape, generator=generator) * std)


def _with_settings(model: Any, tokenizer: Any, config: TextEncoderConfig, saved: dict[str, Any],
                   model_type: str) -> TextEncoder:
    """Settings from our folder's `text_encoder.json`, overridden by the fields a config sets explicitly."""
    explicit = config.model_fields_set
    def pick(key: str) -> Any:
        return saved[key] if key in saved and key not in explicit else getattr(config, key)
    keep_chinese = pick("keep_chinese")
    if keep_chinese == "auto":
        keep_chinese = model_type != "t5"
    return TextEncoder(model, tokenizer, max_length=pick("max_length"), clean_captions=pick("clean_captions"),
                       keep_chinese=keep_chinese)


def _load_s3(config: TextEncoderConfig, dtype: torch.dtype) -> TextEncoder:
    uri = config.source
    with storage.staging_dir("t2v-text-") as staging:
        for file_uri in storage.list_files(uri):
            name = storage.relative_to(file_uri, uri)
            if "/" not in name:
                storage.get_file(file_uri, Path(staging) / name)
        if not (Path(staging) / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"text.source {uri}: not a saved text encoder (no {SETTINGS_FILE})")
        return _load_folder(Path(staging), config, dtype)


def _load_local_or_hub(config: TextEncoderConfig, dtype: torch.dtype) -> TextEncoder:
    path = Path(config.source).expanduser()
    if path.is_dir():
        return _load_folder(path, config, dtype)
    if path.exists():
        raise NotADirectoryError(f"text.source {config.source}: not a folder; point it at a T5/mT5 model folder")
    if not _HUB_ID.fullmatch(config.source):
        raise FileNotFoundError(f"text.source {config.source}: no such folder")
    return _load_pretrained(config.source, config, dtype, saved={}, from_hub=True)


def _load_folder(folder: Path, config: TextEncoderConfig, dtype: torch.dtype) -> TextEncoder:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text.source {folder}: not a model folder (no config.json); point it at a "
                                "T5/mT5 folder saved with save_pretrained, or at one written by TextEncoder.save")
    saved: dict[str, Any] = {}
    if (folder / SETTINGS_FILE).is_file():
        saved = json.loads((folder / SETTINGS_FILE).read_text())
        if saved.get("format") != _FORMAT:
            raise ValueError(f"{folder / SETTINGS_FILE}: format is {saved.get('format')!r}, expected {_FORMAT!r}")
    return _load_pretrained(str(folder), config, dtype, saved, from_hub=False)


def _encoder_class(model_type: str, where: str) -> Any:
    import transformers

    classes = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
    if model_type not in classes:
        raise ValueError(f"{where}: model_type {model_type!r} is not a T5-family encoder "
                         f"(expected one of {', '.join(classes)})")
    return getattr(transformers, classes[model_type])


def _load_pretrained(name: str, config: TextEncoderConfig, dtype: torch.dtype, saved: dict[str, Any],
                     from_hub: bool) -> TextEncoder:
    """`name` is a local folder, or a hub id (then offline unless `allow_download`: the local cache only)."""
    from transformers import AutoConfig, AutoTokenizer

    offline = not config.allow_download
    try:
        model_config = AutoConfig.from_pretrained(name, local_files_only=offline)
    except OSError as exc:
        if from_hub and offline:
            raise FileNotFoundError(
                f"text.source {name}: not a local folder and not in the Hugging Face cache; point text.source "
                "at a local mT5 folder or set text.allow_download=true"
            ) from None
        raise OSError(f"text.source {name}: could not read its config.json: {exc}") from None
    where = f"text.source {name}"
    model_class = _encoder_class(model_config.model_type, where)
    try:
        model = model_class.from_pretrained(name, config=model_config, dtype=dtype, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except OSError as exc:
        raise FileNotFoundError(f"{where}: {exc}") from None
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model_config.vocab_size} embeddings; the folder mixes two models")
    return _with_settings(model, tokenizer, config, saved, model_type=model_config.model_type)
