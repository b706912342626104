"""The model layer that serving and training share: one definition of "base + adapter + head + input template".

It imports neither `pm_server.serving` nor `pm_server.training`. Modules:

* `base`: `load_base`, the base model with its tokenizer, default template, dtype and device.
* `template`: `InputTemplate` and `TemplateEncoder`, how a (prompt, response) becomes model input.
* `package`: adapter packages (``<root>/<principle>/<version>/``): check, save, find; safetensors only.
* `engine`: `ScoringEngine`, one mixed-adapter forward over rows (plain torch; one thread may call it).
* `grouped`: `GroupedLoRA`, one batched matmul per LoRA layer for every adapter, and the shared trunk.
* `readout`: the last layer computed only at the position the score head reads.
"""
