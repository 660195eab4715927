"""harness/ is wired by layer: no import circle between modules or packages, and no import from a higher
layer, counting imports inside functions (tests/layering.py holds the layers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layering import LAYERS, Graph, config_reads_below_the_edges, draw, environment_reads, layer_of, read_graph


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph()


def test_every_module_has_a_layer(graph):
    for module in graph.modules:
        layer_of(module)  # raises naming the module


def test_no_module_circle(graph):
    assert graph.module_cycles() == []


def test_no_package_circle(graph):
    assert graph.package_cycles() == []


def test_no_upward_import(graph):
    assert graph.upward() == []


def test_the_checks_see_a_function_level_circle_and_an_upward_import(tmp_path):
    """The reader counts imports inside functions; a planted circle and upward import are both caught."""
    pkg = tmp_path / "harness"
    (pkg / "train").mkdir(parents=True)
    (pkg / "findings").mkdir()
    for f in ("__init__.py", "train/__init__.py", "findings/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "train" / "a.py").write_text("def f():\n    from harness.train import b\n")
    (pkg / "train" / "b.py").write_text("from harness.train.a import f\n")
    (pkg / "train" / "c.py").write_text("def g():\n    from harness.findings import report\n")
    (pkg / "findings" / "report.py").write_text("from harness.train import c\n")
    g = read_graph(pkg)
    assert ["harness.train.a", "harness.train.b"] in g.module_cycles()
    assert ["harness.findings", "harness.train"] in g.package_cycles()
    layer = {name: i for i, (name, _, _) in enumerate(LAYERS)}
    assert layer_of("harness.train.c") == layer["train"] < layer_of("harness.findings.report")


def test_harness_variables_are_read_only_by_the_run_config():
    """Options and the environment are read once, at the edge (harness/config.py); nothing below reads them."""
    assert environment_reads() == []


def test_the_run_config_is_read_only_at_the_edges():
    """``from_env()`` is called by the plugin, the commands and a worker's entry; everything below takes arguments."""
    assert config_reads_below_the_edges() == []


def test_the_edge_check_sees_a_deep_read(tmp_path):
    pkg = tmp_path / "harness"
    (pkg / "train").mkdir(parents=True)
    for f in ("__init__.py", "train/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "train" / "cli.py").write_text("from harness.config import from_env\nENV = from_env()\n")
    (pkg / "train" / "deep.py").write_text("def f():\n    from harness import config\n    return config.from_env()\n")
    assert [r.split(": ", 1)[1] for r in config_reads_below_the_edges(pkg)] == ["config.from_env()"]


def test_the_environment_check_sees_a_read_through_a_constant(tmp_path):
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("import os\nX = os.environ.get('HARNESS_PLAN')\n")
    (pkg / "deep.py").write_text("import os\nENV = 'HARNESS_BASE'\ndef f():\n    return os.environ.get(ENV)\n"
                                 "def g():\n    return 'HARNESS_VARIANT' in os.environ\n")
    assert [r.split(": ", 1)[1] for r in environment_reads(pkg)] == ["os.environ.get(ENV)", "'HARNESS_VARIANT' in os.environ"]


def test_layers_doc_names_every_layer():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "layers.md").read_text()
    for name, _, _ in LAYERS:
        assert f"**{name}**" in doc, f"docs/layers.md does not describe the layer {name!r}"


def test_the_picture_is_drawn_from_the_code(graph, tmp_path):
    """docs/layers.png is made by ``python tests/layering.py --png docs/layers.png``; the drawing runs."""
    out = tmp_path / "layers.png"
    draw(graph, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (Path(__file__).resolve().parents[1] / "docs" / "layers.png").is_file()
