# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 03 — Find the induction circuit three ways, and check it causally
#
# The zoo's `attn-only-induction` model was trained on repeated random segments; its card
# records which heads score as previous-token and induction heads. We trace it with
# (1) a feature circuit at head level with integrated gradients, (2) information flow routes,
# (3) the attention-SVD decomposition of an induction head, and score each against the card.
# Each graph is drawn inline (`graph_figure`) and written as an offline HTML viewer under
# `runs/examples/03/`.
#
# *Induction* (Olsson et al. 2022): on a sequence `… A B … A`, predict `B`. Two heads do it
# together: a *previous-token head* in layer 0 writes "the token before me was A" into each
# position, and an *induction head* in layer 1 looks for the position whose previous token
# matches the current one and copies its token. The zoo model's card lists the heads that score
# as each; a tracing method is good if it finds them without being told.

# %%
from pathlib import Path

from mechscope.apps.graph_viewer import graph_figure, write_graph_html
from mechscope.circuits.feature_circuits import trace
from mechscope.circuits.known import induction_circuit, induction_setup
from mechscope.circuits.routes_aggregate import prompt_routes
from mechscope.circuits.attention_svd_checks import ReconstructionCheck
from mechscope.circuits.svd_trace import sources, trace_attention
from mechscope.circuits.verify import score_against
from mechscope.interp import zoo
from mechscope.interp.models import load_model

out = Path("runs/examples/03")
out.mkdir(parents=True, exist_ok=True)
model = load_model("attn-only-induction")
known = induction_circuit(zoo.card("attn-only-induction"))
print("known circuit from the card:", known)

# %% [markdown]
# ## 1. Feature circuit at head level (Marks et al.), integrated gradients
# Every head is a node; its score estimates how much the metric (the logit of the correct
# repeated token) changes when the head's output is replaced by its mean. Attribution patching
# (one gradient) underestimates saturated attention heads (Kramár et al. 2024); integrated
# gradients (IG) average the gradient along the path from clean to mean and do not.

# %%
setup = induction_setup(model, n_prompts=8)
graph, faith = trace(setup, method="ig", node_threshold=0.1, relative=True)  # threshold relative to the top node
print(graph, faith)
print("vs known:", score_against(graph, known.components))
write_graph_html(graph, out / "feature_circuit.html")
graph_figure(graph)

# %% [markdown]
# ## 2. Information flow routes of a repeated-token prediction
# Ferrando & Voita 2024: starting from the prediction, keep only the edges (attention from one
# position to another, through one head) that carry a large share of the residual stream's
# content, layer by layer backwards. No gradients, one forward pass per prompt.

# %%
tokens = setup.clean[:4]
routes = prompt_routes(model, tokens)
print(routes[0])
write_graph_html(routes[0], out / "route.html")
graph_figure(routes[0])

# %% [markdown]
# ## 3. Attention-SVD: which upstream heads write what an induction head reads
# Franco & Crovella: decompose the induction head's query-key matrix by SVD and attribute its
# attention score to the upstream heads whose outputs feed the query and key sides; the value
# side splits the head's output among the upstream writes it reads through its OV circuit. The
# previous-token head should appear on the key (k) side; with `candidates="all"` the token
# embedding shows on the query and value sides.

# %%
ind_layer, ind_head = next((c[1], c[2]) for c in known.components if c[1] == 1)
svd = trace_attention(model, list(tokens), [(ind_layer, ind_head)])
print(svd)
print(ReconstructionCheck.from_dict(svd.meta.details["check"]).summary())
for channel in ("q", "k", "v"):
    print(channel, sources(svd, (ind_layer, ind_head), channel))
write_graph_html(svd, out / "attention_svd.html")
print("viewers written to", out)
graph_figure(svd)
