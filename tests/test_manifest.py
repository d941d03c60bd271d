"""Tests for rlref.manifest."""

import json

import pytest

from rlref.manifest import config_hash, run_manifest


def test_config_hash_ignores_key_order_and_detects_changes():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1, "b": 2}) != config_hash({"a": 1, "b": 3})


def test_manifest_records_seed_versions_and_git_commit(tmp_path):
    m = run_manifest({"lr": 1e-3}, seed=7, repo=".")
    assert m["seed"] == 7 and m["config_sha256"] == config_hash({"lr": 1e-3})
    assert m["packages"]["torch"] is not None
    assert m["git_commit"] is None or len(m["git_commit"]) == 40
    json.dumps(m)  # serialisable as written to disk
    assert run_manifest({}, seed=0, repo=tmp_path)["git_commit"] is None  # not a repository


def test_manifest_rejects_non_dict_config():
    with pytest.raises(TypeError, match="config must be a dict"):
        run_manifest([1, 2], seed=0)


def test_manifest_records_the_cpu_code_path_and_isa_variables(monkeypatch):
    import torch

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    m = run_manifest({}, seed=0)
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["env"]["ATEN_CPU_CAPABILITY"] == "avx2"
