"""mechscope.sae: sparse dictionaries, their trainer, sweeps, evaluation and files.

Entry points (import from the submodules; importing this package loads nothing heavy):

- `mechscope.sae.config.TrainConfig` (+ ``from_dict``, ``fields_help``, ``expand_sweep``)
- `mechscope.sae.trainer.train(config, source, out_dir, resume=True) -> TrainResult`
- `mechscope.sae.sweep.train_sweep(configs_or_grid, source, out_dir, resume=True) -> SweepResult`
- `mechscope.sae.evaluate.evaluate(dictionary, source, n_batches) -> EvalResult`
- `mechscope.sae.io.save_dictionary(model, path)` / `load_dictionary(path)` (SAELens, sparsify)
- `mechscope.sae.factory.build_dictionary(config)`; architectures in topk, relu, jumprelu,
  matching_pursuit, codebook; synthetic sources in `mechscope.sae.synthetic`
- codebook features in a model (Tamkin et al.): `codebook_model.CodebookModel` (bottlenecks at
  sites, fine-tuned through the LM loss by `codebook_train`), the TokFSM experiment
  (`codebook_fsm`), steering by codes (`steer`)
"""
