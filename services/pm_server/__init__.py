"""The PM server: one base model, one LoRA adapter + score head per principle, batched scoring over HTTP; and
the training and evaluation of those preference models.

Three rooms (docs/architecture.md walks a request through them):

* `model`: what serving and training share: the base, the input template, adapter packages, the scoring engine.
* `serving`: the HTTP face (routes, app), the scoring service, adapter management, the batcher.
* `training`: ``morlaif pm train`` and ``pm eval``: PM training, pairs, evaluation, reports.

`serving` and `training` import `model`, never each other. The thin CLI modules on top:

* `cli`: ``morlaif serve``.
* `pm_cli`: ``morlaif pm train``, ``pm eval``, ``pm split``.
"""
