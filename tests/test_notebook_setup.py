"""rlref.notebook: the seed offset moves every seed, glue stores what myst-nb pastes; the robustness
environment; the lock pins every package the project asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from notebook_runner import _LESSER_ISA, ROBUSTNESS_SEED_OFFSET, robustness_env

from rlref import notebook
from rlref.notebook import GLUE_PREFIX, glue, seed_offset, setup

ROOT = Path(__file__).resolve().parent.parent


def test_seed_offset_moves_setup_seed_generators_and_seed_blocks(monkeypatch):
    monkeypatch.delenv("RLREF_SEED_OFFSET", raising=False)
    base = setup(seed=3, scale="small")
    assert base.seed == 3 and base.seeds(4) == [3, 4, 5, 6]
    monkeypatch.setenv("RLREF_SEED_OFFSET", "1000")
    moved = setup(seed=3, scale="small")
    assert moved.seed == 1003 and moved.seeds(2) == [1003, 1004]
    a = torch.rand(3, generator=moved.generator(1))
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(1004)))
    assert not torch.equal(a, torch.rand(3, generator=base.generator(1)))


@pytest.mark.parametrize("raw", ["-1", "x", "1.5"])
def test_a_bad_seed_offset_is_named(monkeypatch, raw):
    monkeypatch.setenv("RLREF_SEED_OFFSET", raw)
    with pytest.raises(ValueError, match="RLREF_SEED_OFFSET"):
        seed_offset()


def test_seeds_rejects_a_non_positive_count():
    with pytest.raises(ValueError, match="number of seeds"):
        setup(seed=0, scale="small").seeds(0)


def test_glue_records_what_myst_nb_pastes(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: shown.append((a, k)))
    glue("ts_value", np.float64(0.125))
    glue("ts_words", "survives", display=True)
    (bundle, ), kwargs = shown[0]
    assert bundle == {GLUE_PREFIX + "text/plain": "0.125"}  # a plain float, so :.3f formats it
    assert kwargs["metadata"]["scrapbook"] == {"name": "ts_value", "mime_prefix": GLUE_PREFIX}
    (bundle, ), kwargs = shown[1]
    assert bundle == {"text/plain": "'survives'"} and kwargs["raw"] is True


@pytest.mark.parametrize("name", ["has space", "", "a/b"])
def test_glue_rejects_bad_names(name):
    with pytest.raises(ValueError, match="glue name"):
        glue(name, 1.0)


def test_glue_rejects_arrays():
    with pytest.raises(TypeError, match="scalar"):
        notebook._plain(np.zeros(3))


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_robustness_env_forces_a_lesser_instruction_set(monkeypatch, capability):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    env, what = robustness_env()
    assert env["RLREF_SEED_OFFSET"] == str(ROBUSTNESS_SEED_OFFSET) and env["RLREF_SCALE"] == "small"
    if capability in _LESSER_ISA:
        assert env["ATEN_CPU_CAPABILITY"] != capability.lower() and "ONEDNN_MAX_CPU_ISA" in env
    else:
        assert "ATEN_CPU_CAPABILITY" not in env and "no lesser instruction set" in what


def _requirement_names() -> set[str]:
    text = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = text["dependencies"] + [r for extra in text["optional-dependencies"].values() for r in extra]
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in reqs}


def test_the_lock_pins_every_package_the_project_asks_for():
    lock = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    missing = sorted(_requirement_names() - pinned)
    assert not missing, f"constraints.txt pins none of {missing}: run `nox -s lock`"
    assert len(re.findall(r"^torch==", lock, re.M)) == 1, "torch needs one version for its CPU build"
