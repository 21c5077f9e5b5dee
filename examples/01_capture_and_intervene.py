# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 — Capture activations and intervene
#
# Load the default zoo model (offline), read activations at typed sites, check the residual
# stream identity, and measure what zero-ablating each attention layer does to the loss.
#
# A *site* names one place in the model where activations live, e.g. `L1.attn_out` (what the
# attention block of layer 1 adds to the residual stream). `capture` runs the model once and
# returns the activations at the sites asked for; `ablate` is a context manager that replaces a
# site's activation (here with zeros) while the model runs, and always removes its hook.

# %%
import plotly.graph_objects as go
import torch

from mechscope.interp import zoo
from mechscope.interp.capture import capture
from mechscope.interp.intervene import ablate
from mechscope.interp.models import load_model

model = load_model(zoo.DEFAULT)
text = zoo.corpus_text("heldout")[:2000]
tokens = model.to_tokens(text, truncate=True)  # the first n_ctx tokens
print(model.name, "layers:", model.n_layers, "d_model:", model.d_model, "tokens:", tokens.shape[1])

# %% [markdown]
# ## Sites and the residual-stream identity
# `resid_post = resid_pre + attn_out + mlp_out` at every layer.

# %%
sites = [f"L{layer}.{kind}" for layer in range(model.n_layers)
         for kind in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
acts = capture(model, tokens, sites)
for layer in range(model.n_layers):
    a = {s.kind: v for s, v in acts.items() if s.layer == layer}
    err = (a["resid_pre"] + a["attn_out"] + a["mlp_out"] - a["resid_post"]).abs().max().item()
    print(f"layer {layer}: max |identity error| = {err:.2e}")

# %% [markdown]
# ## Zero-ablating attention, layer by layer
# The increase of the next-token loss when one layer's attention output is removed measures how
# much the model relies on that layer here (a large increase: the layer matters for this text).

# %%
increase = {}
with torch.no_grad():
    clean = model(tokens, return_type="loss").item()
    print(f"clean loss {clean:.3f}")
    for layer in range(model.n_layers):
        with ablate(model, f"L{layer}.attn_out", "zero"):
            loss = model(tokens, return_type="loss").item()
        increase[f"layer {layer}"] = loss - clean
        print(f"attention of layer {layer} zeroed: loss {loss:.3f} ({loss - clean:+.3f})")
go.Figure(go.Bar(x=list(increase), y=list(increase.values())),
          layout=dict(title="loss increase when one layer's attention is zeroed", yaxis_title="Δ loss (nats/token)",
                      height=320, margin=dict(t=50)))
