"""Sphinx configuration of the visionkit docs (offline build; see docs/README.md)."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # import visionkit from this checkout
sys.path.insert(0, str(DOCS / "_ext"))

import visionkit  # noqa: E402

project = "visionkit"
author = "visionkit developers"
copyright = "2026, visionkit developers"
release = visionkit.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_design",
    "sphinx_copybutton",
    "visionkit_zoo",
]

exclude_patterns = ["_build", "README.md", "_generated", "_inventories"]
root_doc = "index"

# --- checking: every reference must resolve (the test suite builds with -W --keep-going) ---
nitpicky = True
nitpick_ignore = [
    # Private to PyTorch's documentation: FlopCounterMode has no page of its own to link to.
    ("py:class", "torch.utils.flop_counter.FlopCounterMode"),
    # A TypeVar in the signature of fuse_batchnorm ("returns the module it was given"), not a documented object.
    ("py:class", "visionkit.contrib.deploy.ModuleT"),
]

# --- theme ---
html_theme = "furo"
html_title = f"visionkit {release}"
html_static_path = ["_static"]
html_css_files = ["visionkit.css"]
html_show_sourcelink = False

# --- autodoc + napoleon (Google docstrings) ---
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = ["Shape"]
add_module_names = False
python_use_unqualified_type_names = True

# --- intersphinx, offline: inventories vendored in _inventories/ (regenerate with make_inventories.py) ---
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(DOCS / "_inventories" / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(DOCS / "_inventories" / "torch.inv")),
    "kornia": ("https://kornia.readthedocs.io/en/latest/", str(DOCS / "_inventories" / "kornia.inv")),
}
intersphinx_timeout = 1

# --- executed examples: every ``.. doctest::`` / ``.. testcode::`` block in the pages runs ---
# Docstring examples run under ``pytest --doctest-modules`` (with the namespace of the root conftest.py); here only
# the pages' own blocks run, so each example runs exactly once.
doctest_test_doctest_blocks = ""
# As pyproject.toml's doctest_optionflags, and exception messages are compared too (Sphinx ignores them by default).
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1
doctest_global_setup = """
import torch
from torch import nn
torch.manual_seed(0)
torch.set_num_threads(1)  # tiny examples: one thread avoids spinning against other processes on a busy machine
"""

# --- copy buttons: copy code without prompts or output ---
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# --- type hints that name PyTorch classes by their defining module: link them to the documented public name ---
#: private path -> public name in PyTorch's documentation (used by the ``missing-reference`` handler below).
TORCH_PUBLIC_NAMES = {
    "torch.nn.modules.module.Module": "torch.nn.Module",
    "torch.nn.modules.container.Sequential": "torch.nn.Sequential",
    "torch.nn.modules.conv.Conv2d": "torch.nn.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d": "torch.nn.BatchNorm2d",
    "torch.export.exported_program.ExportedProgram": "torch.export.ExportedProgram",
    "torch.utils.data.dataloader.DataLoader": "torch.utils.data.DataLoader",
    "torch.utils.data.dataset.Dataset": "torch.utils.data.Dataset",
    "torch.optim.optimizer.Optimizer": "torch.optim.Optimizer",
    # class signatures keep the annotation as written (``from __future__ import annotations``)
    "nn.Module": "torch.nn.Module",
}

#: Names that docstrings of :mod:`visionkit.contrib.export` use unqualified, for objects documented under their
#: module's path in api.rst (they are not re-exported from ``visionkit.contrib``).
LOCAL_NAMES = {
    "MIN_DYNAMIC_SIZE": "visionkit.contrib.export.MIN_DYNAMIC_SIZE",
}


def _link_public_torch_name(app, env, node, contnode):
    """Resolve a reference to a private PyTorch path through intersphinx under the documented public name."""
    from sphinx.ext.intersphinx import missing_reference

    public = TORCH_PUBLIC_NAMES.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or public is None:
        return None
    node["reftarget"] = public
    return missing_reference(app, env, node, contnode)


def _link_local_name(app, env, node, contnode):
    """Resolve an unqualified name of :data:`LOCAL_NAMES` to the object documented under its full path."""
    target = LOCAL_NAMES.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or target is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)


#: Module constants whose ``#:`` comment starts with a sentence holding a colon: napoleon would read the words
#: before the colon as the constant's type, so the real type is put in front (``"int: ..."``) before it parses.
DATA_TYPES = {
    "visionkit.contrib.export.MIN_DYNAMIC_SIZE": "int",
}


def _type_data_docstring(app, what, name, obj, options, lines):
    type_name = DATA_TYPES.get(name)
    if what == "data" and type_name is not None and lines:
        lines[0] = f"{type_name}: {lines[0]}"


def setup(app):
    app.connect("missing-reference", _link_public_torch_name, priority=400)
    app.connect("missing-reference", _link_local_name, priority=400)
    app.connect("autodoc-process-docstring", _type_data_docstring, priority=400)  # before napoleon (500)
