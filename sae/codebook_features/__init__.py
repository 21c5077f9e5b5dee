"""The Codebook Features study (Tamkin et al. 2023, "Codebook Features: Sparse and Discrete
Interpretability for Neural Networks"): codebook bottlenecks inside a language model.

- `model`: `CodebookModel` / `CodebookSpec` — at chosen sites an activation is replaced by the
  sum of its k nearest codes (cosine), with a straight-through backward; each codebook is the
  plain `mechscope.sae.codebook.CodebookDictionary` architecture.
- `train`: fine-tuning the whole network through the bottlenecks with the one LM training loop
  (`mechscope.interp.lm_train`) plus the codebook and commitment terms; `loss_increase`, the
  paper's cost measure.
- `fsm`: the TokFSM experiment (section 4): states identified by single codes, and steered.
- `steer`: codes as detectors (precision / recall / F1) and generation with codes forced on.

Importing this package loads nothing heavy; import from the submodules.
"""
