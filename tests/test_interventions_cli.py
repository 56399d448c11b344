"""`workbench intervene`: a sweep written as a run, generations, and bad specs stopped early."""

from __future__ import annotations

import json

import pytest

from workbench_cli.cli import main
from workbench.store import RunDir
from workbench.heads import format_head


def test_intervene_cli_sweep_and_generations(tmp_path, small_prompts, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"op": "attention_temperature", "heads": ["1.0", "2.3"]},
                                {"op": "mask_keys", "heads": ["0.1"], "segments": ["names"]}]))
    main(["intervene", "--model", "tiny-llama", "--prompts", str(small_prompts), "--spec",
          str(spec), "--sweep", "temperature=0.5,1,2", "--generate", "2", "--n-generate", "1",
          "--runs-dir", str(tmp_path / "runs"), "--run-id", "r", "--no-progress"])
    shown = capsys.readouterr().out
    assert "temperature=0.5" in shown and "generations for" in shown
    run = RunDir.open(tmp_path / "runs" / "r")
    manifest = run.read_manifest()
    assert manifest["intervention"]["spec_text"] == spec.read_text()
    assert manifest["intervention"]["sweep"] == {"name": "temperature", "values": [0.5, 1, 2]}
    assert set(manifest["verification"]) == {"hook_attn_scores", "hook_pattern"}
    assert set(manifest["generations"][0]) == {"prompt_id", "baseline", "temperature=0.5",
                                               "temperature=1", "temperature=2"}
    frame = run.read_table("interventions").to_pandas()
    conds = set(frame["condition"].dropna())
    assert conds == {"temperature=0.5", "temperature=1", "temperature=2"}  # no answers: KL only
    assert set(frame["metric"]) == {"kl_divergence", "mean_kl_divergence",
                                    "head_output_rel_error", "mean_head_output_rel_error"}


@pytest.mark.parametrize("spec, sweep, message", [
    ([{"op": "scale_head", "heads": ["9.0"]}], None, f"head {format_head((9, 0))} is out of range"),
    ([{"op": "nudge", "heads": ["1.0"]}], None, "unknown operation 'nudge'"),
    ([{"op": "scale_head", "heads": ["1.0"]}], "sigma=1,2", "no operation of the spec has"),
    ([{"op": "mask_keys", "heads": ["1.0"], "segments": ["passage"]}], None,
     "has no segment 'passage'"),
])
def test_intervene_cli_bad_input_exits_2(tmp_path, small_prompts, capsys, spec, sweep, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    argv = ["intervene", "--model", "tiny-llama", "--prompts", str(small_prompts), "--spec",
            str(path), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        main(argv + (["--sweep", sweep] if sweep else []))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "runs").exists()
