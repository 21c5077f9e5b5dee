# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04 — The main job: train an SAE, read its features, trace a circuit with them, check it
#
# This is what mechscope is for, end to end on the default zoo model (`gpt2-shakespeare`, a
# 4-layer GPT-2-style model trained on Shakespeare, shipped with the package), offline, on a CPU,
# in about a minute:
#
# 1. **Train a sparse autoencoder (SAE)** on the model's residual stream. An SAE rewrites each
#    activation vector `x` as a sparse sum of learned directions, `x ≈ Σ_i f_i(x) d_i + b`, with
#    only `k` of the coefficients `f_i` non-zero (a *top-k* SAE; Gao et al. 2024). The hope is
#    that each direction `d_i` — a *feature* — means one thing.
# 2. **Read the features**: for each one, the texts where it fires most, how often it fires, and
#    which output tokens its direction pushes up or down. That is what the feature browser shows.
# 3. **Trace a circuit** through the features (sparse feature circuits, Marks et al. 2024): which
#    features matter for the model's prediction on a few prompts, estimated by attribution
#    patching — a first-order (gradient × difference) estimate of what removing each feature does.
# 4. **Verify** the estimate by doing the interventions for real: remove each feature of the
#    circuit (set it to its mean) and measure the change of the metric.
#
# The parameters below are sized for a quick run; CI runs this notebook with fewer steps.

# %% tags=["parameters"]
SAE_STEPS = 300  # training steps
BATCH_TOKENS = 1024  # activation vectors per step
D_DICT = 512  # number of features
K = 16  # active features per token
CARD_TOKENS = 8192  # held-out tokens the feature statistics are computed on

# %%
import itertools
import json
import tempfile
from pathlib import Path

import plotly.graph_objects as go
import torch

from mechscope.apps.browser import FeatureView, index_figure, write_feature_browser
from mechscope.apps.graph_viewer import graph_figure
from mechscope.circuits.attribution import Setup, logprob
from mechscope.circuits.feature_circuits import faithfulness, feature_circuit
from mechscope.circuits.verify import verify_nodes, spearman
from mechscope.interp import zoo
from mechscope.interp.documents import DocumentTokenStream
from mechscope.interp.models import load_model
from mechscope.interp.stream import ActivationStream
from mechscope.sae.config import RunConfig
from mechscope.sae.features import compute_feature_cards
from mechscope.sae.trainer import train

torch.manual_seed(0)
out = Path(tempfile.mkdtemp(prefix="mechscope-04-"))
model = load_model(zoo.DEFAULT)
SITE = "L2.resid_pre"  # the residual stream entering layer 2 (of 4)


def windows(split: str, n_ctx: int = 64, epochs: int | None = None) -> DocumentTokenStream:
    """Token windows of the zoo corpus (``train`` or ``heldout`` plays), one document at a time."""
    docs = [d for d in zoo.corpus_text(split).split("\n\n\n") if d.strip()]
    return DocumentTokenStream.from_texts(docs, model.tokenizer, n_ctx, seed=0, epochs=epochs)


print(model.name, "layers:", model.n_layers, "d_model:", model.d_model, "vocabulary:", model.tokenizer.vocab_size)

# %% [markdown]
# ## 1. Train a top-k SAE on the residual stream
#
# `ActivationStream` runs the model over the training plays and yields shuffled batches of
# activations at the site; `train` fits the SAE on them (Adam, decoder columns kept at unit norm,
# an auxiliary loss that revives features that stop firing). We watch the fraction of variance
# left unexplained (FVU; 0 is a perfect reconstruction) fall as it trains.

# %%
stream = ActivationStream(model, windows("train"), [SITE], batch_tokens=BATCH_TOKENS, model_batch_size=16,
                          shuffle_buffer=8 * BATCH_TOKENS, seed=0, drop_last=True)
cfg = RunConfig.from_dict(dict(architecture="topk", d_in=model.d_model, d_dict=D_DICT, k=K, site_in=SITE,
                               steps=SAE_STEPS, lr=1e-3, warmup_steps=min(20, SAE_STEPS // 5), log_every=5,
                               progress=False))
result = train(cfg, stream, out / "sae")
sae = result.dictionary
log = [json.loads(line) for line in (out / "sae" / "metrics.jsonl").read_text().splitlines()]
log = [r for r in log if "fvu" in r]
go.Figure(go.Scatter(x=[r["step"] for r in log], y=[r["fvu"] for r in log], mode="lines+markers"),
          layout=dict(title="SAE training: fraction of variance unexplained", xaxis_title="step",
                      yaxis_title="FVU", height=320, margin=dict(t=50)))

# %%
print(f"final FVU {float(result.last.fvu):.3f}, L0 {float(result.last.l0):.1f} active features per token")

# %% [markdown]
# ## 2. Read the features
#
# `compute_feature_cards` runs model + SAE over held-out plays once and keeps, per feature, its
# firing density, top contexts, a uniform sample of contexts across activation levels, an
# activation histogram, its direct effect on the output logits (decoder direction · unembedding)
# and its nearest neighbours. The index below plots every live feature by how often it fires
# (x) and how strongly (y); features that never fired are counted in the title.

# %%
cards = compute_feature_cards(model, sae, SITE, itertools.islice(windows("heldout", epochs=1), CARD_TOKENS // 64 + 1),
                              CARD_TOKENS, dictionary_name=f"top-k SAE @ {SITE}")
index_figure(cards, hide_dead=True)

# %% [markdown]
# One feature, as the browser shows it: "fires most on" counts the tokens at the peak of its top
# contexts — a first, token-level explanation to check against the contexts themselves. Here we
# pick the feature whose top contexts agree most on one token, among those firing on under 5%
# of tokens.

# %%
live = [c for c in cards if 0 < c.density < 0.05 and c.top_contexts]
pick = max(live, key=lambda c: (sum(c.top_contexts[j].tokens[c.top_contexts[j].max_index] ==
                                    c.top_contexts[0].tokens[c.top_contexts[0].max_index]
                                    for j in range(len(c.top_contexts))), c.max_activation))
FeatureView(pick)

# %% [markdown]
# The same cards as an offline browser (open `index.html` from disk; no server needed):

# %%
print("feature browser:", write_feature_browser(cards, out / "browser"))
print(f"{sum(c.dead for c in cards)} of {len(cards)} features never fired on {CARD_TOKENS} held-out tokens")

# %% [markdown]
# ## 3. Trace a circuit through the SAE's features
#
# The task: predict the next token of 8 held-out snippets of 24 tokens; the metric is the
# log-probability of the true next token at the last position. `Setup.build` splices the SAE
# into the model at the site (the activation becomes `decode(encode(x)) + error`, so the model's
# output is unchanged) and `feature_circuit` scores every feature — and the SAE's error term —
# by attribution patching against the mean activation, keeping those above a threshold
# (relative to the largest score).

# %%
snippets = torch.stack([w for w, _ in zip(windows("heldout", 25, epochs=1), range(8))])
prompts, targets = snippets[:, :-1], snippets[:, -1]
setup = Setup.build(model, {SITE: sae}, logprob(targets), prompts, ablation="mean")
graph = feature_circuit(setup, method="atp", node_threshold=0.1, relative=True)
faith = faithfulness(graph, setup)
print(graph)
print(f"faithfulness of the circuit: {faith.faithfulness:.2f} (1 = the circuit alone reproduces the metric)")
graph_figure(graph)

# %% [markdown]
# ## 4. Verify: intervene for real
#
# Attribution patching is a linear estimate. `verify_nodes` sets each node of the circuit to its
# reference (mean) value, one at a time, reruns the model and measures the change of the metric.
# If the estimate is good, the points lie on the diagonal.

# %%
ids, effects = verify_nodes(graph, setup)
estimates = [graph.nodes[i].score for i in ids]
print(f"{len(ids)} nodes: rank correlation of estimate and real effect {spearman(estimates, effects):.2f}")
lim = max(max(map(abs, estimates)), max(map(abs, effects)))
go.Figure([go.Scatter(x=estimates, y=effects, mode="markers", text=ids, hovertemplate="%{text}<br>estimate %{x:.3f}"
                      "<br>real %{y:.3f}<extra></extra>", name="nodes"),
           go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", line=dict(dash="dot", color="grey"), name="y = x")],
          layout=dict(title="attribution patching estimate vs real ablation effect", height=380,
                      xaxis_title="estimated effect on log p(next token)", yaxis_title="real effect", margin=dict(t=50)))

# %% [markdown]
# The strongest feature of the circuit, as a feature page — the link from circuit back to
# browser (`mechscope trace --browser DIR` makes the same link in the HTML graph viewer):

# %%
top = max((n for n in graph.nodes.values() if n.kind == "feature"), key=lambda n: abs(n.score), default=None)
FeatureView(cards[top.index]) if top is not None else print("no feature node passed the threshold")
