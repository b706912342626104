"""Training and evaluating preference models: ``morlaif pm train``, ``pm eval`` and what prepares and corrects them.

It imports the model layer (`pm_server.model`), never `pm_server.serving`. Modules:

* `trainer`: `train_pm`, one LoRA adapter + score head per principle, soft Bradley-Terry loss, checkpoints and
  resume, an adapter package at the end.
* `pairs`: preference pairs from files or the label store, split by prompt.
* `evaluation`: accuracy per principle against baselines; scalarizers on human preferences with fitted weights.
* `pm_eval`: `run_pm_eval`, the ``pm eval`` job (scores, evaluation, report, ``weights.json``).
* `report`: ``pm eval``'s figures and ``report.md``.
* `length`: ``pm length-correct``, one coefficient per package that takes its length lean out of the served score.
* `refusals`: ``pm refusal-pairs``, stock refusals against real replies, the prompt deciding which wins.
"""
