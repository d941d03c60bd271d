"""rlref.results_cache: hit, misses on key / code / seed offset / ISA changes, atomic writes, switch-off."""

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlref import results_cache as rc
from rlref.lab import GRPOConfig, History


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory and a private copy of 'the code' (two .py files)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    (code / "sub").mkdir()
    (code / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setenv("RLREF_RESULTS_CACHE", str(tmp_path / "store"))
    return code


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return self.value


def _history():
    return [History([{"train/reward": 0.5, "lab/step": 0.0}], meta={"config": GRPOConfig(seed=3)})]


def test_hit_returns_the_stored_value_without_computing(cache):
    key = {"config": GRPOConfig(seed=3), "seeds": [3, 4], "task": "greater"}
    first = Counter(_history())
    out1 = rc.cached(key, first, code_root=cache)
    again = Counter(None)
    out2 = rc.cached(dict(reversed(list(key.items()))), again, code_root=cache)  # key order is irrelevant
    assert first.calls == 1 and again.calls == 0
    assert out2[0].steps == out1[0].steps and out2[0].meta["config"] == GRPOConfig(seed=3)


def test_config_change_is_a_miss(cache):
    rc.cached({"config": GRPOConfig(seed=3)}, Counter(1), code_root=cache)
    for other in ({"config": GRPOConfig(seed=4)}, {"config": GRPOConfig(seed=3, lr=1e-3)},
                  {"config": GRPOConfig(seed=3), "arm": "b"}):
        c = Counter(2)
        assert rc.cached(other, c, code_root=cache) == 2 and c.calls == 1


def test_code_change_is_a_miss(cache):
    key = {"n": 1}
    rc.cached(key, Counter("old"), code_root=cache)
    (cache / "sub" / "b.py").write_text("y = 3\n")
    c = Counter("new")
    assert rc.cached(key, c, code_root=cache) == "new" and c.calls == 1
    (cache / "c.py").write_text("")  # a new file counts too
    assert rc.cache_key(key, cache) != rc.cache_key(key, None)


@pytest.mark.parametrize("var, value", [("RLREF_SEED_OFFSET", "1000"), ("ATEN_CPU_CAPABILITY", "default"),
                                        ("RLREF_SCALE", "full")])
def test_seed_offset_and_isa_are_part_of_the_key(cache, monkeypatch, var, value):
    key = {"seeds": [0, 1]}  # a key that forgot the offset still never hits across offsets
    rc.cached(key, Counter("base"), code_root=cache)
    monkeypatch.setenv(var, value)
    c = Counter("moved")
    assert rc.cached(key, c, code_root=cache) == "moved" and c.calls == 1


def test_switch_off_computes_and_writes_nothing(cache, monkeypatch, tmp_path):
    for off in ("off", "0"):
        monkeypatch.setenv("RLREF_RESULTS_CACHE", off)
        assert rc.cache_dir() is None
        c = Counter(5)
        assert rc.cached({"a": 1}, c) == 5 and rc.cached({"a": 1}, c) == 5 and c.calls == 2
    assert not (tmp_path / "store").exists()
    monkeypatch.delenv("RLREF_RESULTS_CACHE")
    assert rc.cache_dir() == rc.REPO_ROOT / "_build" / ".rlref_results"


def _writer(args):
    store, code, i, threads = args
    os.environ["RLREF_RESULTS_CACHE"] = store
    torch.set_num_threads(threads)  # the thread count is part of the key: match the reading process
    value = np.full(200_000, i, dtype=np.float64)  # big enough that a torn write would be visible
    return float(rc.cached({"shared": True}, lambda: value, code_root=Path(code))[0])


def _reader(args):
    store, code, threads = args
    os.environ["RLREF_RESULTS_CACHE"] = store
    torch.set_num_threads(threads)
    return rc.cached({"shared": True}, lambda: None, code_root=Path(code))


def test_parallel_writers_leave_one_complete_entry(cache, tmp_path):
    """Processes that miss the same key at once: every reader gets a whole value, no temp file remains."""
    store = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    threads = torch.get_num_threads()
    with ctx.Pool(2) as pool:
        got = pool.map(_writer, [(store, str(cache), i, threads) for i in range(4)])
        # read back in a fresh process too: this test process may carry state of earlier tests
        # (deterministic algorithms, threads) that is part of the key
        stored = pool.apply(_reader, ((store, str(cache), threads),))
    assert all(v in range(4) for v in got)
    files = [p for p in Path(store).rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert stored is not None and stored.shape == (200_000,) and np.all(stored == stored[0])


def test_a_write_that_fails_midway_leaves_nothing(cache, monkeypatch):
    """Writes go to a temporary file renamed into place: a crash mid-write never shows a partial entry."""
    def torn_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    real_save = rc.torch.save
    monkeypatch.setattr(rc.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        rc.cached({"k": 2}, Counter("new"), code_root=cache)
    assert not [p for p in Path(os.environ["RLREF_RESULTS_CACHE"]).rglob("*") if p.is_file()]
    monkeypatch.setattr(rc.torch, "save", real_save)
    c = Counter("new")
    assert rc.cached({"k": 2}, c, code_root=cache) == "new" and c.calls == 1


def test_unreadable_entry_is_recomputed(cache):
    key = {"k": 1}
    rc.cached(key, Counter(1), code_root=cache)
    (entry,) = Path(os.environ["RLREF_RESULTS_CACHE"]).rglob("*.pt")
    entry.write_bytes(entry.read_bytes()[:20])  # truncated by hand (a write can never do this)
    c = Counter(2)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert rc.cached(key, c, code_root=cache) == 2
    assert rc.cached(key, Counter(3), code_root=cache) == 2


def test_keys_reject_what_cannot_be_keyed(cache):
    with pytest.raises(TypeError, match=r"key\['fn'\] is a function"):
        rc.cached({"fn": lambda: 1}, Counter(1), code_root=cache)
    with pytest.raises(TypeError, match="key must be a dict"):
        rc.cached([1, 2], Counter(1), code_root=cache)
    with pytest.raises(TypeError, match="compute must be a callable"):
        rc.cached({"a": 1}, 3, code_root=cache)


def test_canonical_forms():
    t = torch.arange(4.0)
    assert rc.canonical(t) == rc.canonical(t.clone()) != rc.canonical(t + 1)
    nan = float("nan")
    assert rc.canonical({"b": 1, "a": (1.5, nan)}) == rc.canonical({"a": [1.5, nan], "b": 1})
    assert rc.canonical(torch.bfloat16) != rc.canonical(torch.float32)
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert rc.canonical(m1) != rc.canonical(m2)


def test_unpicklable_value_is_returned_with_a_warning(cache):
    def local():
        return 1

    with pytest.warns(RuntimeWarning, match="cannot be pickled"):
        assert rc.cached({"x": 1}, lambda: local, code_root=cache) is local
    assert not [p for p in Path(os.environ["RLREF_RESULTS_CACHE"]).rglob("*") if p.is_file()]
