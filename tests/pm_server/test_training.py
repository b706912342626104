"""PM training on tiny real models: the loss, learning a synthetic principle, packages, calibration, resume."""

from __future__ import annotations

import json
import math
import shutil

import httpx
import pytest
import torch
from safetensors.torch import load_file

from pm_server.model.base import load_base
from pm_server.model.package import check_package
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
from pm_server.training.evaluation import PackageScorer, accuracy, fit_weights
from pm_server.training.pairs import Pair, split_by_prompt
from pm_server.training.trainer import (
    TrainConfig,
    TrainError,
    bradley_terry_loss,
    default_layers,
    length_balance_weights,
    length_correlation,
    pair_accuracy,
    train_pm,
)
from rigs.pm_packages import politeness_pairs

FAST = {"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "lora_r": 8, "max_length": 64, "device": "cpu"}


# ------------------------------------------------------------------------------------------- maths
def test_bradley_terry_loss_hand_computed():
    c, r = torch.tensor([0.0, 2.0, 2.0, 1.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])
    # d = 0: log 2 whatever p
    assert float(bradley_terry_loss(c[:1], r[:1], torch.tensor([1.0]))) == pytest.approx(math.log(2))
    assert float(bradley_terry_loss(c[:1], r[:1], torch.tensor([0.3]))) == pytest.approx(math.log(2))
    # hard label, d = 2: log(1 + e^-2)
    assert float(bradley_terry_loss(c[1:2], r[1:2], torch.tensor([1.0]))) == pytest.approx(math.log1p(math.exp(-2)))
    # soft label p = 0.75, d = 2: 0.75 log(1 + e^-2) + 0.25 log(1 + e^2)
    want = 0.75 * math.log1p(math.exp(-2)) + 0.25 * math.log1p(math.exp(2))
    assert float(bradley_terry_loss(c[2:3], r[2:3], torch.tensor([0.75]))) == pytest.approx(want)
    # margin 1 with d = 1 is as if d were 0
    assert float(bradley_terry_loss(c[3:], r[3:], torch.tensor([1.0]), torch.tensor([1.0]))) == pytest.approx(
        math.log(2)
    )
    # the mean over a batch
    both = bradley_terry_loss(c[:2], r[:2], torch.tensor([1.0, 1.0]))
    assert float(both) == pytest.approx((math.log(2) + math.log1p(math.exp(-2))) / 2)
    # p = 0.5 is minimised at d = 0: the gradient there is zero
    d = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(d, torch.tensor([0.0]), torch.tensor([0.5])).backward()
    assert float(d.grad) == pytest.approx(0.0)


def test_weighted_loss_and_length_balance_weights():
    c, r, p = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    w = torch.tensor([3.0, 1.0])
    want = (3 * math.log1p(math.exp(-2)) + math.log(2)) / 2
    assert float(bradley_terry_loss(c, r, p, weight=w)) == pytest.approx(want)
    # source a: 3 chosen-longer, 1 chosen-shorter, 1 tie; source b: only chosen-longer (cannot be balanced)
    chosen = [10, 12, 9, 3, 5, 8, 8]
    rejected = [5, 6, 2, 7, 5, 1, 2]
    groups = ["a", "a", "a", "a", "a", "b", "b"]
    weights = length_balance_weights(chosen, rejected, groups)
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    raw = [x / weights[4] for x in weights]  # the tie keeps weight 1 before scaling
    assert raw[:4] == pytest.approx([4 / 6, 4 / 6, 4 / 6, 2.0]) and raw[5:] == pytest.approx([1.0, 1.0])
    assert sum(raw[:3]) == pytest.approx(raw[3])  # longer and shorter weigh the same within source a


def test_length_correlation_is_pearsons_and_zero_for_a_constant():
    g = torch.Generator().manual_seed(0)
    s, n = torch.randn(50, generator=g), torch.randint(1, 100, (50,), generator=g)
    want = float(torch.corrcoef(torch.stack([s, n.float()]))[0, 1])
    assert float(length_correlation(s, n)) == pytest.approx(want, abs=1e-5)
    assert float(length_correlation(s, torch.full((50,), 7))) == 0.0
    x = s.clone().requires_grad_(True)
    (length_correlation(x, n) ** 2).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_length_penalty_trains_the_length_shortcut_out(tmp_path, tiny_encoder_dir):
    """Pairs whose only signal is length (the chosen reply is longer, words random): the plain loss learns
    "longer wins"; with the decorrelation term the score stops tracking length."""
    import random

    from rigs.pm_packages import sentence

    rng = random.Random(3)
    pairs = [
        Pair(prompt=f"q{i}", chosen=sentence(rng, rng.randint(8, 14)), rejected=sentence(rng, rng.randint(2, 6)))
        for i in range(240)
    ]
    corr = {}
    for penalty in (0.0, 20.0):
        res = train_pm(
            pairs,
            principle="length",
            config=TrainConfig(base=str(tiny_encoder_dir), length_penalty=penalty, **FAST),
            out_root=tmp_path / f"a{penalty}",
            run_dir=tmp_path / f"r{penalty}",
            version="v1",
            progress=False,
        )
        assert res.package_dir.is_dir()
        scorer = PackageScorer(load_base(str(tiny_encoder_dir)), tmp_path / f"a{penalty}")
        scorer.load("length")
        _, val = split_by_prompt(pairs, 0.15, salt="val0")
        from pm_server.training.evaluation import length_preference

        corr[penalty] = length_preference(scorer.pair_scores("length", val), val)["score_length_corr"]
    assert corr[0.0] > 0.5, corr
    assert abs(corr[20.0]) < corr[0.0] / 2, corr


def test_pair_accuracy_follows_the_label_side_and_halves_ties():
    c, r = torch.tensor([1.0, 0.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    p = torch.tensor([1.0, 1.0, 1.0, 0.2])  # last: the label favours "rejected"
    assert pair_accuracy(c, r, p) == pytest.approx((1 + 0 + 0.5 + 0) / 4)


def test_split_by_prompt_keeps_each_prompts_pairs_together():
    pairs = [Pair(prompt=f"q{i % 40}", chosen=f"a{i}", rejected=f"b{i}") for i in range(400)]
    rest, held = split_by_prompt(pairs, 0.25, salt="x")
    assert {p.prompt for p in rest}.isdisjoint({p.prompt for p in held})
    assert 4 <= len({p.prompt for p in held}) <= 18  # about a quarter of 40 prompts
    again, _ = split_by_prompt(list(reversed(pairs)), 0.25, salt="x")
    assert {p.prompt for p in again} == {p.prompt for p in rest}  # order does not matter
    other, _ = split_by_prompt(pairs, 0.25, salt="y")
    assert {p.prompt for p in other} != {p.prompt for p in rest}


def test_default_layers_are_the_upper_half():
    assert default_layers(6) == [3, 4, 5]
    assert default_layers(2) == [1]


def test_fit_weights_gives_zero_weight_to_a_principle_that_points_the_wrong_way():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(400, generator=g).abs() + 0.1  # always favours the preferred response
    bad = -good + 0.3 * torch.randn(400, generator=g)  # mostly the other way
    noise = torch.randn(400, generator=g)
    w = fit_weights(torch.stack([good, bad, noise], dim=1))
    assert w[0] > 0.5 and w[1] == 0.0 and w[2] < w[0] / 5


def test_fit_weights_worst_kind_does_not_trade_a_kind_away():
    """Kind 0's PM speaks softly for it; kind 1's PM loudly for kind 1 and a little against kind 0. The mean
    log-likelihood leans on the loud PM at kind 0's cost; the worst-kind objective lifts the weaker kind."""
    g = torch.Generator().manual_seed(0)
    n = 600
    k0 = torch.stack([torch.randn(n, generator=g) + 0.5, 0.5 * torch.randn(n, generator=g) - 0.3], dim=1)
    k1 = torch.stack([0.5 * torch.randn(n, generator=g) - 0.2, 3 * torch.randn(n, generator=g) + 4.0], dim=1)
    x, groups = torch.cat([k0, k1]), torch.tensor([0] * n + [1] * n)

    def per_kind(w):
        m = x @ w
        return [float((m[groups == k] > 0).float().mean()) for k in (0, 1)]

    mean, worst = per_kind(fit_weights(x)), per_kind(fit_weights(x, groups=groups))
    assert mean[0] < mean[1] - 0.2  # the mean fit serves the loud kind
    assert min(worst) > min(mean) + 0.04 and worst[0] > mean[0] + 0.04
    # one group: the same problem as the plain mean
    one = fit_weights(x, groups=torch.zeros(2 * n, dtype=torch.long))
    assert torch.allclose(one, fit_weights(x), atol=1e-4)


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir):
    """One politeness PM, trained once for the tests below."""
    tmp = tmp_path_factory.mktemp("train")
    pairs = politeness_pairs(360)
    result = train_pm(
        pairs,
        principle="politeness",
        config=TrainConfig(base=str(tiny_encoder_dir), **FAST),
        out_root=tmp / "adapters",
        run_dir=tmp / "run",
        version="v1",
        progress=False,
    )
    return result, pairs, tmp


def test_pm_learns_a_synthetic_principle(trained):
    result, _, _ = trained
    assert result.metrics["val_accuracy"] > 0.95, result.metrics
    assert result.metrics["val_pairs"] > 20
    hist = result.history
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] < math.log(2)


def test_package_is_complete_and_passes_the_server_checks(trained, tiny_encoder_dir):
    result, _, tmp = trained
    base = load_base(str(tiny_encoder_dir))
    pkg = check_package(
        tmp / "adapters", result.package_dir, expect_name="politeness", base_config_hash=base.config_hash
    )
    m = pkg.manifest
    assert m.template.max_length == 64 and m.template.kind == "pair"
    assert m.metrics["val_accuracy"] == result.metrics["val_accuracy"]
    prov = m.provenance
    assert prov["train"]["pairs"] + prov["validation"]["pairs"] == 360
    assert prov["settings"]["lora_r"] == 8 and prov["settings"]["layers_to_transform"] is None
    assert prov["split"]["by"] == "prompt"
    assert "date" in prov and "git_commit" in prov and prov["versions"]["peft"]
    cfg = json.loads((result.package_dir / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1]  # the upper half of 2 layers
    weights = load_file(str(result.package_dir / "adapter_model.safetensors"))
    assert any("classifier" in k for k in weights), sorted(weights)
    assert not any(".layer.0." in k for k in weights)  # the lower layer is shared, untouched


def test_calibration_standardises_the_validation_scores(trained, tiny_encoder_dir):
    result, pairs, tmp = trained
    _, val = split_by_prompt(pairs, 0.15, salt="val0")
    scorer = PackageScorer(load_base(str(tiny_encoder_dir)), tmp / "adapters")
    scorer.load("politeness")
    s = scorer.pair_scores("politeness", val)  # normalised, (N, 2)
    flat = torch.cat([s[:, 0], s[:, 1]])
    assert float(flat.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(flat.std()) == pytest.approx(1.0, abs=1e-4)
    assert accuracy(s[:, 0], s[:, 1]).value == pytest.approx(result.metrics["val_accuracy"])


def test_package_scores_identically_through_the_pm_server(trained, tiny_encoder_dir, live_server):
    result, pairs, tmp = trained
    scorer = PackageScorer(load_base(str(tiny_encoder_dir)), tmp / "adapters")
    scorer.load("politeness")
    some = pairs[:12]
    prompts, responses = [p.prompt for p in some], [p.chosen for p in some]
    local = scorer.raw("politeness", prompts, responses)
    settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=tmp / "adapters", insecure_dev=True)
    server = live_server(create_app(settings)).start()
    body = {"items": [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]}
    r = httpx.post(server.url + "/v1/score", json={**body, "principles": ["politeness"]}, timeout=30)
    assert r.status_code == 200, r.text
    served = torch.tensor([x["raw_scores"]["politeness"] for x in r.json()["results"]])
    torch.testing.assert_close(served, local, atol=1e-5, rtol=1e-5)
    assert r.json()["versions"]["politeness"] == "v1"


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_encoder_dir):
    pairs = politeness_pairs(120, seed=1)
    cfg = {**FAST, "epochs": 2, "save_every": 2, "lora_dropout": 0.1}

    def run(name: str, **kw):
        return train_pm(
            pairs,
            principle="politeness",
            config=TrainConfig(base=str(tiny_encoder_dir), **cfg),
            out_root=tmp_path / name,
            run_dir=tmp_path / f"run-{name}",
            version="v1",
            progress=False,
            **kw,
        )

    straight = run("a")

    def stop_at_5(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("b", on_step=stop_at_5)
    state = json.loads((tmp_path / "run-b" / "state.json").read_text())
    assert state["step"] == 5 and not state["finished"]
    resumed = run("b")
    assert resumed.resumed_from_step == 5
    a = load_file(str(straight.package_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.package_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert resumed.metrics["val_accuracy"] == straight.metrics["val_accuracy"]
    with pytest.raises(TrainError, match="finished run"):
        run("b")

    # a run directory of the layout before the shared checkpoint (weights.safetensors + optim.pt beside
    # state.json, the CPU generator's state under "cpu") resumes the same
    with pytest.raises(KeyboardInterrupt):
        run("d", on_step=stop_at_5)
    d = tmp_path / "run-d"
    blob = torch.load(d / "checkpoint" / "state.pt", weights_only=True)
    blob["rng"] = {"cpu": blob["rng"]["torch"], **({"cuda": blob["rng"]["cuda"]} if "cuda" in blob["rng"] else {})}
    torch.save(blob, d / "optim.pt")
    (d / "checkpoint" / "weights.safetensors").rename(d / "weights.safetensors")
    shutil.rmtree(d / "checkpoint")
    legacy = run("d")
    assert legacy.resumed_from_step == 5
    assert not (d / "optim.pt").exists() and (d / "checkpoint" / "state.pt").is_file()  # the new layout now
    c = load_file(str(legacy.package_dir / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], c[k], atol=0, rtol=0)
    with pytest.raises(TrainError, match="other data or settings"):
        train_pm(
            pairs[:100],
            principle="politeness",
            config=TrainConfig(base=str(tiny_encoder_dir), **cfg),
            out_root=tmp_path / "c",
            run_dir=tmp_path / "run-b",
            progress=False,
        )


def test_layers_out_of_range_are_refused(tmp_path, tiny_encoder_dir):
    with pytest.raises(TrainError, match="layers_to_transform"):
        train_pm(
            politeness_pairs(40),
            principle="politeness",
            config=TrainConfig(base=str(tiny_encoder_dir), layers_to_transform=[5], **FAST),
            out_root=tmp_path / "a",
            run_dir=tmp_path / "r",
            progress=False,
        )


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, tiny_encoder_dir, monkeypatch, caplog, native):
    """bfloat16 autocast on a CPU without AVX512-BF16 or AMX is ~10x slower than float32: pm train says so, and
    trains all the same (the user asked for it); where the CPU computes bfloat16 it says nothing."""
    from pm_server.training import trainer

    monkeypatch.setattr(trainer, "cpu_computes_bf16", lambda: native)
    res = train_pm(
        politeness_pairs(40),
        principle="politeness",
        config=TrainConfig(base=str(tiny_encoder_dir), bf16=True, **{**FAST, "epochs": 1}),
        out_root=tmp_path / "a",
        run_dir=tmp_path / "r",
        progress=False,
    )
    assert res.package_dir.is_dir()
    warned = [r.getMessage() for r in caplog.records if "without bfloat16 instructions" in r.getMessage()]
    assert len(warned) == (0 if native else 1), warned
    if warned:
        assert "drop --bf16" in warned[0]


@pytest.mark.parametrize("native", [False, True])
def test_bf16_by_default_where_the_cpu_computes_it_and_a_run_resumes_in_the_other_precision(
    tmp_path, tiny_encoder_dir, monkeypatch, caplog, native
):
    """bf16=None (pm train's default) is bfloat16 autocast where the device computes it, as the server's
    dtype=auto, and the package says which ran; a run stopped in one precision resumes in the other (a new
    machine), as it does on another device."""
    from pm_server.model import base as base_module

    monkeypatch.setattr(base_module, "cpu_computes_bf16", lambda: native)
    pairs = politeness_pairs(80)

    def run(bf16: bool | None, **kw):
        return train_pm(
            pairs,
            principle="politeness",
            config=TrainConfig(base=str(tiny_encoder_dir), bf16=bf16, **{**FAST, "epochs": 1, "save_every": 2}),
            out_root=tmp_path / "a",
            run_dir=tmp_path / "r",
            version="v1",
            progress=False,
            **kw,
        )

    def stop_at_2(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(not native, on_step=stop_at_2)
    res = run(None)
    assert res.resumed_from_step == 2
    began, now = ("float32", "bfloat16 autocast") if native else ("bfloat16 autocast", "float32")
    assert any(f"began in {began} and resumes in {now}" in r.getMessage() for r in caplog.records)
    manifest = json.loads((res.package_dir / "principle.json").read_text())
    assert manifest["provenance"]["settings"]["bf16"] is native


def test_lora_on_every_linear_layer_trains_and_its_package_loads(tmp_path, tiny_encoder_dir):
    """--target-modules all-linear puts LoRA on the attention and MLP layers of the chosen blocks, not only on
    query and value, and the server's engine loads the package."""
    res = train_pm(
        politeness_pairs(80),
        principle="politeness",
        config=TrainConfig(base=str(tiny_encoder_dir), target_modules="all-linear", **{**FAST, "epochs": 1}),
        out_root=tmp_path / "adapters",
        run_dir=tmp_path / "run",
        version="v1",
        progress=False,
    )
    modules = set(json.loads((res.package_dir / "adapter_config.json").read_text())["target_modules"])
    assert {"query", "key", "value", "dense"} <= modules, modules
    weights = load_file(str(res.package_dir / "adapter_model.safetensors"))
    assert any(".intermediate.dense.lora_A" in k for k in weights)
    assert not any("classifier" in k and "lora_" in k for k in weights)  # the score head is trained whole
    scorer = PackageScorer(load_base(str(tiny_encoder_dir)), tmp_path / "adapters")
    scorer.load("politeness")
    assert torch.isfinite(scorer.raw("politeness", ["hi"], ["please help"])).all()
    with pytest.raises(TrainError, match="target_modules is for LoRA"):
        TrainConfig(base=str(tiny_encoder_dir), head_only=True, target_modules="all-linear")


def test_decoder_base_trains_and_its_package_loads(tmp_path, tiny_decoder_dir):
    res = train_pm(
        politeness_pairs(160),
        principle="politeness",
        config=TrainConfig(base=str(tiny_decoder_dir), **{**FAST, "epochs": 1}),
        out_root=tmp_path / "adapters",
        run_dir=tmp_path / "run",
        version="v1",
        progress=False,
    )
    scorer = PackageScorer(load_base(str(tiny_decoder_dir)), tmp_path / "adapters")
    pkg = scorer.load("politeness")
    assert pkg.manifest.template.kind == "text"
    s = scorer.raw("politeness", ["hi"], ["please help"])
    assert torch.isfinite(s).all()
    assert res.metrics["val_pairs"] > 0


def test_full_finetuning_writes_a_model_the_server_serves_as_the_principle(tmp_path, tiny_encoder_dir, live_server):
    pairs = politeness_pairs(240)
    res = train_pm(
        pairs,
        principle="politeness",
        config=TrainConfig(base=str(tiny_encoder_dir), full_finetune=True, **{**FAST, "learning_rate": 5e-4}),
        out_root=tmp_path / "full",
        run_dir=tmp_path / "run",
        version="f1",
        progress=False,
    )
    assert (res.package_dir / "model.safetensors").is_file() and (res.package_dir / "principle.json").is_file()
    assert res.metrics["val_accuracy"] > 0.9, res.metrics
    settings = ServerSettings(base_model=str(res.package_dir), adapter_root=tmp_path / "none", insecure_dev=True)
    server = live_server(create_app(settings)).start()
    info = {p["name"]: p for p in httpx.get(server.url + "/v1/principles", timeout=30).json()["principles"]}
    assert info["politeness"]["kind"] == "full" and info["politeness"]["version"] == "f1"
    _, val = split_by_prompt(pairs, 0.15, salt="val0")
    items = [{"prompt": p.prompt, "response": r} for p in val for r in (p.chosen, p.rejected)]
    r = httpx.post(server.url + "/v1/score", json={"items": items, "principles": ["politeness"]}, timeout=30)
    assert r.status_code == 200, r.text
    s = torch.tensor([x["raw_scores"]["politeness"] for x in r.json()["results"]]).view(-1, 2)
    assert accuracy(s[:, 0], s[:, 1]).value == pytest.approx(res.metrics["val_accuracy"])


def test_head_only_pm_trains_and_is_served_beside_a_lora_pm(tmp_path, tiny_decoder_dir, live_server):
    """`head_only`: the base frozen, the score head learnt; a `head` package the server serves (kind head)
    beside LoRA packages, scoring as the evaluation does. (On the tiny decoder: a random tiny BERT's pooled
    features hardly vary between inputs, so no head can learn on them; a trained base's do.)"""
    from rigs.pm_packages import make_random_package

    pairs = politeness_pairs(360)
    root = tmp_path / "adapters"
    res = train_pm(
        pairs,
        principle="courtesy",
        config=TrainConfig(base=str(tiny_decoder_dir), head_only=True, **{**FAST, "learning_rate": 3e-2}),
        out_root=root,
        run_dir=tmp_path / "run",
        version="h1",
        progress=False,
    )
    assert sorted(p.name for p in res.package_dir.iterdir()) == ["head.safetensors", "principle.json"]
    assert res.history[-1]["val_loss"] < 0.6 and res.metrics["val_accuracy"] > 0.8, res.metrics
    make_random_package(root, load_base(str(tiny_decoder_dir)), "helpfulness", "v1", seed=3)
    settings = ServerSettings(base_model=str(tiny_decoder_dir), adapter_root=root, insecure_dev=True)
    server = live_server(create_app(settings)).start()
    info = {p["name"]: p for p in httpx.get(server.url + "/v1/principles", timeout=30).json()["principles"]}
    assert info["courtesy"]["kind"] == "head" and info["helpfulness"]["kind"] == "adapter"
    _, val = split_by_prompt(pairs, 0.15, salt="val0")
    items = [{"prompt": p.prompt, "response": r} for p in val for r in (p.chosen, p.rejected)]
    r = httpx.post(server.url + "/v1/score", json={"items": items}, timeout=30)
    assert r.status_code == 200, r.text
    s = torch.tensor([x["raw_scores"]["courtesy"] for x in r.json()["results"]]).view(-1, 2)
    assert accuracy(s[:, 0], s[:, 1]).value == pytest.approx(res.metrics["val_accuracy"])


def test_head_only_refuses_layers_and_full(tiny_encoder_dir):
    with pytest.raises(TrainError, match="head_only trains no layers"):
        TrainConfig(base=str(tiny_encoder_dir), head_only=True, layers_to_transform=[1])
    with pytest.raises(TrainError, match="exclude each other"):
        TrainConfig(base=str(tiny_encoder_dir), head_only=True, full_finetune=True)
