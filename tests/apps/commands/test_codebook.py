"""`mechscope codebook train / find / steer` on a quick TokFSM job."""

import pytest

from mechscope.sae.codebook_features.model import CodebookModel

QUICK_JOB = """
[fsm]
n_states = 12
out_degree = 2
base = 4
n_steps = 6
[model]
n_layers = 1
d_model = 16
n_heads = 2
d_mlp = 32
[pretrain]
steps = 5
[codebook]
sites = ["L0.mlp_out"]
n_codes = 8
[finetune]
steps = 3
[eval]
sequences = 8
steer_prompts_per_state = 1
"""


def test_codebook_job_and_cli(tmp_path, capsys):
    from mechscope.apps.cli import main
    from mechscope.apps.commands.codebook import load_config

    cfg = tmp_path / "job.toml"
    cfg.write_text(QUICK_JOB)
    assert main(["codebook", "train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    report = __import__("json").loads((tmp_path / "run" / "report.json").read_text())
    assert set(report) == {"base_transitions", "loss", "transitions", "state_identification", "steering"}
    assert report["steering"]["n_codebooks"] == 1 and 0 <= report["steering"]["follow_rate"] <= 1
    assert "follows the target" in capsys.readouterr().out
    back = CodebookModel.load(tmp_path / "run")
    assert back.spec.sites == ("L0.mlp_out",) and back.extra["config"]["fsm"]["n_states"] == 12
    assert main(["codebook", "steer", str(tmp_path / "run"), "--tokens", "4 0 1 2 3", "--site", "L0.mlp_out",
                 "--code", "3", "--new-tokens", "2"]) == 0
    assert main(["codebook", "find", str(tmp_path / "run"), "--tokens", "4 0 1 2 3 1", "--token-id", "1"]) == 0
    assert "precision" in capsys.readouterr().out
    assert main(["codebook", "steer", str(tmp_path / "run"), "--tokens", "4 0", "--site", "L3.mlp_out",
                 "--code", "1"]) == 2
    assert "codebook sites: L0.mlp_out" in capsys.readouterr().err
    assert main(["codebook", "steer", str(tmp_path / "run"), "--tokens", "4 0", "--site", "L0.mlp_out",
                 "--code", "1", "--device", "cpu"]) == 0
    assert main(["codebook", "steer", str(tmp_path / "run"), "--tokens", "4 0", "--site", "L0.mlp_out",
                 "--code", "1", "--device", "cuda:7"]) == 2
    assert "cuda:7" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[codebook]\nsites = ['L0.mlp_out']\n")
    with pytest.raises(ValueError, match="exactly one of \\[fsm\\]"):
        load_config(bad)
