"""Run configs, valid and broken: recipe files (mutated bytes, values of every type at every key,
``base`` chains that go nowhere or in a circle) and command-line overrides. Each loads, or is refused
with one ``ConfigError`` that names the file or the key; nothing else escapes."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from fuzzing import READ, REFUSED, TEST_SECONDS, fuzz_settings, time_limit
from hypothesis import given
from hypothesis import strategies as st

from videobert.trainer.config import ConfigError, TrainConfig, _shown_key, load_config

RECIPES = Path(__file__).resolve().parents[2] / "launch" / "recipes"
REQUIRED = ["data.train=shards/", "data.codebook=codebook.safetensors"]

pytestmark = pytest.mark.timeout(TEST_SECONDS, method="thread")  # the signal is the cases' (time_limit)


def dotted_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


KEYS = dotted_keys()
VALUE_TEXT = st.sampled_from(["", "null", "1", "-1", "0", "1e999", "nan", "-.inf", "3e-4", "true", "yes", "[1, 2]",
                              "[1,", "{a: 1}", "{", "'", "\"", "&a", "*a", "!!python/object:os.system", "x: y: z",
                              "- - -", "0x1F", "1_000", "~", "é✓", "a,b", "..."]) | st.text(max_size=12)
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)


def _load(path, overrides) -> tuple[str, TrainConfig | ConfigError]:
    """(READ, the config) or (REFUSED, the ConfigError); any other exception fails the case."""
    try:
        with time_limit():
            return READ, load_config(path, overrides)
    except ConfigError as e:
        return REFUSED, e


def _named(error: ConfigError, names: list[str]) -> bool:
    return any(name in str(error) for name in names)


@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=10), VALUE_TEXT), max_size=4),
       separator=st.sampled_from(["="] * 6 + ["", " = "]))
@fuzz_settings(150)
def test_overrides_load_or_are_refused_naming_the_key(tally, overrides, separator):
    items = REQUIRED + [f"{key}{separator}{value}" for key, value in overrides]
    # a refusal names an override it was given, whole or by a part of its key (quoted where blank)
    names = [repr(item) for item in items] + [_shown_key(part) for key, _ in overrides for part in key.strip().split(".")]
    outcome, found = _load(RECIPES / "demo.yaml", items)
    if outcome == READ:  # a read config holds the required overrides unless the case gave the key again
        assert isinstance(found, TrainConfig)
        assert found.data.codebook == "codebook.safetensors" or any("codebook" in key for key, _ in overrides)
    else:
        assert _named(found, names), f"the refusal names no override it was given: {found}"
    tally.add("config overrides", "command lines", outcome)


@given(data=st.data())
@fuzz_settings(150)
def test_recipe_files_load_or_are_refused_naming_the_file(tmp_path_factory, tally, data):
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "debug.yaml").write_text((RECIPES / "debug.yaml").read_text())  # demo.yaml's base
    kind = data.draw(st.sampled_from(["values", "bytes", "base", "document"]))
    text = (RECIPES / "demo.yaml").read_text()
    changed: list[str] = []
    if kind == "values":  # every key given a value of any type
        doc = yaml.safe_load(text)
        changed = data.draw(st.lists(st.sampled_from(KEYS + ["surprise", "data.surprise"]), min_size=1, max_size=4))
        for key in changed:
            node = doc
            *sections, last = key.split(".")
            for section in sections:
                node = node.setdefault(section, {}) if isinstance(node.get(section, {}), dict) else {}
            node[last] = data.draw(VALUES)
        text = yaml.safe_dump(doc)
    elif kind == "bytes":
        raw = text.encode()
        at = data.draw(st.integers(0, len(raw) - 1))
        text_bytes = raw[:at] + data.draw(st.binary(max_size=6)) + raw[at + data.draw(st.integers(0, 8)):]
        (folder / "recipe.yaml").write_bytes(text_bytes)
        text = None
    elif kind == "base":
        text = "base: " + data.draw(st.sampled_from(["recipe.yaml", "missing.yaml", ".", "[1, 2]", "{a: 1}", "''",
                                                      "other.yaml", "/dev/null", "~"])) + "\nmax_steps: 3\n"
        (folder / "other.yaml").write_text("base: recipe.yaml\n")
    else:
        text = data.draw(st.sampled_from(["", "[]", "- 1\n- 2", "just text", "42", "null", "{", "data: [1, 2]",
                                          "data:\n  - a", "? a\n: b", "!!binary aGk=", "a: &x [*x]"]))
    if text is not None:
        (folder / "recipe.yaml").write_text(text)
    # a refusal names the recipe file, or one of the keys this case changed
    outcome, found = _load(folder / "recipe.yaml", REQUIRED)
    if outcome == READ:
        assert isinstance(found, TrainConfig) and found.data.codebook == "codebook.safetensors"
    else:
        assert _named(found, [str(folder), *(k.split(".")[-1] for k in changed)]), \
            f"the refusal names neither the recipe file nor a key this case changed: {found}"
    tally.add("config files", "recipes", outcome)
