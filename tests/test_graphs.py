"""Attention graphs: edge convention, the paper's centre nodes and hop distances on mask graphs,
GraphML / JSON round trips, one prompt's matrices against the probe's records, the CLI."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from tests.test_run import cli
from workbench.graphs import (attention_graph, centre_nodes, from_json, hops_to_first,
                              read_graph, to_json, write_graph)
from workbench.masks import AttentionMask


def test_edges_point_from_key_to_query_with_weights():
    m = np.array([[1.0, 0, 0], [0.7, 0.3, 0], [0.2, 0.05, 0.75]])
    g = attention_graph(m, threshold=0.1, tokens=["a", "b", "c"])
    assert sorted(g.edges(data="weight")) == [(0, 0, 1.0), (0, 1, 0.7), (0, 2, 0.2),
                                              (1, 1, 0.3), (2, 2, 0.75)]
    assert g.nodes[2] == {"pos": 2, "token": "c"}
    with pytest.raises(ValueError, match="must be square"):
        attention_graph(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 tokens for a 3 x 3"):
        attention_graph(m, tokens=["a", "b"])


@pytest.mark.parametrize("spec, centres, hops", [
    ("causal", [0], [0] + [1] * 7),
    ("prefix:3", [0, 1, 2], [0] + [1] * 7),
    ("window:2", [], list(range(8))),
    ("window:3", [], [math.ceil(i / 2) for i in range(8)]),
    ("decay:0.5", [0], [0] + [1] * 7),
])
def test_centre_nodes_and_hops_on_mask_graphs(spec, centres, hops):
    """Wu et al. (arXiv 2502.01951) section 3: the causal mask has one centre (the first token),
    prefix:K has K, a sliding window has none and needs ceil(i / (w - 1)) hops to reach i."""
    g = attention_graph(AttentionMask.parse(spec).allowed(8))
    assert centre_nodes(g) == centres
    assert list(hops_to_first(g).values()) == hops


def test_unreachable_positions_have_no_hop_count():
    m = np.eye(3)
    assert hops_to_first(attention_graph(m)) == {0: 0, 1: None, 2: None}


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_export_round_trips(suffix, tmp_path):
    rng = np.random.default_rng(0)
    m = np.tril(rng.random((6, 6)))
    m /= m.sum(1, keepdims=True)
    g = attention_graph(m, 0.05, tokens=["<s>", " the", " cat", " sat", "\n", "&<>\""],
                        name="layer 3 product")
    back = read_graph(write_graph(g, tmp_path / f"g{suffix}"))
    assert nx.utils.graphs_equal(g, back)
    assert back.graph == {"name": "layer 3 product", "threshold": 0.05}
    assert dict(back.nodes(data=True)) == dict(g.nodes(data=True))
    assert sorted(back.edges(data="weight")) == sorted(g.edges(data="weight"))
    assert nx.utils.graphs_equal(from_json(to_json(g)), g)
    with pytest.raises(ValueError, match="use one of .graphml, .json"):
        write_graph(g, tmp_path / "g.txt")


def test_prompt_matrices_agree_with_the_probe(tiny_llama, tmp_path):
    """The graph helper's composed matrices give the probe's last-token profile."""
    from probes import make_probes
    from probes.position_bias import prompt_matrices
    from tests.conftest import write_jsonl
    from workbench.prompts import load_prompt_set
    from workbench.run import RunOptions, execute_run

    text = "Attention heads read the residual stream and write back into it."
    mats = prompt_matrices(tiny_llama, text, layers=[0, 3], mask=AttentionMask.parse("window:4"))
    assert set(mats["product"]) == {0, 3} and len(mats["tokens"]) == len(mats["product"][3])
    np.testing.assert_allclose(mats["product"][0], mats["attention"][0])
    run = execute_run(tiny_llama, load_prompt_set(write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": text}])), make_probes(["position_bias"]),
        RunOptions(runs_dir=tmp_path, progress=False, attention_mask="window:4"))
    t = run.read_table("position_bias").to_pandas()
    for cond in ("product", "rollout"):
        row = t[(t.metric == "last_token_profile") & (t.layer == 3) & (t.condition == cond)]
        np.testing.assert_allclose(row.sort_values("key_pos").value, mats[cond][3][-1],
                                   atol=1e-12)
    g = attention_graph(mats["attention"][0], 0.0)
    assert centre_nodes(g) == [] and max(hops_to_first(g).values()) == math.ceil(
        (len(mats["tokens"]) - 1) / 3)


def test_graph_command(capsys, tmp_path):
    out = tmp_path / "g.graphml"
    code, stdout, err = cli(capsys, "graph", "--model", "tiny-llama", "--device", "cpu",
                            "--text", "The quick brown fox jumps.", "--layer", "1",
                            "--matrix", "product", "--threshold", "0", "--out", str(out))
    assert code == 0, err
    g = read_graph(out)
    n = g.number_of_nodes()
    assert f"wrote {out}: {n} nodes" in stdout and "centre nodes [0]" in stdout
    assert g.number_of_edges() == n * (n + 1) // 2  # causal: every j <= i has weight > 0
    code, _, err = cli(capsys, "graph", "--model", "tiny-llama", "--text", "x", "--out",
                       str(tmp_path / "g.png"))
    assert code == 2 and "must end in .graphml or .json" in err
