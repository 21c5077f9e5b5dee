"""Canonical node ids (build / parse), the version-2 JSON form, and reading version-1 files."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from mechscope.circuits.graph import (Graph, GraphMeta, Node, head_label, node_id, parse_head,
                                      parse_node_id, without_position)
from mechscope.circuits.graph_v1 import GraphV1Error, convert

DATA = Path(__file__).parent / "data"

# (node_id arguments, the id DESIGN.md spells)
CASES = [
    (("head", 3, 5, None, 7), "L3.H5@7"),
    (("head", 3, 5, "L3.z"), "L3.H5"),
    (("mlp", 3, None, None, 7), "L3.mlp@7"),
    (("attention", 0), "L0.attn"),
    (("residual", 3, None, "L3.resid_post", 7), "L3.resid_post@7"),
    (("feature", 3, 812, "L3.resid_post", 7), "L3.resid_post.f812@7"),
    (("feature", 1, 4, "L1.z.H2"), "L1.z.H2.f4"),
    (("error", 3, None, "L3.resid_post", 7), "L3.resid_post.err@7"),
    (("embedding", -1, None, None, 7), "embed@7"),
    (("embedding", -1, None, "embed.pos"), "embed.pos"),
    (("logit", 12, None, None, 7, "Romeo"), 'logit."Romeo"@7'),
    (("logit", 12), "logit"),
]
NASTY_TOKENS = ['"', "@3", "\\", "\n", " Romeo", "é", "", '"}@1', "logit.x", "\u2028", "\x00"]


@pytest.mark.parametrize("args, expected", CASES)
def test_ids_are_canonical_and_parse_back(args, expected):
    nid = node_id(*args)
    assert nid == expected
    key = parse_node_id(nid)
    kind, layer, index, site, position, token = (list(args) + [None] * 6)[:6]
    assert key.kind == kind and key.index == index and key.position == position and key.token == token
    assert key.layer == (None if kind == "logit" else layer)
    # the parsed key rebuilds the same id, and dropping the position is the summed component
    assert node_id(key.kind, key.layer, key.index, key.site, key.position, key.token) == nid
    assert without_position(nid) == expected.split("@")[0]


@pytest.mark.parametrize("token", NASTY_TOKENS)
def test_any_token_string_survives_an_id(token):
    for pos in (None, 0, 41):
        nid = node_id("logit", 2, None, None, pos, token)
        key = parse_node_id(nid)
        assert (key.token, key.position) == (token, pos)
        assert without_position(nid) == node_id("logit", 2, token=token)
        assert "\n" not in nid  # control characters are escaped


def test_bad_ids_and_nodes_are_refused():
    for bad in ["head/L0/1@5", "L0.H1@x", "L0.H1@-1", "L3.foo", "embed.word", 'logit."x', "logit.x",
                "L0.z", "L0.H1@5@6", ""]:
        with pytest.raises(ValueError, match="node id"):
            parse_node_id(bad)
    with pytest.raises(ValueError, match="needs its site"):
        Node("feature", 0, index=3)
    with pytest.raises(ValueError, match="layer"):
        Node("feature", 1, index=3, site="L0.resid_post")
    with pytest.raises(ValueError, match="residual site"):
        Node("residual", 0, site="L0.z")
    with pytest.raises(ValueError, match="head index"):
        Node("head", 0)


def test_head_labels():
    assert head_label(3, 5) == "L3H5"
    assert parse_head("L3H5") == parse_head(" L3.H5") == (3, 5)
    assert parse_head(head_label(11, 0)) == parse_node_id(node_id("head", 11, 0))[1:3]
    with pytest.raises(ValueError, match="L<layer>H<head>"):
        parse_head("3.5")


def test_one_component_from_two_sites_is_refused():
    g = Graph()
    g.add_node(Node("head", 0, None, 1, site="L0.z"))
    g.add_node(Node("head", 0, None, 1, site="L0.z", score=2.0))  # same node: score replaced
    assert g.nodes["L0.H1"].score == 2.0
    with pytest.raises(ValueError, match="same component"):
        g.add_node(Node("head", 0, None, 1, site="L0.result"))


def _v2() -> Graph:
    toks = (("<bos>", "a", '"q"'), ("<bos>", "b", "c"))
    g = Graph(meta=GraphMeta("toy", "u", "m", 2, 2, tuple("".join(t) for t in toks), toks,
                             {"tau": 0.1}, details={"prediction": 3}))
    e = g.add_node(Node("embedding", -1, 1, score=1.0))
    h = g.add_node(Node("head", 0, 2, 1, score=0.5))
    out = g.add_node(Node("logit", 2, 2, token='"q"', score=1.0))
    g.add_edge(e, h, 0.25)
    g.add_edge(h, out, -0.5)
    route = Graph(meta=GraphMeta("toy/route", "u", "m", 2, 1, (toks[0][0],), ((toks[0][0],),)))
    route.add_node(Node("embedding", -1, 0))
    g.per_prompt = [route]
    return g


def test_version_2_round_trip(tmp_path):
    g = _v2().prune(edge_threshold=0.1)
    data = json.loads(g.save(tmp_path / "g.json").read_text())
    assert data["version"] == 2 and set(data["meta"]) == {f.name for f in fields(GraphMeta)}
    assert [n["id"] for n in data["nodes"]] == ["embed@1", "L0.H1@2", 'logit."\\"q\\""@2']
    back = Graph.load(tmp_path / "g.json")
    assert back.to_dict() == g.to_dict() and back.meta == g.meta and back.nodes == g.nodes
    assert back.meta.pruned.edge_threshold == 0.1 and back.per_prompt[0].nodes == g.per_prompt[0].nodes
    data["nodes"][1]["id"] = "L0.H2@2"  # an id that does not match its fields
    with pytest.raises(ValueError, match="does not match"):
        Graph.from_dict(data)
    data = g.to_dict()
    data["meta"]["n_layer"] = 3
    with pytest.raises(ValueError, match="unknown graph metadata.*n_layers"):
        Graph.from_dict(data)


def _v1(name: str) -> dict:
    return json.loads((DATA / f"v1_{name}.json").read_text())


def _v1_to_v2(old: str, method: str) -> str:
    """The canonical id of a version-1 id, rewritten by hand from the two formats' grammars."""
    kind, rest = old.split("/", 1)
    body, _, pos = rest.partition("@")
    at = f"@{pos}" if pos else ""
    if kind == "embedding":
        part = {"pos_embed": "embed.pos"}.get(body, "embed.tok" if method == "attention_svd" else "embed")
        return part + at
    if kind == "logit":
        return "logit" + at
    where, _, index = body.partition("/")
    layer = where.split(".")[0]
    return {"head": f"{layer}.H{index}", "feature": f"{where}.f{index}", "error": f"{where}.err",
            "residual": where, "mlp": f"{layer}.mlp"}[kind] + at


@pytest.mark.parametrize("name", ["feature_circuit", "feature_circuit_per_position", "routes", "attention_svd"])
def test_version_1_files_are_converted(name):
    """Files written by the version-1 code: every node keeps its fields under its canonical id,
    every edge its weight, and the free metadata lands in GraphMeta."""
    old = _v1(name)
    g = Graph.load(DATA / f"v1_{name}.json")
    md = old["metadata"]
    ids = {n["id"]: _v1_to_v2(n["id"], md["method"]) for n in old["nodes"]}
    assert set(g.nodes) == set(ids.values())
    for n in old["nodes"]:
        new = g.nodes[ids[n["id"]]]
        assert (new.kind, new.layer, new.position, new.score) == (n["kind"], n["layer"], n["position"], n["score"])
    assert g.edges == {(ids[e["source"]], ids[e["target"]]): e["weight"] for e in old["edges"]}
    assert (g.meta.method, g.meta.units, g.meta.model) == (md["method"], md["units"], md["model"])
    assert g.meta.parameters == {**md.get("parameters", md.get("params", {})),
                                 **({"position": md["position"]} if "position" in md else {})}
    assert all(parse_node_id(i) for i in g.nodes)  # every id is canonical


def test_version_1_specifics():
    fc = Graph.load(DATA / "v1_feature_circuit.json")
    assert {"L1.H0", "L0.attn_out.f1", "L0.attn_out.err", "logit"} <= set(fc.nodes)
    assert fc.meta.faithfulness == _v1("feature_circuit")["metadata"]["faithfulness"]["faithfulness"]
    assert fc.meta.n_layers == 2 and fc.meta.n_prompts == 2
    per = Graph.load(DATA / "v1_feature_circuit_per_position.json")
    assert "L1.H2@4" in per.nodes and "L0.attn_out.f1@4" in per.nodes
    routes = Graph.load(DATA / "v1_routes.json")
    assert routes.meta.aggregated.graphs == 2 and routes.meta.prompts == ("hello", "abcd")
    assert routes.meta.details == {}  # v1 copied the first route's prediction up; each route keeps its own
    assert routes.meta.aggregated.counts["L0.H2"] == 2 and routes.meta.aggregated.counts["embed"] == 2
    assert [len(r.nodes) for r in routes.per_prompt] == [17, 12]
    r0 = routes.per_prompt[0]
    assert {"L1.resid_post@4", "L1.H1@4", "embed@0"} <= set(r0.nodes)
    assert r0.meta.prompt_tokens == (("<4>", "<1>", "<8>", "<8>", "<11>"),)
    assert r0.meta.details == {"prediction": 3, "target": -1} and r0.meta.parameters["position"] == 4
    svd = Graph.load(DATA / "v1_attention_svd.json")
    assert set(svd.nodes) == {"embed.tok", "embed.pos", "L1.H0", "L0.H0", "L0.H1", "L0.H2", "L0.H3"}
    old_sides = _v1("attention_svd")["metadata"]["sides"]
    assert svd.meta.details["sides"]["embed.pos->L1.H0"] == old_sides["embedding/pos_embed->head/L1/0"]
    assert svd.meta.details["firings"][0]["L1.H0"] == 21


def test_version_1_files_that_cannot_be_mapped_are_refused(tmp_path):
    data = _v1("feature_circuit")
    twin = dict(next(n for n in data["nodes"] if n["id"] == "head/L1.z/0"))
    twin.update(id="head/L1.result/0", site="L1.result")  # the same head read at a second site
    data["nodes"].append(twin)
    (tmp_path / "twin.json").write_text(json.dumps(data))
    with pytest.raises(GraphV1Error, match="same component 'L1.H0'.*Re-trace"):
        Graph.load(tmp_path / "twin.json")
    data = _v1("attention_svd")
    data["edges"].append({"source": "head/L9/9", "target": "head/L1/0", "weight": 1.0})
    with pytest.raises(GraphV1Error, match="'head/L9/9'.*Re-trace"):
        convert(data)
    data = _v1("routes")
    data["version"] = 0
    (tmp_path / "v0.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 0 is not supported.*converts version 1"):
        Graph.load(tmp_path / "v0.json")


def test_metadata_is_checked_once():
    assert GraphMeta(n_prompts=2).prompt_tokens == ()  # unknown tokens are allowed, wrong counts not
    with pytest.raises(ValueError, match="2 prompt_tokens for n_prompts=1"):
        GraphMeta(n_prompts=1, prompt_tokens=(("a",), ("b",)))
