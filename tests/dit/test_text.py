"""The text encoder: tiny seeded encoder, Hugging Face T5/mT5 folders, our saved folder, offline errors."""

import itertools
import json
import random

import pytest
import torch

from components.core.config import ConfigError, validate_config
from components.dit.text import (
    SETTINGS_FILE,
    TextEncoderConfig,
    TinyTextEncoderConfig,
    build_tiny,
    load_text_encoder,
)

CAPTIONS = [
    "a red circle moving left on a blue background",
    "a blue square moving right on a red background",
    "",
    "A green triangle moving up on a black background",
]


@pytest.fixture(scope="module")
def tiny():
    return load_text_encoder(TextEncoderConfig(source="tiny", max_length=64))


def test_tiny_encode_shapes_mask_and_dtype(tiny):
    text, mask = tiny.encode(CAPTIONS)
    assert tiny.d_model == 64
    assert text.shape == (4, 64, 64) and text.dtype == torch.float32  # fp32 on CPU under precision "auto"
    assert mask.shape == (4, 64) and mask.dtype == torch.int64
    # byte-level: one token per byte of the cleaned caption, plus </s>; valid tokens come first
    assert mask.sum(dim=1).tolist() == [len(c) + 1 for c in CAPTIONS] == [46, 47, 1, 49]
    assert torch.equal(mask[0, :46], torch.ones(46, dtype=torch.int64)) and mask[0, 46:].sum() == 0
    assert torch.isfinite(text).all()


def test_empty_caption_is_end_of_sequence_then_padding(tiny):
    input_ids, mask = tiny.tokenize([""])
    assert input_ids[0, 0].item() == tiny.tokenizer.eos_token_id
    assert (input_ids[0, 1:] == tiny.tokenizer.pad_token_id).all() and mask[0].tolist() == [1] + [0] * 63
    empty, _ = tiny.encode([""])
    caption, _ = tiny.encode([CAPTIONS[0]])
    assert empty[0, 0].abs().sum() > 0  # a real encoding of </s>, not a null embedding
    assert not torch.allclose(empty[0, 0], caption[0, 0], atol=0.1)


def test_different_captions_give_clearly_different_embeddings(tiny):
    text, mask = tiny.encode(CAPTIONS[:2])
    # "red circle ... left" vs "blue square ... right": same length class, different words
    difference = (text[0, :45] - text[1, :45]).norm(dim=-1)  # (45,)
    scale = text[0, :45].norm(dim=-1)
    assert (difference / scale).mean() > 0.3
    # a capitalised, unclean copy of a caption cleans to the same text and so to the same embeddings
    again, _ = tiny.encode(["  A RED Circle moving left on a blue background  "])
    assert torch.equal(again[0], text[0])


def test_tiny_embeddings_tell_colour_shape_and_direction_apart(tiny):
    """The tiny DiT must learn these from captions: a linear read-out of the token embeddings, fitted on
    70 % of the combinations, names the object's colour, shape and direction on the other 30 %."""
    colours, shapes, directions = ["red", "green", "blue", "yellow", "white", "purple"], ["circle", "square",
                                  "triangle"], ["left", "right", "up", "down"]
    rows = [(c, s, d, b) for c, s, d, b in itertools.product(colours, shapes, directions, colours) if b != c]
    random.Random(0).shuffle(rows)
    text, _ = tiny.encode([f"a {c} {s} moving {d} on a {b} background" for c, s, d, b in rows])
    features = text.flatten(1)  # (N, L * C): cross-attention reads tokens, not a pooled vector
    train = int(0.7 * len(rows))
    gram = features[:train] @ features[:train].T  # kernel ridge regression in its dual form
    for column, names in [(0, colours), (1, shapes), (2, directions), (3, colours)]:
        labels = torch.tensor([names.index(row[column]) for row in rows])
        targets = torch.nn.functional.one_hot(labels[:train], len(names)).float()
        weights = torch.linalg.solve(gram + 0.1 * torch.eye(train), targets)
        predicted = (features[train:] @ features[:train].T @ weights).argmax(dim=1)
        assert (predicted == labels[train:]).float().mean() > 0.9, names


def test_padding_does_not_change_valid_tokens():
    long = load_text_encoder(TextEncoderConfig(source="tiny", max_length=128))
    short = load_text_encoder(TextEncoderConfig(source="tiny", max_length=64))
    padded, mask = long.encode(CAPTIONS)
    trimmed, trimmed_mask = long.encode(CAPTIONS, pad_to_max=False)
    other, _ = short.encode(CAPTIONS)
    assert trimmed.shape == (4, 49, 64) and torch.equal(trimmed_mask, mask[:, :49])  # longest caption: 48 + </s>
    for row, length in enumerate(mask.sum(dim=1).tolist()):
        torch.testing.assert_close(trimmed[row, :length], padded[row, :length], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other[row, :length], padded[row, :length], atol=1e-5, rtol=1e-5)
    # a caption encoded alone equals the same caption in a batch
    alone, _ = long.encode(CAPTIONS[3:], pad_to_max=False)
    torch.testing.assert_close(alone[0], trimmed[3], atol=1e-5, rtol=1e-5)


def test_cleaning_settings():
    raw = ["<b>Red</b> 圆 circle"]
    as_given = load_text_encoder(TextEncoderConfig(max_length=32, clean_captions=False))
    no_chinese = load_text_encoder(TextEncoderConfig(max_length=32, keep_chinese=False))
    assert as_given.prepare(raw) == raw and as_given.tokenize(raw)[1].sum() == len(raw[0].encode()) + 1
    assert no_chinese.prepare(raw) == ["red circle"]
    assert load_text_encoder(TextEncoderConfig(max_length=32)).prepare(raw) == ["red 圆 circle"]


def test_truncation_keeps_end_of_sequence():
    encoder = load_text_encoder(TextEncoderConfig(source="tiny", max_length=16))
    input_ids, mask = encoder.tokenize([CAPTIONS[0]])
    assert mask.sum().item() == 16 and input_ids[0, -1].item() == encoder.tokenizer.eos_token_id
    text, _ = encoder.encode([CAPTIONS[0]])
    assert text.shape == (1, 16, 64)


def test_tiny_weights_come_from_the_seed_alone():
    first, _ = build_tiny(TinyTextEncoderConfig(seed=7))
    torch.manual_seed(123)  # the global generator must not matter
    second, _ = build_tiny(TinyTextEncoderConfig(seed=7))
    other, _ = build_tiny(TinyTextEncoderConfig(seed=8))
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["shared.weight"], c["shared.weight"])
    # the embedding table is the generator's first draw, at unit std
    assert torch.equal(a["shared.weight"], torch.randn(384, 64, generator=torch.Generator().manual_seed(7)))


def test_embeddings_can_feed_a_model_in_training(tiny):
    text, _ = tiny.encode(CAPTIONS[:1])  # computed under inference mode inside encode
    projection = torch.nn.Linear(64, 8)
    projection(text).sum().backward()
    assert projection.weight.grad is not None and not text.requires_grad


def test_save_and_reload_our_folder(tmp_path, tiny):
    folder = tmp_path / "text-encoder"
    tiny.save(folder)
    assert {"config.json", "model.safetensors", SETTINGS_FILE} <= {p.name for p in folder.iterdir()}
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["max_length"] == 64 and settings["clean_captions"] is True and settings["keep_chinese"] is True

    loaded = load_text_encoder(folder)  # the folder's own settings apply
    assert loaded.max_length == 64 and loaded.d_model == 64
    expected, expected_mask = tiny.encode(CAPTIONS)
    text, mask = loaded.encode(CAPTIONS)
    assert torch.equal(text, expected) and torch.equal(mask, expected_mask)

    # a config's explicit fields win over the folder's; unset ones still come from it
    overridden = load_text_encoder(TextEncoderConfig(source=str(folder), max_length=32))
    assert overridden.max_length == 32 and overridden.keep_chinese is True


def test_save_and_reload_through_s3(s3_bucket, tiny):
    uri = f"{s3_bucket}/runs/text-encoder"
    tiny.save(uri)
    loaded = load_text_encoder(uri)
    assert torch.equal(loaded.encode(CAPTIONS)[0], tiny.encode(CAPTIONS)[0])


def _write_sentencepiece_tokenizer(folder):
    """A hub-style mT5 tokenizer: only `spiece.model` (trained here on a few captions) and its settings."""
    import io

    import sentencepiece

    captions = ["a red circle moving left on a blue background", "a blue square moving right", "一只猫在草地上奔跑"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions * 10), model_writer=model, vocab_size=48, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0}))


def _write_unigram_tokenizer(folder):
    """A T5 tokenizer saved as `tokenizer.json`, built from a handful of pieces."""
    from transformers import T5Tokenizer

    pieces = ["▁a", "▁red", "▁blue", "▁circle", "▁square", "▁moving", "▁left", "▁right", "▁", "e", "r", "l"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0 - i) for i, p in enumerate(pieces)]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)


@pytest.mark.parametrize("model_type", ["mt5", "t5"])
def test_hugging_face_folder_loads_and_encodes_like_the_model_itself(tmp_path, model_type):
    """mt5: a hub-like folder (whole encoder-decoder model, spiece.model); t5: an encoder and tokenizer.json."""
    from transformers import AutoTokenizer, MT5Config, MT5ForConditionalGeneration, T5Config, T5EncoderModel

    folder = tmp_path / model_type
    folder.mkdir()
    if model_type == "mt5":
        _write_sentencepiece_tokenizer(folder)
    else:
        _write_unigram_tokenizer(folder)
    config_class, model_class = {"mt5": (MT5Config, MT5ForConditionalGeneration), "t5": (T5Config, T5EncoderModel)}[
        model_type]
    torch.manual_seed(0)
    reference = model_class(config_class(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                         num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval()
    reference.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # chosen by config.json's model_type, as on the hub
    assert len(tokenizer) <= 64

    encoder = load_text_encoder(TextEncoderConfig(source=str(folder), max_length=12))
    assert type(encoder.model).__name__ == f"{model_type.upper()}EncoderModel" and encoder.d_model == 32
    assert encoder.keep_chinese is (model_type == "mt5")  # T5's vocabulary has no Chinese
    captions = ["A red circle moving left", "", "<b>blue</b> square 一只猫"]
    text, mask = encoder.encode(captions)

    cleaned = ["a red circle moving left", "", "blue square 一只猫" if model_type == "mt5" else "blue square"]
    tokens = tokenizer(cleaned, max_length=12, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.get_encoder()(**tokens).last_hidden_state
    assert torch.equal(mask, tokens["attention_mask"]) and mask[1].sum() == 1
    torch.testing.assert_close(text, expected, atol=0, rtol=0)


def test_hub_id_resolves_from_the_local_cache_without_downloading(tmp_path, monkeypatch, tiny):
    # a Hugging Face cache holding one snapshot of "t2v-tests/tiny-t5", laid out as huggingface_hub does
    repo = tmp_path / "hub" / "models--t2v-tests--tiny-t5"
    snapshot = repo / "snapshots" / ("0" * 40)
    tiny.model.save_pretrained(snapshot)
    tiny.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    # where HF_HUB_CACHE points (huggingface_hub reads the variable once, at import)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    encoder = load_text_encoder(TextEncoderConfig(source="t2v-tests/tiny-t5", max_length=64))
    assert torch.equal(encoder.encode(CAPTIONS)[0], tiny.encode(CAPTIONS)[0])


def test_bf16_precision(tiny):
    encoder = load_text_encoder(TextEncoderConfig(source="tiny", max_length=64, precision="bf16"))
    text, _ = encoder.encode(CAPTIONS[:1])
    assert encoder.dtype == torch.bfloat16 and text.dtype == torch.bfloat16
    torch.testing.assert_close(text.float(), tiny.encode(CAPTIONS[:1])[0], atol=0.1, rtol=0.1)


def test_nothing_downloads_by_default_and_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text.source t2v-tests/no-such-encoder: not a local folder "
                                                r"and not in the Hugging Face cache; .*text.allow_download=true"):
        load_text_encoder("t2v-tests/no-such-encoder")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_text_encoder(str(tmp_path / "missing" / "encoder"))
    with pytest.raises(FileNotFoundError, match=r"not a model folder \(no config.json\)"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not a T5-family encoder"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mt5", "d_model": 8, "num_heads": 2}))
    with pytest.raises(FileNotFoundError, match=f"text.source {tmp_path}: .*model.safetensors"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OSError, match=f"text.source {tmp_path}: could not read its config.json"):
        load_text_encoder(tmp_path)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="text.yaml: unknown key 'tiny.width'"):
        validate_config(TextEncoderConfig, {"tiny": {"width": 3}}, "text.yaml")
    with pytest.raises(ConfigError, match="key 'max_length'"):
        validate_config(TextEncoderConfig, {"max_length": 0}, "text.yaml")
    with pytest.raises(TypeError, match="a list of captions"):
        load_text_encoder(TextEncoderConfig(max_length=8)).encode("one string")
