"""Write ``torch.inv``: an offline Sphinx inventory of the PyTorch objects these pages cite.

PyTorch publishes ``objects.inv`` only online, and the build must never need the network, so
this script writes a small inventory by hand with Sphinx's own writer
(:meth:`sphinx.util.inventory.InventoryFile.dump`). Each URL follows the real layout of
https://docs.pytorch.org/docs/stable/ (checked by hand against that site):

- functions and classes with their own page: ``generated/<full name>.html#<full name>``;
- ``torch.Tensor``: ``tensors.html#torch.Tensor``; ``torch.autocast``: ``amp.html#torch.autocast``.

To cite a new PyTorch object, add it to ``OBJECTS`` and run, from the repository root:

    python docs/_inventories/make_torch_inventory.py

then commit the regenerated ``docs/_inventories/torch.inv``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sphinx.util.inventory import InventoryFile

HERE = Path(__file__).resolve().parent
VERSION = "2.13"  # the pinned torch version (pyproject.toml)

# (full name, Sphinx object type, page relative to docs/stable); the anchor is the full name.
OBJECTS: list[tuple[str, str, str]] = [
    (name, kind, f"generated/{name}.html")
    for name, kind in [
        ("torch.nn.functional.log_softmax", "function"),
        ("torch.nn.functional.softmax", "function"),
        ("torch.nn.functional.cross_entropy", "function"),
        ("torch.nn.functional.kl_div", "function"),
        ("torch.nn.functional.logsigmoid", "function"),
        ("torch.log_softmax", "function"),
        ("torch.softmax", "function"),
        ("torch.logsumexp", "function"),
        ("torch.gather", "function"),
        ("torch.clamp", "function"),
        ("torch.exp", "function"),
        ("torch.where", "function"),
        ("torch.multinomial", "function"),
        ("torch.manual_seed", "function"),
        ("torch.use_deterministic_algorithms", "function"),
        ("torch.compile", "function"),
        ("torch.cuda.synchronize", "function"),
        ("torch.cuda.max_memory_allocated", "function"),
        ("torch.nn.utils.clip_grad_norm_", "function"),
        ("torch.Generator", "class"),
        ("torch.nn.Module", "class"),
        ("torch.nn.Embedding", "class"),
        ("torch.nn.Linear", "class"),
        ("torch.optim.Adam", "class"),
        ("torch.optim.AdamW", "class"),
        ("torch.cuda.Event", "class"),
        ("torch.Tensor.backward", "method"),
        ("torch.Tensor.detach", "method"),
    ]
] + [
    ("torch.Tensor", "class", "tensors.html"),
    ("torch.autocast", "class", "amp.html"),
]


class _Domain:
    """The one domain the writer iterates: Python objects as ``get_objects()`` tuples."""

    name = "py"

    def get_objects(self):
        for fullname, kind, page in OBJECTS:
            yield fullname, fullname, kind, page, fullname, 1


def write(path: Path = HERE / "torch.inv") -> Path:
    env = SimpleNamespace(
        config=SimpleNamespace(project="PyTorch", version=VERSION),
        domains=SimpleNamespace(sorted=lambda: [_Domain()]),
    )
    builder = SimpleNamespace(get_target_uri=lambda page: page)  # pages are already URLs
    InventoryFile.dump(path, env, builder)
    return path


if __name__ == "__main__":
    print(f"wrote {write()} with {len(OBJECTS)} objects")
