"""Run configuration: strict loading, overrides, validation that names the fix, shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from videobert.trainer.config import (
    RECIPES_DIR, BatchSizes, ConfigError, TrainConfig, batch_sizes, load_config, resolve_recipe, save_config,
    shipped_file, shipped_recipes,
)
from videobert.trainer.engine import build_ds_config
from videobert.trainer.optim import lr_multiplier

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "launch" / "recipes").glob("*.yaml"))
DATA = ["data.train=shards/train", "data.codebook=codebook.safetensors"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe, DATA)
    assert cfg.max_steps > 0 and cfg.data.train == ["shards/train"]


RESOLVED_BEFORE = json.loads((Path(__file__).parent / "data" / "recipes_resolved.json").read_text())
"""Every shipped recipe as it resolved before the recipes were cut to what differs from the defaults."""
OWNED_BY_THE_MODEL = {"model.gradient_checkpointing", "objectives.text_mlm_weight", "objectives.video_mlm_weight",
                      "objectives.alignment_weight"}
"""Keys whose unset value is now None (the model's or the preset's own value) instead of a copy of it."""
ADDED_SINCE = {"model.kernels": "auto", "data.audit": False, "optim.global_batch_size": 0, "dist_timeout_s": 0.0,
               "objectives.negatives_per_positive": 0, "objectives.alignment_loss": "binary",
               "objectives.video_span_mask_prob": 0.0, "objectives.mlm_candidates": None,
               "logging.heldout_every_steps": 0, "model.alignment_head": None}
"""Keys the config gained after that snapshot, with the defaults that keep the recorded behaviour."""
SET_SINCE = {"demo": {"logging.heldout_every_steps": 100, "objectives.negatives_per_positive": 1,
                      "model.alignment_head": "pair"}}
"""Keys added since that a recipe sets, with the value it sets."""
RETUNED = {"demo": {"objectives.negative_rate": (0.2, 0.5), "max_steps": (340, 300),
                    "objectives.alignment_weight": (1.0, 3.0), "objectives.text_mask_prob": (0.4, 0.3),
                    "optim.new_parameters_lr_multiplier": (5.0, 10.0)}}
"""Keys a recipe changed on purpose: (its value then, now). The demo's negatives are extra rows
(``negatives_per_positive``), which leaves ``negative_rate`` unused (the default now); alignment
weighed 3, text masked at 30 % and new parameters at 10x the rate lift held-out alignment at 300
steps (the recipe's comment)."""
SAME_MEANING = {"deepspeed_config": ("ds_config.json", "")}
"""Keys whose default is spelt otherwise now, with the same effect: (before, now). An empty
``deepspeed_config`` is the ds_config.json installed with the package, the file the relative name found."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("name", sorted(RESOLVED_BEFORE))
def test_recipes_resolve_as_before(name):
    before = _flat(RESOLVED_BEFORE[name])
    now = _flat(load_config(ROOT / "launch" / "recipes" / f"{name}.yaml", ["data.train=SHARDS", "data.codebook=CODEBOOK"]).to_dict())
    assert {k: now.pop(k) for k in ADDED_SINCE} == {**ADDED_SINCE, **SET_SINCE.get(name, {})}
    assert now.keys() == before.keys()
    for key, (old, new) in {**SAME_MEANING, **RETUNED.get(name, {})}.items():
        assert (before[key], now[key]) == (old, new)
        before[key] = now[key]
    changed = {k for k in now if now[k] != before[k]}
    assert changed <= OWNED_BY_THE_MODEL, {k: (before[k], now[k]) for k in changed - OWNED_BY_THE_MODEL}
    for key in changed:  # the values the model now supplies are the ones the recipes used to restate
        assert now[key] is None and before[key] in (False, 1.0), key


def test_the_large_recipe_still_asks_for_checkpointing():
    assert load_config(ROOT / "launch" / "recipes" / "large.yaml", DATA).model.gradient_checkpointing is True


def _chain(recipe: Path) -> list[Path]:
    chain = [recipe]
    while (base := yaml.safe_load(chain[-1].read_text()).get("base")) is not None:
        chain.append(chain[-1].parent / base)
    return chain


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_write_only_what_differs(recipe):
    """Each value a recipe writes changes what its base (or the defaults) would give."""
    chain = _chain(recipe)
    inherited = {}
    for base in reversed(chain[1:]):
        inherited |= _flat({k: v for k, v in yaml.safe_load(base.read_text()).items() if k != "base"})
    defaults = _flat(TrainConfig().to_dict())
    own = _flat({k: v for k, v in yaml.safe_load(recipe.read_text()).items() if k != "base"})
    restated = [k for k, v in own.items() if inherited.get(k, defaults.get(k)) == v]
    assert not restated, f"{recipe.name} restates {restated}"


def test_gpu_recipes_do_not_derive_from_the_laptop_recipe():
    for name in ("base.yaml", "large.yaml"):
        assert "debug.yaml" not in [p.name for p in _chain(ROOT / "launch" / "recipes" / name)]


def test_base_values_are_inherited_and_overridden(tmp_path):
    (tmp_path / "a.yaml").write_text("max_steps: 5\noptim: {lr: 0.5, warmup_steps: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {lr: 0.25}\n")
    cfg = load_config(tmp_path / "b.yaml", DATA + ["optim.micro_batch_size=3", "optim.betas=[0.8, 0.9]"])
    assert (cfg.max_steps, cfg.optim.lr, cfg.optim.warmup_steps) == (5, 0.25, 2)
    assert cfg.optim.micro_batch_size == 3 and cfg.optim.betas == (0.8, 0.9)


def test_all_problems_are_reported_at_once_with_their_fix(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim: {lr: -1, schedul: linear}\nobjectives: {joint_fraction: 0.9}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "bad.yaml", ["optim.micro_batch_size=many"])
    message = str(err.value)
    for expected in ("unknown key optim.schedul", "did you mean 'schedule'", "optim.micro_batch_size must be int",
                     "data.train is empty", "data.codebook is empty", "add up to 1"):
        assert expected in message, expected


def test_bad_recipe_files_are_named(tmp_path):
    (tmp_path / "broken.yaml").write_text("optim: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="names itself"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["optim.lr"])


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(RECIPES[0], DATA + ["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_deepspeed_config_is_filled_and_contradictions_refused(tmp_path):
    cfg = load_config(None, DATA + ["optim.micro_batch_size=4", "optim.grad_accum_steps=2", f"deepspeed_config={ROOT / 'ds_config.json'}"])
    ds = build_ds_config(cfg, world_size=3, hidden_size=64)
    assert ds["train_batch_size"] == 4 * 2 * 3
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    cfg.optim.precision = "bf16"
    assert build_ds_config(cfg, world_size=3, hidden_size=64)["bf16"]["enabled"] is True
    cfg.optim.precision = "fp32"
    assert build_ds_config(cfg, world_size=3, hidden_size=64)["bf16"]["enabled"] is False
    fixed = json.loads((ROOT / "ds_config.json").read_text())
    fixed["train_batch_size"] = 100
    (tmp_path / "ds.json").write_text(json.dumps(fixed))
    cfg.deepspeed_config = str(tmp_path / "ds.json")
    with pytest.raises(ConfigError, match="train_batch_size is 100 there but 24"):
        build_ds_config(cfg, world_size=3, hidden_size=64)


def test_learning_rate_schedule():
    cfg = TrainConfig(max_steps=110)
    cfg.optim.warmup_steps, cfg.optim.schedule = 10, "linear"
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(60, cfg) == pytest.approx(0.5)
    assert lr_multiplier(110, cfg) == pytest.approx(0.0)
    cfg.optim.schedule, cfg.optim.min_lr_ratio = "cosine", 0.1
    assert lr_multiplier(60, cfg) == pytest.approx(0.55)
    assert lr_multiplier(110, cfg) == pytest.approx(0.1)


def test_the_global_batch_holds_at_every_number_of_ranks():
    cfg = load_config(None, DATA + ["optim.global_batch_size=48", "optim.micro_batch_size=4"])
    assert [batch_sizes(cfg.optim, n).accumulation for n in (1, 2, 3, 4, 6, 12)] == [12, 6, 4, 3, 2, 1]
    assert {batch_sizes(cfg.optim, n).global_batch for n in (1, 2, 3, 4, 6, 12)} == {48}
    with pytest.raises(ConfigError, match=r"cannot be split over 5 ranks.*ranks that work with this micro-batch: "
                                          r"\[1, 2, 3, 4, 6, 12\]; micro-batch sizes that work at 5 ranks: none"):
        batch_sizes(cfg.optim, 5)
    with pytest.raises(ConfigError, match=r"at 8 ranks: \[1, 2, 3, 6\]"):
        batch_sizes(cfg.optim, 8)
    plain = load_config(None, DATA + ["optim.micro_batch_size=4", "optim.grad_accum_steps=2"])
    assert batch_sizes(plain.optim, 3) == BatchSizes(micro=4, accumulation=2, ranks=3), "as before without it"


def test_a_global_batch_with_an_accumulation_or_an_odd_micro_batch_is_refused():
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, DATA + ["optim.global_batch_size=48", "optim.grad_accum_steps=2"])
    with pytest.raises(ConfigError, match="not a multiple of optim.micro_batch_size=5"):
        load_config(None, DATA + ["optim.global_batch_size=48", "optim.micro_batch_size=5"])


def test_deepspeed_universal_load_stays_off(tmp_path):
    """The trainer re-partitions a checkpoint of another number of ranks itself (``trainer.reshard``):
    a DeepSpeed config that turns DeepSpeed's universal load on would read another format."""
    cfg = load_config(None, DATA + [f"deepspeed_config={ROOT / 'ds_config.json'}", "optim.global_batch_size=48",
                                    "optim.micro_batch_size=4"])
    ds = build_ds_config(cfg, world_size=3, hidden_size=64)
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (48, 4)
    assert ds["checkpoint"]["load_universal"] is False
    fixed = json.loads((ROOT / "ds_config.json").read_text())
    fixed["checkpoint"] = {"load_universal": True}
    (tmp_path / "ds.json").write_text(json.dumps(fixed))
    cfg.deepspeed_config = str(tmp_path / "ds.json")
    with pytest.raises(ConfigError, match="checkpoint.load_universal is True there"):
        build_ds_config(cfg, world_size=3, hidden_size=64)


def test_a_recipe_is_named_by_path_or_by_its_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"demo", "debug"} <= set(shipped_recipes())
    assert resolve_recipe("demo") == shipped_file(RECIPES_DIR) / "demo.yaml"
    (tmp_path / "demo").mkdir()  # a folder of that name (a run folder, say) does not hide the recipe
    assert resolve_recipe("demo") == shipped_file(RECIPES_DIR) / "demo.yaml"
    (tmp_path / "mine").write_text("max_steps: 3\n")
    assert resolve_recipe("mine") == Path("mine")  # a file of that name is a path
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        resolve_recipe("no-such-recipe")
