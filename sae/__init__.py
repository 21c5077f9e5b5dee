"""mechscope.sae: sparse dictionaries, their trainer, sweeps, evaluation and files.

Entry points (import from the submodules; importing this package loads nothing heavy):

- `mechscope.sae.config`: one `DictionaryConfig` per architecture (`TopKConfig`, `ReluConfig`,
  ...), `TrainConfig`, and `RunConfig` (both; ``from_dict`` reads a flat ``[sae]`` table),
  ``fields_help``, ``expand_sweep``
- `mechscope.sae.trainer.train(run_config, source, out_dir, resume=True) -> TrainResult`; every
  step reports a `TrainStep`
- `mechscope.sae.sweep.train_sweep(configs_or_grid, source, out_dir, resume=True) -> SweepResult`
  (`RunResult` per run, ``.row()`` for results tables)
- `mechscope.sae.evaluate.evaluate(dictionary, source, n_batches) -> EvalResult`;
  `mechscope.sae.splice_eval.evaluate_heldout(model, dictionaries, site, windows) -> [HeldoutEval]`
  (CE loss recovered and reconstruction, clean / ablated passes shared by a sweep)
- `mechscope.sae.io.save_dictionary(model, path)` / `load_dictionary(path)` (SAELens, sparsify;
  foreign weights have a `DictionaryConfig` and `Provenance`, no `TrainConfig`)
- `mechscope.sae.factory.build_dictionary(dictionary_config, train_config=None)`; architectures in
  topk, relu, jumprelu, matching_pursuit, codebook; synthetic sources in `mechscope.sae.synthetic`
- codebook features in a model (Tamkin et al.): the `codebook_features` subpackage
  (`codebook_features.model.CodebookModel`: bottlenecks at sites, fine-tuned through the LM
  loss by `codebook_features.train`; the TokFSM experiment, `codebook_features.fsm`; steering by
  codes, `codebook_features.steer`)
"""
