"""The main job's study: FLix against LoRA baselines on CLDR multilingual data.

Modules: `methods` (how each method adapts the backbone), `data` (TFDS,
mixture, model inputs), `training` (one run, resumable), `statistics`
(means, paired differences, breakdowns), `report` (report.md and plots),
`study` (the command line and the whole study). Run it through
`examples/multilingual_multitask.py`.
"""
