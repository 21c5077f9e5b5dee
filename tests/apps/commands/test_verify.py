"""`mechscope verify`'s table."""

from mechscope.apps.commands.verify import format_verify


def test_format_verify_lists_every_row():
    row = {"task": "t", "method": "atp", "ablation": "mean", "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
           "faithfulness": 0.9, "completeness": 0.1, "node_rank_corr": 1.0, "edge_rank_corr": 0.5,
           "nodes": 2, "edges": 3, "found": ["L0H1"], "missed": ["L1H3"], "extra": []}
    text = format_verify([row, {**row, "task": "u"}])
    assert "precision" in text and "0.667" in text and "missed ['L1H3']" in text and "u/atp" in text


def test_planted_table_rows_are_the_evaluations():
    from mechscope.apps.commands.verify import planted_table
    from mechscope.circuits import planted
    from mechscope.circuits.known_truth import evaluate

    text = planted_table(["inert"], ["routes", "eap"], n_prompts=2)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["model", "method", "precision", "recall", "sign_agreement"]
    r = evaluate("inert", planted.task("inert", n_prompts=2), "routes")
    assert lines[1].split()[:5] == ["inert", "routes", f"{r.precision:.2f}", f"{r.recall:.2f}", "n/a"]
    assert "L0.H3" in lines[1] and lines[2].split()[:2] == ["inert", "eap"]
