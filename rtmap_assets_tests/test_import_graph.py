"""The package's import graph keeps its rule: domain folders never import the orchestration (defs, cli)
nor the synthetic generator (scripts/import_graph.py)."""

from conftest import load_script


def _graph():
    return load_script("import_graph")


def test_domain_folders_import_neither_orchestration_nor_synthetic_data():
    graph = _graph()
    counts = graph.edges()
    assert ("rtmap_assets.defs", "rtmap_assets.pipeline") in counts  # the graph is really read
    assert graph.violations(counts) == []


def test_a_domain_import_of_the_orchestration_is_caught():
    graph = _graph()
    from collections import Counter

    assert graph.violations(Counter({("rtmap_assets.dosimetry", "rtmap_assets.defs"): 1})) == [
        ("rtmap_assets.dosimetry", "rtmap_assets.defs")]
