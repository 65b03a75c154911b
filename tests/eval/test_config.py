import pytest

from components.core.config import ConfigError
from components.eval.config import load_eval_config
from components.eval.preflight import check


def test_presets_load_and_overrides_apply():
    tiny = load_eval_config("tiny", ["sampling.steps=30", "prompts.count=12"])
    assert (tiny.sampling.steps, tiny.prompts.count, tiny.clip.model) == (30, 12, None)
    v12 = load_eval_config("v1.2")
    assert (v12.sampling.frames, v12.sampling.height, v12.sampling.width, v12.sampling.steps) == (29, 480, 640, 100)
    assert v12.prompts.source == "validation" and v12.clip.model == "openai/clip-vit-large-patch14"


def test_bad_keys_name_the_key_and_file():
    with pytest.raises(ConfigError, match=r"tiny.yaml \(with --set sampling.stepz=3\): unknown key 'sampling.stepz'"):
        load_eval_config("tiny", ["sampling.stepz=3"])
    with pytest.raises(ConfigError, match="prompts.count"):
        load_eval_config("tiny", ["prompts.count=1"])


def test_preflight_names_a_missing_clip_model_only_for_the_eval(tmp_path):
    assert check("tiny", [], {"evaluate_dit"}) == []
    missing = ["clip.model=" + str(tmp_path / "no-clip")]
    assert check("tiny", missing, set()) == []  # another stage's check: the CLIP is not needed
    [problem] = check("tiny", missing, {"evaluate_dit"})
    assert "no-clip" in problem and "clip.allow_download=true" in problem
    (tmp_path / "no-clip").mkdir()
    assert check("tiny", missing, {"evaluate_dit"}) == []
    assert check("tiny", ["clip.model=t2v-test/not-cached", "clip.allow_download=true"], {"evaluate_dit"}) == []
