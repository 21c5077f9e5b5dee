"""mechscope.circuits: circuit tracing into one `Graph` type, and causal verification.

Entry points (import from the submodules):

- `mechscope.circuits.graph.Graph` / `Node` / `GraphMeta`, canonical node ids (`node_id`,
  `parse_node_id`), `head_label` (prune, aggregate, JSON version 2, networkx)
- `mechscope.circuits.attribution.Setup`, `node_scores` (grad x act, attribution patching, IG)
- `mechscope.circuits.feature_circuits.feature_circuit / trace / faithfulness` (Marks et al.)
- `mechscope.circuits.routes.flow_contributions / extract_route`, `routes_aggregate` (Ferrando & Voita)
- `mechscope.circuits.attention_svd`, `svd_trace.trace_attention` (Franco & Crovella)
- `mechscope.circuits.verify.verify_edges / score_against / verify_task`; `known` circuits
"""
