"""The engine on tiny random encoder and decoder models: mixed-adapter batches, padding, packages."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from peft import PeftModel

from pm_server.model.base import load_base
from pm_server.model.engine import BASE_ADAPTER, Row, ScoringEngine, collate
from pm_server.model.package import PackageError, check_package, find_packages, resolve_package_dir
from pm_server.model.template import InputTemplate, TemplateEncoder
from rigs.pm_packages import make_random_package

PROMPTS = [
    ("What is the capital of France?", "Paris."),
    (
        "Tell me a long story about a dragon who learned to code in Python and then wrote a compiler.",
        "Once upon a time there was a dragon. It liked loops.",
    ),
    ("hi", "Hello! How can I help you today? I can answer questions, write text, and more."),
    ("Is the earth flat?", "No."),
    (
        "Explain GAE.",
        "Generalised advantage estimation mixes n-step returns with an exponential weight lambda.",
    ),
]


@pytest.fixture(scope="module", params=["encoder", "decoder"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def setup(family, tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    base_dir = tiny_encoder_dir if family == "encoder" else tiny_decoder_dir
    base = load_base(str(base_dir))
    root = tmp_path_factory.mktemp(f"pk-{family}")
    names = ["helpfulness", "harmlessness", "factuality"]
    for i, n in enumerate(names):
        # different ranks, layer sets and modules (LoRA on every linear layer: pm train --target-modules
        # all-linear): the grouped path pads ranks and leaves untouched layers and modules alone
        make_random_package(
            root,
            base,
            n,
            "v1",
            seed=100 + i,
            r=8 if i == 1 else 4,
            layers_to_transform=[1] if i == 2 else None,
            target_modules="all-linear" if i == 1 else None,
        )
    engine = ScoringEngine(base)
    for n in names:
        engine.load_adapter(root / n / "v1", n)
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    return base_dir, base, root, names, engine, enc


def _rows(enc, adapters):
    out = []
    for p, r in PROMPTS:
        e = enc.encode(p, r)
        for a in adapters:
            out.append(Row(e.input_ids, e.token_type_ids, a))
    return out


def test_family_detected(setup, family):
    _, base, *_ = setup
    assert base.family == family
    assert base.default_template.kind == ("pair" if family == "encoder" else "text")


def test_mixed_batch_equals_each_adapter_alone(setup):
    base_dir, base, root, names, engine, enc = setup
    assert engine.mixed_path == "grouped"
    rows = _rows(enc, names)  # item-major, all principles interleaved in one batch
    mixed = engine.score(rows)
    for j, n in enumerate(names):
        # reference: plain PEFT with only this adapter active, same inputs (same padding)
        ref_model = PeftModel.from_pretrained(load_base(str(base_dir)).model, str(root / n / "v1"))
        ref_model.eval()
        ref_rows = [r for r in rows if r.adapter == n]
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(ref_rows), width), base.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(ref_rows):
            ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            mask[i, : len(r.input_ids)] = 1
        kw = {"input_ids": ids, "attention_mask": mask}
        if ref_rows[0].token_type_ids is not None:
            tt = torch.zeros_like(ids)
            for i, r in enumerate(ref_rows):
                tt[i, : len(r.token_type_ids)] = torch.tensor(r.token_type_ids)
            kw["token_type_ids"] = tt
        with torch.inference_mode():
            ref = ref_model(**kw).logits[:, 0].tolist()
        got = [mixed[i * len(names) + j] for i in range(len(PROMPTS))]
        assert got == pytest.approx(ref, abs=1e-5), n
    # the principles really differ, or the test above would prove nothing
    assert len({round(x, 4) for x in mixed[: len(names)]}) == len(names)


def test_scores_do_not_depend_on_batch_mates_or_padding(setup):
    _, base, _, names, engine, enc = setup
    e = enc.encode(*PROMPTS[0])
    alone = engine.score([Row(e.input_ids, e.token_type_ids, "helpfulness")])[0]
    long = enc.encode("x " * 150, "y " * 50)
    mates = [Row(long.input_ids, long.token_type_ids, a) for a in names]
    together = engine.score(mates + [Row(e.input_ids, e.token_type_ids, "helpfulness")] + mates)
    assert together[len(mates)] == pytest.approx(alone, abs=1e-4)


def test_grouped_path_equals_peft_adapter_names(setup):
    base_dir, base, root, names, engine, enc = setup
    peft_engine = ScoringEngine(load_base(str(base_dir)), grouped=False)
    for n in names:
        peft_engine.load_adapter(root / n / "v1", n)
    assert peft_engine.mixed_path == "peft"
    rows = _rows(enc, [*names, BASE_ADAPTER])
    assert engine.score(rows) == pytest.approx(peft_engine.score(rows), abs=1e-5)


# PEFT 0.21 mistakes a LoRA bias for an unsharded tensor when saving
@pytest.mark.filterwarnings("ignore:Adapter 'default'.*invalid shape")
def test_unsupported_adapters_fall_back_to_peft(tmp_path, tiny_encoder_dir):
    import copy

    from peft import LoraConfig, get_peft_model

    from pm_server.model.package import PackageManifest, save_package

    base = load_base(str(tiny_encoder_dir))
    make_random_package(tmp_path, base, "helpfulness", "v1", seed=1)
    biased = get_peft_model(
        copy.deepcopy(base.model), LoraConfig(task_type="SEQ_CLS", r=4, lora_bias=True, init_lora_weights=False)
    )
    manifest = PackageManifest(
        name="empathy", base_model=base.model_id, base_config_hash=base.config_hash, template=base.default_template
    )
    save_package(biased, "default", tmp_path / "empathy" / "v1", manifest)
    engine = ScoringEngine(base)
    engine.load_adapter(tmp_path / "helpfulness" / "v1", "h")
    assert engine.mixed_path == "grouped"
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    e = enc.encode("q", "a")
    h_alone = engine.score([Row(e.input_ids, e.token_type_ids, "h")])[0]
    engine.load_adapter(tmp_path / "empathy" / "v1", "e")
    assert engine.mixed_path == "peft"
    both = engine.score([Row(e.input_ids, e.token_type_ids, "h"), Row(e.input_ids, e.token_type_ids, "e")])
    assert both[0] == pytest.approx(h_alone, abs=1e-5)
    engine.delete_adapter("e")
    assert engine.mixed_path == "grouped"
    assert engine.score([Row(e.input_ids, e.token_type_ids, "h")])[0] == pytest.approx(h_alone, abs=1e-5)


def test_adapters_on_other_layers_load_and_a_package_short_of_its_own_weights_is_refused(tmp_path, tiny_encoder_dir):
    """Packages on different layers share one model (PEFT gives the later one inert modules on the earlier one's
    layers, which PEFT 0.22 reports as missing keys); a package that lacks weights on its own layers is refused
    rather than served with those LoRA deltas silently zero."""
    from safetensors.torch import load_file, save_file

    base = load_base(str(tiny_encoder_dir))
    make_random_package(tmp_path, base, "helpfulness", "v1", seed=1, layers_to_transform=[0])
    make_random_package(tmp_path, base, "harmlessness", "v1", seed=2, layers_to_transform=[1])
    make_random_package(tmp_path, base, "factuality", "v1", seed=3, layers_to_transform=[1])
    weights = tmp_path / "factuality" / "v1" / "adapter_model.safetensors"
    t = load_file(str(weights))
    dropped = next(k for k in t if ".layer.1." in k and "lora_B" in k)
    save_file({k: v for k, v in t.items() if k != dropped}, str(weights))
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    e = enc.encode("q", "a")
    alone = {}
    for name, principle in (("pm1", "helpfulness"), ("pm2", "harmlessness")):
        solo = ScoringEngine(load_base(str(tiny_encoder_dir)))
        solo.load_adapter(tmp_path / principle / "v1", name)
        alone[name] = solo.score([Row(e.input_ids, e.token_type_ids, name)])[0]
    engine = ScoringEngine(base)
    engine.load_adapter(tmp_path / "helpfulness" / "v1", "pm1")
    engine.load_adapter(tmp_path / "harmlessness" / "v1", "pm2")
    both = engine.score([Row(e.input_ids, e.token_type_ids, "pm1"), Row(e.input_ids, e.token_type_ids, "pm2")])
    assert both == pytest.approx([alone["pm1"], alone["pm2"]], abs=1e-5)
    with pytest.raises(ValueError, match=r"no weights for .*layer\.1\."):
        engine.load_adapter(tmp_path / "factuality" / "v1", "pm3")
    assert engine.adapters == {"pm1", "pm2"}
    assert engine.score([Row(e.input_ids, e.token_type_ids, "pm2")])[0] == pytest.approx(alone["pm2"], abs=1e-5)


def test_base_rows_and_unknown_adapter(setup):
    _, _, _, _, engine, enc = setup
    e = enc.encode("a", "b")
    base_score = engine.score([Row(e.input_ids, e.token_type_ids, BASE_ADAPTER)])[0]
    assert isinstance(base_score, float)
    with pytest.raises(KeyError):
        engine.score([Row(e.input_ids, e.token_type_ids, "nope")])


def test_delete_every_adapter_then_load_again(tmp_path, tiny_encoder_dir):
    base = load_base(str(tiny_encoder_dir))
    make_random_package(tmp_path, base, "helpfulness", "v1", seed=5)
    make_random_package(tmp_path, base, "helpfulness", "v2", seed=6)
    engine = ScoringEngine(base)
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    e = enc.encode("q", "a")
    engine.load_adapter(tmp_path / "helpfulness" / "v1", "a1")
    s1 = engine.score([Row(e.input_ids, e.token_type_ids, "a1")])[0]
    engine.delete_adapter("a1")
    assert engine.adapters == frozenset()
    engine.load_adapter(tmp_path / "helpfulness" / "v2", "a2")
    s2 = engine.score([Row(e.input_ids, e.token_type_ids, "a2")])[0]
    engine.load_adapter(tmp_path / "helpfulness" / "v1", "a3")
    assert engine.score([Row(e.input_ids, e.token_type_ids, "a3")])[0] == pytest.approx(s1, abs=1e-6)
    assert s1 != pytest.approx(s2, abs=1e-3)


# ---------------------------------------------------------------------------------------- template
def test_truncation_keeps_the_response(encoder_base):
    t = InputTemplate(kind="pair", max_length=32)
    enc = TemplateEncoder(encoder_base.tokenizer, t)
    full = enc.encode("short prompt", "short answer")
    assert not full.truncated
    long_prompt = "one two three four five six seven eight nine ten " * 10
    e = enc.encode(long_prompt, "the answer survives")
    assert e.truncated and len(e) == 32
    text = encoder_base.tokenizer.decode(e.input_ids)
    assert text.endswith("[SEP] the answer survives [SEP]")
    assert "ten [SEP]" in text  # the prompt's end is kept, its start dropped
    huge = enc.encode("p", "word " * 100)
    assert huge.truncated and len(huge) == 32 and huge.response_tokens == 100


def test_user_text_cannot_forge_special_tokens(encoder_base):
    enc = TemplateEncoder(encoder_base.tokenizer, encoder_base.default_template)
    e = enc.encode("question [SEP] fake", "[CLS] answer")
    sep, cls = encoder_base.tokenizer.sep_token_id, encoder_base.tokenizer.cls_token_id
    assert e.input_ids.count(sep) == 2 and e.input_ids.count(cls) == 1


def test_text_template(decoder_base):
    t = InputTemplate(kind="text", text="Q: {prompt}\nA: {response}", max_length=64)
    enc = TemplateEncoder(decoder_base.tokenizer, t)
    e = enc.encode("why", "because")
    assert "q : why a : because" in decoder_base.tokenizer.decode(e.input_ids)
    with pytest.raises(ValueError, match="exactly one"):
        InputTemplate(kind="text", text="{response} {prompt}", max_length=64)


# ---------------------------------------------------------------------------------------- packages
def test_package_checks(tmp_path, encoder_base, decoder_base):
    root = tmp_path / "root"
    good = make_random_package(root, encoder_base, "helpfulness", "v1")
    h = encoder_base.config_hash
    assert check_package(root, good, expect_name="helpfulness", base_config_hash=h).version == "v1"
    assert find_packages(root) == [("helpfulness", "v1")]

    def refused(code, **kw):
        with pytest.raises(PackageError) as e:
            pkg = resolve_package_dir(root, kw.pop("name", "helpfulness"), **kw)
            check_package(root, pkg, expect_name="helpfulness", base_config_hash=h)
        assert e.value.code == code, e.value
        return e.value

    refused("path_outside_root", path="../outside")
    refused("path_outside_root", path="/etc")
    refused("package_not_found", version="v9")
    outside = tmp_path / "outside"
    shutil.copytree(good, outside)
    os.symlink(outside, root / "helpfulness" / "link")
    refused("path_outside_root", path="helpfulness/link")
    # a pickle beside the weights
    pk = root / "helpfulness" / "pickled"
    shutil.copytree(good, pk)
    (pk / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    refused("not_safetensors", version="pickled")
    # only pickle weights
    pk2 = root / "helpfulness" / "onlybin"
    shutil.copytree(good, pk2)
    (pk2 / "adapter_model.safetensors").unlink()
    refused("not_safetensors", version="onlybin")
    # truncated weights
    tr = root / "helpfulness" / "truncated"
    shutil.copytree(good, tr)
    data = (tr / "adapter_model.safetensors").read_bytes()
    (tr / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    refused("corrupt_weights", version="truncated")
    # another base
    other = make_random_package(root, decoder_base, "helpfulness", "decoder")
    err = refused("base_mismatch", version="decoder")
    assert str(other.name) in str(err) or "config" in str(err)
    # DoRA: PEFT cannot mix it with other adapters in one batch
    dora = root / "helpfulness" / "dora"
    shutil.copytree(good, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    refused("unsupported_adapter", version="dora")
    # manifest for another principle
    with pytest.raises(PackageError) as e:
        check_package(root, good, expect_name="harmlessness", base_config_hash=h)
    assert e.value.code == "principle_mismatch"


# ------------------------------------------------------------------------------------ shared trunk
@pytest.fixture(scope="module")
def upper_third(family, tmp_path_factory):
    """A 3-layer base of the family and four principles whose LoRA touches only the upper layers."""
    from rigs.pm_packages import make_tiny_base

    base_dir = make_tiny_base(tmp_path_factory.mktemp(f"deep-{family}"), family, layers=3)
    base = load_base(str(base_dir))
    root = tmp_path_factory.mktemp(f"upper-{family}")
    layers = {"helpfulness": [2], "harmlessness": [2], "factuality": [1, 2], "sycophancy": [2]}
    for i, (n, ls) in enumerate(layers.items()):
        make_random_package(root, base, n, "v1", seed=200 + i, layers_to_transform=ls)
    make_random_package(root, base, "toxicity", "v1", seed=299)  # every layer: nothing to share
    return base_dir, root, list(layers)


def _engine(base_dir, root, names, **kw):
    engine = ScoringEngine(load_base(str(base_dir)), **kw)
    for n in names:
        engine.load_adapter(root / n / "v1", n)
    return engine


def test_shared_trunk_equals_the_full_mixed_forward(upper_third):
    base_dir, root, names = upper_third
    shared = _engine(base_dir, root, [*names, "toxicity"])
    plain = _engine(base_dir, root, [*names, "toxicity"], share_trunk=False)
    enc = TemplateEncoder(shared.base.tokenizer, shared.base.default_template)
    upper = ["helpfulness", "harmlessness", "sycophancy"]
    # only layer-2 adapters: layers 0 and 1 run once per item
    rows = _rows(enc, upper)
    got = shared.score(rows)
    assert shared.last_trunk_layers == 2
    assert got == pytest.approx(plain.score(rows), abs=1e-5) and plain.last_trunk_layers == 0
    # with factuality (layers 1-2) the trunk is layer 0; with base rows (no LoRA at all) the same
    rows = _rows(enc, [*upper, "factuality", BASE_ADAPTER])
    assert shared.score(rows) == pytest.approx(plain.score(rows), abs=1e-5) and shared.last_trunk_layers == 1
    # an adapter on every layer in the batch: nothing to share, still exact
    rows = _rows(enc, [*upper, "toxicity"])
    assert shared.score(rows) == pytest.approx(plain.score(rows), abs=1e-5) and shared.last_trunk_layers == 0
    # each principle's scores are its own (the fan-out puts every row back in its place)
    assert len({round(x, 4) for x in got[:3]}) == 3


def test_shared_trunk_with_duplicates_padding_and_one_row_per_item(upper_third):
    base_dir, root, names = upper_third
    shared = _engine(base_dir, root, names)
    plain = _engine(base_dir, root, names, share_trunk=False)
    enc = TemplateEncoder(shared.base.tokenizer, shared.base.default_template)
    e0, e1 = enc.encode(*PROMPTS[0]), enc.encode(*PROMPTS[1])
    # interleaved, unequal lengths, an item repeated under the same principle, one item with one row
    rows = [
        Row(e1.input_ids, e1.token_type_ids, "helpfulness"),
        Row(e0.input_ids, e0.token_type_ids, "sycophancy"),
        Row(e1.input_ids, e1.token_type_ids, "harmlessness"),
        Row(e1.input_ids, e1.token_type_ids, "helpfulness"),
        Row(e0.input_ids, e0.token_type_ids, "helpfulness"),
    ]
    assert shared.score(rows) == pytest.approx(plain.score(rows), abs=1e-5) and shared.last_trunk_layers == 2
    # distinct inputs only: nothing to share
    rows = [Row(e0.input_ids, e0.token_type_ids, "helpfulness"), Row(e1.input_ids, e1.token_type_ids, "helpfulness")]
    assert shared.score(rows) == pytest.approx(plain.score(rows), abs=1e-5) and shared.last_trunk_layers == 0


def test_last_layer_read_out_equals_the_full_last_layer(upper_third, family):
    """The last layer computed at the head's read position only: the same scores as computing it in full,
    with padding, a pad token inside a decoder row, base rows and adapters on every layer."""
    base_dir, root, names = upper_third
    fast = _engine(base_dir, root, [*names, "toxicity"])
    full = _engine(base_dir, root, [*names, "toxicity"], readout=False)
    assert fast.readout_kind == ("bert" if family == "encoder" else "llama") and full.readout_kind is None
    enc = TemplateEncoder(fast.base.tokenizer, fast.base.default_template)
    for adapters in (["helpfulness", "factuality"], [*names, "toxicity", BASE_ADAPTER], [BASE_ADAPTER]):
        rows = _rows(enc, adapters)
        got = fast.score(rows)
        assert got == pytest.approx(full.score(rows), abs=1e-5)
        assert fast.last_trunk_layers == full.last_trunk_layers
    if family == "encoder":
        return
    # a decoder reads the last token that is not the pad id, wherever it sits: a pad id inside the row
    e = enc.encode(*PROMPTS[2])
    pad = fast.base.tokenizer.pad_token_id
    ids = [*e.input_ids[:-3], pad, *e.input_ids[-2:-1], pad]  # ends in the pad id: read position moves left
    rows = [Row(ids, e.token_type_ids, "helpfulness"), Row(e.input_ids, e.token_type_ids, "sycophancy")]
    assert fast.score(rows) == pytest.approx(full.score(rows), abs=1e-5)


# ------------------------------------------------------------------------------- head-only principles
def _with_head(base_dir, pkg_dir):
    """The reference: the plain base with its score head replaced by the package's head."""
    from safetensors.torch import load_file

    from pm_server.model.base import score_head

    base = load_base(str(base_dir))
    t = load_file(str(pkg_dir / "head.safetensors"))
    head = score_head(base.model)
    with torch.no_grad():
        head.weight.copy_(t["weight"])
        if head.bias is not None:
            head.bias.copy_(t["bias"])
    return base


def test_head_only_principles_cost_one_base_row_per_item(upper_third, family, tmp_path):
    from rigs.pm_packages import make_head_package

    base_dir, root, names = upper_third
    engine = _engine(base_dir, root, ["helpfulness"])
    heads = ["concise", "polite", "formal"]
    for i, n in enumerate(heads):
        make_head_package(tmp_path, engine.base, n, seed=300 + i)
        engine.load_adapter(tmp_path / n / "v1", n)
    assert engine.adapters == {"helpfulness", *heads}
    seen = []
    emb = engine.base.model.get_input_embeddings()
    emb.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    enc = TemplateEncoder(engine.base.tokenizer, engine.base.default_template)
    rows = _rows(enc, ["helpfulness", *heads, BASE_ADAPTER])
    got = engine.score(rows)
    # 5 items x 5 (principle or base) rows asked; the model saw the LoRA row and one base row per item
    assert seen == [2 * len(PROMPTS)]
    k = 5
    for j, n in enumerate(heads, start=1):
        ref = _with_head(base_dir, tmp_path / n / "v1")
        want = [
            ref.model(**collate([r], ref.tokenizer.pad_token_id, ref.device)).logits[0, 0].item() for r in rows[j::k]
        ]
        assert got[j::k] == pytest.approx(want, abs=1e-5), n
    # the LoRA rows and base rows score as on an engine without heads
    plain = _engine(base_dir, root, ["helpfulness"])
    assert [got[i] for i in range(len(got)) if i % k in (0, 4)] == pytest.approx(
        plain.score([r for i, r in enumerate(rows) if i % k in (0, 4)]), abs=1e-5
    )
    # unloading one head leaves the others' scores as they were
    engine.delete_adapter("polite")
    again = engine.score([r for r in rows if r.adapter != "polite"])
    assert again == pytest.approx([x for x, r in zip(got, rows, strict=True) if r.adapter != "polite"], abs=1e-5)
    with pytest.raises(KeyError, match="polite"):
        engine.score(rows[:5])


def test_head_only_principles_without_any_lora(upper_third, tmp_path):
    from rigs.pm_packages import make_head_package

    base_dir, _, _ = upper_third
    engine = ScoringEngine(load_base(str(base_dir)))
    make_head_package(tmp_path, engine.base, "concise", seed=1)
    engine.load_adapter(tmp_path / "concise" / "v1", "concise")
    enc = TemplateEncoder(engine.base.tokenizer, engine.base.default_template)
    rows = _rows(enc, ["concise"])
    ref = _with_head(base_dir, tmp_path / "concise" / "v1")
    want = [ref.model(**collate([r], ref.tokenizer.pad_token_id, ref.device)).logits[0, 0].item() for r in rows]
    assert engine.score(rows) == pytest.approx(want, abs=1e-5)
    # a head for another hidden size is refused when loaded, naming both shapes
    make_head_package(tmp_path, engine.base, "wide", seed=2, hidden=48)
    with pytest.raises(ValueError, match=r"shape \[1, 48\].*\[1, 32\]"):
        engine.load_adapter(tmp_path / "wide" / "v1", "wide")
    assert engine.adapters == {"concise"}


def test_head_package_checks(upper_third, tmp_path):
    from safetensors.torch import save_file

    from rigs.pm_packages import make_head_package

    base_dir, _, _ = upper_third
    base = load_base(str(base_dir))
    h = base.config_hash
    pkg = make_head_package(tmp_path, base, "concise", seed=1)
    assert check_package(tmp_path, pkg, expect_name="concise", base_config_hash=h).manifest.kind == "head"

    def refused(code, pkg_dir, match):
        with pytest.raises(PackageError, match=match) as e:
            check_package(tmp_path, pkg_dir, expect_name="concise", base_config_hash=h)
        assert e.value.code == code

    bad = tmp_path / "concise" / "bad-shape"
    shutil.copytree(pkg, bad)
    save_file({"weight": torch.zeros(2, 32)}, str(bad / "head.safetensors"))
    refused("invalid_package", bad, r"need `weight` \[1, hidden\].*weight \[2, 32\]")
    cut = tmp_path / "concise" / "truncated"
    shutil.copytree(pkg, cut)
    data = (cut / "head.safetensors").read_bytes()
    (cut / "head.safetensors").write_bytes(data[: len(data) // 2])
    refused("corrupt_weights", cut, "corrupt or truncated")
    gone = tmp_path / "concise" / "missing"
    shutil.copytree(pkg, gone)
    (gone / "head.safetensors").unlink()
    refused("not_safetensors", gone, "missing head.safetensors")
    mixed = tmp_path / "concise" / "mixed"
    shutil.copytree(pkg, mixed)
    (mixed / "adapter_config.json").write_text("{}")
    refused("invalid_package", mixed, "adapter_config.json belongs in a lora package")


# ------------------------------------------------------------------------------- decoder prompt sharing
def test_decoder_prompts_computed_once_for_several_responses(upper_third, family):
    """Several responses to one prompt (a PPO or GRPO group): the prompt's keys and values are computed once
    per (prompt, adapter) into a KV cache and every response is scored against it, equal to scoring each
    whole row, with prompts and responses of unequal lengths, upper-layer and all-layer adapters."""
    if family == "encoder":
        pytest.skip("an encoder attends both ways: a prompt's states depend on the response")
    base_dir, root, names = upper_third
    fast = _engine(base_dir, root, [*names, "toxicity"])
    whole = _engine(base_dir, root, [*names, "toxicity"], share_prefix=False)
    enc = TemplateEncoder(fast.base.tokenizer, fast.base.default_template)
    groups = [
        ("Tell me a long story about a dragon who learned to code in Python and wrote a compiler.", 4),
        ("Is the earth flat? Answer with care, and give the evidence people use to tell.", 3),
        ("hi", 2),
    ]
    responses = ["Once upon a time.", "No.", "It is round, as ships and eclipses show.", "Hello there, friend!"]
    encoded = [enc.encode(p, responses[i]) for p, n in groups for i in range(n)]
    for e in encoded:  # the prompt is a prefix of the row
        assert 0 < e.prefix_tokens < len(e.input_ids)
    assert encoded[0].input_ids[: encoded[0].prefix_tokens] == encoded[1].input_ids[: encoded[1].prefix_tokens]
    for adapters in (["helpfulness", "harmlessness", "sycophancy"], [*names, "toxicity", BASE_ADAPTER]):
        rows = [Row(e.input_ids, None, a, e.prefix_tokens) for e in encoded for a in adapters]
        got = fast.score(rows)
        assert fast.last_prefix_tokens_saved > 0
        assert got == pytest.approx(whole.score(rows), abs=1e-5)
        assert whole.last_prefix_tokens_saved == 0
    # shuffled rows and one prompt alone: still exact
    rows = [Row(e.input_ids, None, "helpfulness", e.prefix_tokens) for e in encoded][::-1]
    rows.append(Row(enc.encode("Why?", "Because.").input_ids, None, "factuality", 3))
    assert fast.score(rows) == pytest.approx(whole.score(rows), abs=1e-5)
    # without the read-out (the last layer in full over the cache) the same
    plain = _engine(base_dir, root, [*names, "toxicity"], readout=False)
    assert plain.score(rows) == pytest.approx(whole.score(rows), abs=1e-5) and plain.last_prefix_tokens_saved > 0
    # a single response per prompt saves nothing: one pass
    one = [Row(encoded[0].input_ids, None, "helpfulness", encoded[0].prefix_tokens)]
    fast.score(one)
    assert fast.last_prefix_tokens_saved == 0


# ------------------------------------------------------------------------------------------ bfloat16
def test_bfloat16_engine_keeps_every_saving_and_stays_near_float32(upper_third, family, tmp_path):
    """`dtype=bfloat16`: adapters, stacked LoRA, shared trunk, read-out, head-only principles and prompt
    sharing all compute in bfloat16; scores stay within bfloat16's rounding of float32's, and its savings
    stay as close to its own plain forward."""
    from rigs.pm_packages import make_head_package

    base_dir, root, names = upper_third
    bf = ScoringEngine(load_base(str(base_dir), dtype="bfloat16"))
    plain = ScoringEngine(load_base(str(base_dir), dtype="bfloat16"), share_trunk=False, readout=False)
    exact = _engine(base_dir, root, names)
    make_head_package(tmp_path, exact.base, "concise", seed=5)
    for e in (bf, plain):
        assert e.base.dtype == torch.bfloat16
        for n in names:
            e.load_adapter(root / n / "v1", n)
    for e in (bf, plain, exact):
        e.load_adapter(tmp_path / "concise" / "v1", "concise")
    assert bf.mixed_path == "grouped"
    enc = TemplateEncoder(bf.base.tokenizer, bf.base.default_template)
    rows = _rows(enc, [*names, "concise", BASE_ADAPTER])
    want = exact.score(rows)
    got = bf.score(rows)
    assert bf.last_trunk_layers == 1  # factuality touches layer 1
    spread = max(want) - min(want)
    assert spread > 0.05  # the scores differ enough for the comparison to mean something
    # bfloat16 keeps 8 bits of mantissa: about 0.4% per rounding, a few percent of the spread in all
    assert got == pytest.approx(want, abs=0.05 * spread)
    assert got != pytest.approx(want, abs=1e-6)  # it really ran in bfloat16
    # the score head reads the bfloat16 hidden state in float32: scores keep float32's resolution
    assert sum(torch.tensor(x).to(torch.bfloat16).item() != x for x in got) > len(got) // 2
    assert got == pytest.approx(plain.score(rows), abs=0.05 * spread)
    if family == "decoder":  # a group of responses to one prompt shares the prompt's cache in bfloat16 too
        long_prompt = " ".join(["tell me more about dragons and compilers"] * 6)
        encs = [enc.encode(long_prompt, r) for r in ("Yes.", "No, never.", "Maybe later today.")]
        group = [Row(e.input_ids, e.token_type_ids, n, e.prefix_tokens) for e in encs for n in names]
        shared = bf.score(group)
        assert bf.last_prefix_tokens_saved > 0
        assert shared == pytest.approx(exact.score(group), abs=0.05 * spread)


def test_dtype_auto_takes_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    from pm_server.model import base as modeling

    cpu = torch.device("cpu")
    assert modeling.resolve_dtype("float32", cpu) == torch.float32
    assert modeling.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(modeling, "cpu_computes_bf16", lambda: False)
    assert modeling.resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(modeling, "cpu_computes_bf16", lambda: True)
    assert modeling.resolve_dtype("auto", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="'float16': expected one of float32, bfloat16, auto"):
        modeling.resolve_dtype("float16", cpu)
