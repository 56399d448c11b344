"""The sink, massive-activation and head-type probes through the CLI and the parameter parser."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from probes import PROBES, make_probes
from tests.test_run import cli, run_args
from workbench.errors import InputError
from workbench.store import list_runs


def test_literal_parameters_parse_as_bare_words():
    sink, entropy = make_probes(["attention_sink", "attention_entropy"], {
        "attention_sink": {"segment_query": "after", "sink_dims": "[3, 5]",
                           "received_keys": "null"},
        "attention_entropy": {"segment_query": "all"}})
    assert sink.segment_query == "after" and sink.sink_dims == [3, 5]
    assert sink.received_keys is None and entropy.segment_query == "all"
    with pytest.raises(InputError, match="segment_query='everything'"):
        make_probes(["attention_sink"], {"attention_sink": {"segment_query": "everything"}})


def test_three_probes_in_one_run(capsys, small_prompts, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *run_args(
        small_prompts, runs, "--batch-size", "2",
        "--probes", "attention_sink,massive_activations,head_types",
        "--param", "attention_sink.sink_dims=[1, 2]", "--param", "attention_sink.tau=1.5",
        "--param", "attention_sink.segment=names",
        "--param", "attention_sink.segment_query=after",
        "--param", 'head_types.detectors=["induction", "first=pos:0"]'))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert run.tables() == ["attention_sink", "head_types", "massive_activations", "prompts",
                            "tokens"]
    params = {p["name"]: p["params"] for p in manifest["probes"]}
    assert params["attention_sink"]["sink_dims"] == [1, 2]
    assert params["head_types"]["rules"] == {"induction": "match:1", "first": "pos:0"}
    assert manifest["units"]["first_mul"] == "fraction of attention"
    layer_level = {"median_abs", "top_abs", "massive", "var_sink_phi", "sink_head_frac",
                   "mean_max_abs", "mean_median_abs", "token0_massive_frac"}  # head stays null
    for name in ("attention_sink", "massive_activations", "head_types"):
        table = run.read_table(name)
        metrics = set(table.column("metric").to_pylist())
        assert metrics <= set(manifest["units"]), metrics - set(manifest["units"])
        rows = table.filter(pc.is_in(table["metric"], value_set=pa.array(sorted(layer_level))))
        assert rows.column("head").null_count == rows.num_rows
    sink = run.read_table("attention_sink").to_pandas()
    seg = sink[sink.metric == "segment_mass"]
    assert len(seg) and (seg.segment == "names").all()


def test_registry_has_the_new_probes():
    assert {"attention_sink", "massive_activations", "head_types"} <= set(PROBES)


def _numeric_fields():
    import dataclasses
    import typing

    from probes import PROBES

    for name, cls in PROBES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (float, int) or "float" in str(hints[f.name]):
                yield name, f.name


@pytest.mark.parametrize("probe, field", list(_numeric_fields()))
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_every_numeric_parameter_refuses_non_finite_values(probe, field, value):
    """Every probe's numeric parameters (read from the registry) refuse NaN and infinities, both
    from the command line and when the dataclass is built directly."""
    from probes import PROBES, make_probes
    from workbench.errors import InputError

    with pytest.raises(InputError, match=f"parameter {field}="):
        make_probes([probe], {probe: {field: value}})
    with pytest.raises(InputError, match=f"parameter {field}="):
        PROBES[probe](**{field: float(value.lower().replace("infinity", "inf"))})
