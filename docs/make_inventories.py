"""Write the offline intersphinx inventories in ``docs/_inventories/``: ``python docs/make_inventories.py``.

The docs build must work without a network, so intersphinx cannot fetch ``objects.inv`` from docs.python.org,
docs.pytorch.org or kornia.readthedocs.io. Instead this script writes small inventories in Sphinx's own format
(version 2: four header lines, then zlib-compressed ``name domain:role priority uri display`` lines) that list
only the names these docs link to, with the URIs those sites use for them. ``conf.py`` points
``intersphinx_mapping`` at the files; links in the built HTML go to the real online pages.

When the docs reference a new external name, nitpicky mode fails the build with "reference target not found";
add the name to the table below, run this script and commit the regenerated ``.inv`` files. Every written file is
read back with :class:`sphinx.util.inventory.InventoryFile` to check it parses.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from sphinx.util.inventory import InventoryFile

OUT_DIR = Path(__file__).resolve().parent / "_inventories"

#: project key -> (project name, version, base URL, [(name, domain:role, URI relative to the base URL)]).
INVENTORIES: dict[str, tuple[str, str, str, list[tuple[str, str, str]]]] = {
    "python": (
        "Python",
        "3",
        "https://docs.python.org/3/",
        [
            ("bool", "py:class", "library/functions.html#bool"),
            ("int", "py:class", "library/functions.html#int"),
            ("float", "py:class", "library/functions.html#float"),
            ("str", "py:class", "library/stdtypes.html#str"),
            ("tuple", "py:class", "library/stdtypes.html#tuple"),
            ("list", "py:class", "library/stdtypes.html#list"),
            ("dict", "py:class", "library/stdtypes.html#dict"),
            ("None", "py:data", "library/constants.html#None"),
            ("TypeError", "py:exception", "library/exceptions.html#TypeError"),
            ("ValueError", "py:exception", "library/exceptions.html#ValueError"),
            ("StopIteration", "py:exception", "library/exceptions.html#StopIteration"),
            ("typing.Any", "py:data", "library/typing.html#typing.Any"),
            ("typing.Optional", "py:data", "library/typing.html#typing.Optional"),
            ("typing.Literal", "py:data", "library/typing.html#typing.Literal"),
            ("collections.abc.Callable", "py:class", "library/collections.abc.html#collections.abc.Callable"),
            ("collections.abc.Sequence", "py:class", "library/collections.abc.html#collections.abc.Sequence"),
            ("collections.abc.Mapping", "py:class", "library/collections.abc.html#collections.abc.Mapping"),
            ("os.PathLike", "py:class", "library/os.html#os.PathLike"),
            ("pathlib.Path", "py:class", "library/pathlib.html#pathlib.Path"),
            ("typing.Union", "py:data", "library/typing.html#typing.Union"),
            ("dataclasses.replace", "py:function", "library/dataclasses.html#dataclasses.replace"),
        ],
    ),
    "torch": (
        "PyTorch",
        "stable",
        "https://docs.pytorch.org/docs/stable/",
        [
            ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
            ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
            ("torch.dtype", "py:class", "tensor_attributes.html#torch.dtype"),
            ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
            ("torch.nn.Sequential", "py:class", "generated/torch.nn.Sequential.html#torch.nn.Sequential"),
            ("torch.nn.Conv2d", "py:class", "generated/torch.nn.Conv2d.html#torch.nn.Conv2d"),
            (
                "torch.nn.Module.load_state_dict",
                "py:method",
                "generated/torch.nn.Module.html#torch.nn.Module.load_state_dict",
            ),
            (
                "torch.nn.functional.interpolate",
                "py:function",
                "generated/torch.nn.functional.interpolate.html#torch.nn.functional.interpolate",
            ),
            ("torch.nn.BatchNorm2d", "py:class", "generated/torch.nn.BatchNorm2d.html#torch.nn.BatchNorm2d"),
            ("torch.nn.SyncBatchNorm", "py:class", "generated/torch.nn.SyncBatchNorm.html#torch.nn.SyncBatchNorm"),
            (
                "torch.nn.SyncBatchNorm.convert_sync_batchnorm",
                "py:method",
                "generated/torch.nn.SyncBatchNorm.html#torch.nn.SyncBatchNorm.convert_sync_batchnorm",
            ),
            ("torch.nn.Module.eval", "py:method", "generated/torch.nn.Module.html#torch.nn.Module.eval"),
            ("torch.nn.Module.to", "py:method", "generated/torch.nn.Module.html#torch.nn.Module.to"),
            (
                "torch.nn.parallel.DistributedDataParallel",
                "py:class",
                "generated/torch.nn.parallel.DistributedDataParallel.html#torch.nn.parallel.DistributedDataParallel",
            ),
            (
                "torch.nn.functional.scaled_dot_product_attention",
                "py:function",
                "generated/torch.nn.functional.scaled_dot_product_attention.html"
                "#torch.nn.functional.scaled_dot_product_attention",
            ),
            # torch.autocast is a class that is used as a function (a context manager); the docstrings link it
            # with :func:, so the inventory lists it under both roles.
            ("torch.autocast", "py:class", "amp.html#torch.autocast"),
            ("torch.autocast", "py:function", "amp.html#torch.autocast"),
            ("torch.compile", "py:function", "generated/torch.compile.html#torch.compile"),
            ("torch.export", "py:module", "export.html#module-torch.export"),
            ("torch.export.export", "py:function", "export/api_reference.html#torch.export.export"),
            ("torch.export.ExportedProgram", "py:class", "export/api_reference.html#torch.export.ExportedProgram"),
            ("torch.utils.checkpoint.checkpoint", "py:function", "checkpoint.html#torch.utils.checkpoint.checkpoint"),
            ("torch.utils.data.DataLoader", "py:class", "data.html#torch.utils.data.DataLoader"),
            ("torch.utils.data.Dataset", "py:class", "data.html#torch.utils.data.Dataset"),
            (
                "torch.utils.data.distributed.DistributedSampler",
                "py:class",
                "data.html#torch.utils.data.distributed.DistributedSampler",
            ),
            ("torch.optim.Optimizer", "py:class", "optim.html#torch.optim.Optimizer"),
            (
                "torch.optim.lr_scheduler.LRScheduler",
                "py:class",
                "generated/torch.optim.lr_scheduler.LRScheduler.html#torch.optim.lr_scheduler.LRScheduler",
            ),
        ],
    ),
    "kornia": (
        "Kornia",
        "latest",
        "https://kornia.readthedocs.io/en/latest/",
        [
            ("kornia.core.exceptions.ShapeError", "py:exception", "core.html#kornia.core.exceptions.ShapeError"),
            (
                "kornia.core.exceptions.TypeCheckError",
                "py:exception",
                "core.html#kornia.core.exceptions.TypeCheckError",
            ),
            (
                "kornia.core.exceptions.ValueCheckError",
                "py:exception",
                "core.html#kornia.core.exceptions.ValueCheckError",
            ),
            ("kornia.geometry.bbox.nms", "py:function", "geometry.bbox.html#kornia.geometry.bbox.nms"),
        ],
    ),
}


def inventory_bytes(project: str, version: str, items: list[tuple[str, str, str]]) -> bytes:
    """Serialise ``items`` as a version-2 Sphinx inventory (display name ``-`` means "same as name")."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(items)).encode()
    return header + zlib.compress(body, 9)


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for key, (project, version, base, items) in INVENTORIES.items():
        path = OUT_DIR / f"{key}.inv"
        path.write_bytes(inventory_bytes(project, version, items))
        with path.open("rb") as stream:
            loaded = InventoryFile.load(stream, base, lambda base, uri: base + uri)
        # Sphinx >= 8.2 returns an _Inventory object (entries in .data); older versions a plain dict.
        entries_by_role = loaded.data if hasattr(loaded, "data") else loaded
        count = sum(len(entries) for entries in entries_by_role.values())
        if count != len(items):
            raise SystemExit(f"{path}: wrote {len(items)} names but Sphinx reads back {count}")
        print(f"wrote {path} ({count} names)")


if __name__ == "__main__":
    main()
