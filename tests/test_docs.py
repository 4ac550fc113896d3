"""The documentation builds cleanly, its examples run, and what it states matches the code.

One module-scoped fixture builds the docs twice in a temporary directory, offline, with warnings as errors and
nitpicky references: once as HTML and once with the doctest builder (which runs every ``doctest``/``testcode``
block of the pages). The other tests read the built output.
"""

from __future__ import annotations

import contextlib
import html.parser
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import visionkit.contrib
import visionkit.contrib.variants
from visionkit.contrib.summary import count_macs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FAMILY_PAGES = {"MobileViT": "mobilevit", "MobileViTv2": "mobilevitv2", "MobileViTv3": "mobilevitv3"}

sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS))
import make_inventories  # noqa: E402
import visionkit_zoo  # noqa: E402


@dataclass
class Build:
    html: Path
    html_log: str
    html_rc: int
    doctest: Path
    doctest_log: str
    doctest_rc: int


def _sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sphinx", "-b", builder, "-W", "--keep-going", "-n", "-q", "-d", str(doctrees)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small models: one thread is faster on a shared CI machine
    return subprocess.run([*cmd, str(DOCS), str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    tmp = tmp_path_factory.mktemp("docs")
    html = _sphinx("html", tmp / "html", tmp / "doctrees")
    doctest = _sphinx("doctest", tmp / "doctest", tmp / "doctrees")
    return Build(
        tmp / "html", html.stdout + html.stderr, html.returncode, tmp / "doctest", doctest.stdout + doctest.stderr,
        doctest.returncode,
    )


def test_html_builds_with_warnings_as_errors(build: Build) -> None:
    assert build.html_rc == 0, build.html_log
    for page in ("index", "getting_started", "api", "models/index", *(f"models/{p}" for p in FAMILY_PAGES.values())):
        assert (build.html / f"{page}.html").is_file(), page


def test_every_page_example_runs(build: Build) -> None:
    assert build.doctest_rc == 0, build.doctest_log
    report = (build.doctest / "output.txt").read_text()
    total = re.search(r"^\s*(\d+) tests\n\s*0 failures in tests\n\s*0 failures in setup code", report, re.M)
    assert total is not None, report
    # Each family page and the tour run their own examples (not just one stray block somewhere).
    for doc in ("getting_started", *(f"models/{p}" for p in FAMILY_PAGES.values())):
        assert re.search(rf"^Document: {re.escape(doc)}\n-+\n(\d+) items passed all tests", report, re.M), doc


def test_no_untested_python_examples_in_pages() -> None:
    # Code shown in the pages is either executed (doctest / testcode) or a shell command (console, checked below).
    for page in DOCS.rglob("*.rst"):
        text = page.read_text()
        for language in re.findall(r"^\s*\.\. (?:code-block|code|sourcecode)::\s*(\S*)", text, re.M):
            assert language == "console", f"{page.relative_to(ROOT)}: an untested '{language}' code block"
        # a paragraph ending in "::" (not a directive) followed by >>> lines is a literal block nothing runs
        untested = re.search(r"^(?!\s*\.\. )[^\n]*::\n\n\s+>>>", text, re.M)
        assert not untested, f"{page.relative_to(ROOT)}: untested >>> block"


def test_getting_started_shows_the_readme_commands() -> None:
    readme = (ROOT / "README.rst").read_text()
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("python3 -m venv")]
    assert len(commands) == 2, commands
    page = (DOCS / "getting_started.rst").read_text()
    shown = [line.strip() for line in page.splitlines() if line.strip().startswith("python3 -m venv")]
    assert shown == commands


# --- API reference -----------------------------------------------------------------------------------------------


def _documented_objects(html_dir: Path) -> dict[str, str]:
    """Python objects documented in the build: name -> page, read back from the build's own objects.inv."""
    data = (html_dir / "objects.inv").read_bytes()
    lines = zlib.decompress(data.split(b"\n", 4)[4]).decode().splitlines()
    objects = {}
    for line in lines:
        match = re.match(r"(\S+) py:(\w+) -?\d+ (\S+)", line)
        if match:
            objects[match.group(1)] = match.group(3).split("#")[0]
    return objects


def test_every_public_name_is_in_the_api_reference(build: Build) -> None:
    assert build.html_rc == 0, build.html_log
    documented = _documented_objects(build.html)
    missing = [name for name in visionkit.contrib.__all__ if f"visionkit.contrib.{name}" not in documented]
    assert not missing, f"public names missing from docs/api.rst: {missing}"
    assert {documented[f"visionkit.contrib.{name}"] for name in visionkit.contrib.__all__} == {"api.html"}


# --- generated model-zoo tables ----------------------------------------------------------------------------------


@dataclass
class _Tables(html.parser.HTMLParser):
    """Collect the rows of every ``<table class="... visionkit-zoo ...">`` as lists of cell texts."""

    tables: list[list[list[str]]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    _cell: list[str] | None = None
    _row: list[str] | None = None
    _in_zoo: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "table" and "visionkit-zoo" in (attr.get("class") or "").split():
            self._in_zoo = True
            self.tables.append([])
        elif self._in_zoo and tag == "tr":
            self._row = []
        elif self._in_zoo and tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attr.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._in_zoo:
            self._in_zoo = False
        elif self._in_zoo and tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif self._in_zoo and tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: Path) -> _Tables:
    parser = _Tables()
    parser.feed(page.read_text())
    return parser


@pytest.mark.parametrize("family", list(FAMILY_PAGES))
def test_zoo_table_matches_the_models(build: Build, family: str) -> None:
    assert build.html_rc == 0, build.html_log
    tables = _parse(build.html / "models" / f"{FAMILY_PAGES[family]}.html").tables
    assert len(tables) == 1
    header, *rows = tables[0]
    assert header[:7] == [
        "Variant", "Constructor", "Params", "Params + 1000-class head", "MACs at 256 (M)", "Channels, levels 0–4",
        "Output channels",
    ]
    expected_names = [v.name for v in visionkit.contrib.variants.VARIANTS if v.family == family]
    assert [row[0].split()[-1] for row in rows] == expected_names
    registry = getattr(visionkit.contrib, "list_weights", None)  # the weights registry, once merged
    if registry is None:
        assert len(header) == 7, header
    else:
        assert header[7] == "Top-1 (%), default weights"
        assert [row[7] for row in rows] == [f"{registry(name)[0].top1:g}" for name in expected_names]
    namespace = {name: getattr(visionkit.contrib, name) for name in visionkit.contrib.__all__}
    x = torch.rand(1, 3, 64, 64)
    with _one_thread():
        for index, row in enumerate(rows):
            _check_row(row, namespace, x, count_mac=index == 0)


def _check_row(row: list[str], namespace: dict, x: torch.Tensor, count_mac: bool) -> None:
    _, call, params, with_head, macs, channels, out_channels, *_ = row
    model = eval(call, namespace).eval()  # the constructor column must build the variant it names
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        levels = model.forward_intermediates(x)
        out = model(x)
    assert params == f"{n_params:,}", call
    assert with_head == f"{n_params + out.shape[1] * 1000 + 1000:,}", call  # + Linear(C, 1000)
    assert channels == ", ".join(str(level.shape[1]) for level in levels), call
    assert out_channels == str(out.shape[1]), call
    assert float(macs) > 100, call
    if count_mac:  # MACs at 256 are the slow part: recount one variant per family
        assert macs == f"{count_macs(model, 256, 256) / 1e6:.1f}", call


def test_model_pages_show_card_table_and_generated_figure(build: Build) -> None:
    for family, page in FAMILY_PAGES.items():
        text = (build.html / "models" / f"{page}.html").read_text()
        assert re.search(r'<a class="sd-stretched-link[^"]*" href="https://arxiv.org/abs/\d{4}\.\d{5}"', text), page
        assert 'class="sd-card-header' in text and 'class="sd-card-footer' in text, page
        images = [src for src in _parse(build.html / "models" / f"{page}.html").images if "zoo_params_macs" in src]
        assert images == [f"../_images/zoo_params_macs_{family.lower()}.png"], images
        png = (build.html / "models" / images[0]).resolve().read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


# --- pieces of the generator checked without a build -----------------------------------


def test_released_top1_columns_come_from_the_registry() -> None:
    row = visionkit_zoo.ZooRow("mobilevitv2_150", "MobileViTv2", "MobileViTv2-1.5", "MobileViTv2(1.5)", 1, 2, 3, (4,), 5)
    entries = visionkit.contrib.list_weights("mobilevitv2_150")
    assert len(entries) > 1
    lines = visionkit_zoo.table_rst("MobileViTv2", (row,))
    title = ".. list-table:: MobileViTv2: released checkpoints"
    main_table = lines[: lines.index(title)]
    while main_table and not main_table[-1].strip():  # the blank line that separates the two tables
        main_table.pop()
    assert "     - Top-1 (%), default weights" in main_table
    assert main_table[-1] == f"     - {entries[0].top1:g}"  # the default (first) checkpoint
    checkpoints = lines[lines.index(title) :]
    expected = []
    for entry in entries:
        expected += [
            "   * - ``mobilevitv2_150``",
            f"     - ``{entry.tag}``",
            f"     - {entry.resolution}",
            f"     - {entry.channel_order}",
            f"     - {entry.top1:g}",
        ]
    assert checkpoints[-len(expected) :] == expected


def test_zoo_rows_reject_unknown_family() -> None:
    with pytest.raises(ValueError, match="MobileViTv2"):
        visionkit_zoo.zoo_rows("MobileViTv4")


def test_vendored_inventories_are_what_the_script_writes() -> None:
    for key, (project, version, _base, items) in make_inventories.INVENTORIES.items():
        committed = (DOCS / "_inventories" / f"{key}.inv").read_bytes()
        regenerated = make_inventories.inventory_bytes(project, version, items)
        head, body = committed.split(b"\n", 4)[:4], committed.split(b"\n", 4)[4]
        assert head == regenerated.split(b"\n", 4)[:4], key
        assert zlib.decompress(body) == zlib.decompress(regenerated.split(b"\n", 4)[4]), (
            f"docs/_inventories/{key}.inv is stale: run python docs/make_inventories.py"
        )
