"""mechscope.interp: models, sites, hooks, token and activation streams, the offline model zoo.

Entry points (import from the submodules; importing this package loads nothing heavy):

- `mechscope.interp.models.load_model(spec) -> Model` (zoo name, local HF folder, hub name);
  `Model` is THE adapter to TransformerLens: `attn(L)` / `ln(L)` / `ln_final` / `W_E` / `W_pos` /
  `W_U` / `b_U` (typed in `mechscope.interp.weights`), `bos_id`, `positional`,
  `attention_direction`, `hooks(...)`, `run_with_cache(...)`; `Model.wrap(hooked_transformer)`
- `mechscope.interp.sites.Site` (``Site.parse("L3.resid_post")``, ``.hook_name``)
- `mechscope.interp.capture.capture(model, tokens, sites)` (stops after the last site)
- `mechscope.interp.intervene.patch / ablate / splice` (context managers)
- `mechscope.interp.tokens.open_token_stream(spec, n_ctx, model_or_tokenizer)`: the one resolver of
  text specs (``zoo:train``, ``hf:NAME[:SPLIT]``, .txt files / folders / globs, .npy/.bin memmaps;
  ``check_text_spec`` validates one), `token_ids`, `window_batches`; the stream classes
  `mechscope.interp.documents.DocumentTokenStream`, `mechscope.interp.token_memmap.MemmapTokenStream`
- `mechscope.interp.stream.ActivationStream` → `ActivationBatch`es; `mechscope.interp.cache`
- `mechscope.interp.lm_train.train_lm(net, sample, LMTrainConfig)`: the one LM training loop
- `mechscope.interp.zoo` (``names()``, ``load(name)``, ``card(name)``, ``corpus_text(split)``)
- `mechscope.interp.tokfsm.TokFSM`: sequences from a random finite state machine (codebook features)
"""
