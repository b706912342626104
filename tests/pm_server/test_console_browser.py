"""The console end to end in a real headless browser (Debian's chromium driven by Playwright, no browser
download) against a real PM server on loopback with tiny models and keys."""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest
import torch

from morlaif.protocol import ScalarizerSpec
from morlaif.scalarize import scalarize
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it as root via apt-get)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e .[dev]")

API_KEY = "browser-key-0123456789"
ADMIN_KEY = "browser-admin-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "Human: What is the capital of France?"
RESPONSES = ["The capital of France is Paris.", "I'm sorry, I can't help with that."]
DEFAULT = {"name": "soft_max_min", "weights": {"helpfulness": 2.0, "harmlessness": 1.0}, "params": {"temperature": 0.5}}


@pytest.fixture(scope="module")
def server(module_live_server, tiny_encoder_dir, encoder_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    (runs / "ppo").mkdir()
    rows = [
        {"step": i + 1, "reward": 0.1 * i, "kl": 0.5 * i, "score/helpfulness": 0.1 * i, "score/harmlessness": -0.1 * i}
        for i in range(12)
    ]
    (runs / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir),
        adapter_root=encoder_root,
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        runs_dir=runs,
        default_scalarizer=DEFAULT["name"],
        default_weights=DEFAULT["weights"],
        default_scalarizer_params=DEFAULT["params"],
    )
    return module_live_server(create_app(settings)).start()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # --no-sandbox: CI runs as root
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    yield pg
    ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def api_principles(server) -> list[str]:
    body = httpx.get(server.url + "/v1/principles", headers=AUTH, timeout=10).json()
    return [p["name"] for p in body["principles"]]


def enter_keys(page, server, *, admin: bool = False) -> None:
    page.fill("#api-key", API_KEY)
    page.fill("#admin-key", ADMIN_KEY if admin else "")
    page.click("#save-keys")
    sliders = page.locator("#weights input[type=range]")
    sync_api.expect(sliders).to_have_count(len(api_principles(server)))


def score_two(page) -> None:
    page.fill("#prompt", PROMPT)
    for i, text in enumerate(RESPONSES):
        page.locator(".response").nth(i).fill(text)
    page.click("#score-btn")
    sync_api.expect(page.locator("#results .card")).to_have_count(2)
    sync_api.expect(page.locator("#results .reward[data-value]")).to_have_count(2)


def test_the_key_is_asked_for_once_and_kept_in_this_tab_only(page, server):
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("401 invalid_api_key")
    sync_api.expect(error).to_contain_text("Enter the API key")
    enter_keys(page, server)
    sync_api.expect(error).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('morlaif.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    page.reload()  # entered once: a reload in the same tab keeps it
    sync_api.expect(page.locator("#weights input[type=range]")).to_have_count(len(api_principles(server)))
    assert page.input_value("#api-key") == API_KEY
    page.click("#forget-keys")
    assert page.evaluate("sessionStorage.length") == 0


def test_scoring_two_responses_shows_the_apis_scores_as_bars(page, server):
    enter_keys(page, server)
    score_two(page)
    items = [{"prompt": PROMPT, "response": r} for r in RESPONSES]
    names = api_principles(server)
    # the page scores every loaded principle; the default's weights leave the others at 0
    spec = {**DEFAULT, "weights": {n: DEFAULT["weights"].get(n, 0.0) for n in names}}
    api = httpx.post(server.url + "/v1/score", json={"items": items, "scalarizer": spec}, headers=AUTH).json()
    assert sorted(api["principles"]) == sorted(names)
    for i, result in enumerate(api["results"]):
        rows = page.locator(f'#results .card[data-item="{i}"] .bar-row[data-principle]')
        sync_api.expect(rows).to_have_count(len(names))  # one bar per loaded principle
        shown = {
            rows.nth(k).get_attribute("data-principle"): (
                float(rows.nth(k).get_attribute("data-score")),
                float(rows.nth(k).get_attribute("data-raw")),
                rows.nth(k).locator(".norm").text_content(),
            )
            for k in range(len(names))
        }
        assert set(shown) == set(names)
        for p in names:
            score, raw, text = shown[p]
            assert score == pytest.approx(result["scores"][p], abs=1e-9)
            assert raw == pytest.approx(result["raw_scores"][p], abs=1e-9)
            assert text == f"{result['scores'][p]:.3f}"
        # the reward under the server's default scalarizer, as the API computes it
        reward = page.locator("#results .reward").nth(i)
        assert float(reward.get_attribute("data-value")) == pytest.approx(result["reward"], abs=1e-9)
    # the bars show the normalised scores, or on request the raw ones
    first = page.locator('.card[data-item="0"] .bar-row[data-principle]').first
    assert first.get_attribute("data-bar") == first.get_attribute("data-score")
    page.select_option("#bar-kind", "raw_scores")
    first = page.locator('.card[data-item="0"] .bar-row[data-principle]').first
    assert first.get_attribute("data-bar") == first.get_attribute("data-raw")
    # two responses: P(A better than B) per principle and for the reward, as /v1/compare answers
    cmp = httpx.post(
        server.url + "/v1/compare",
        json={"prompt": PROMPT, "response_a": RESPONSES[0], "response_b": RESPONSES[1], "scalarizer": spec},
        headers=AUTH,
    ).json()
    for p, pair in cmp["principles"].items():
        shown_p = float(page.locator(f'#pairwise tr[data-principle="{p}"]').get_attribute("data-p"))
        assert shown_p == pytest.approx(pair["p_a_better"], abs=1e-9)
    shown_r = float(page.locator("#pairwise tr[data-reward]").get_attribute("data-p"))
    assert shown_r == pytest.approx(cmp["reward"]["p_a_better"], abs=1e-9)


def test_moving_a_weight_slider_changes_the_reward_to_what_scalarize_computes(page, server):
    enter_keys(page, server)
    score_two(page)
    rows = page.locator('#results .card[data-item="0"] .bar-row[data-principle]')
    names = [rows.nth(k).get_attribute("data-principle") for k in range(rows.count())]

    def score_of(i: int, p: str) -> float:
        return float(page.locator(f'.card[data-item="{i}"] .bar-row[data-principle="{p}"]').get_attribute("data-score"))

    scores = torch.tensor([[score_of(i, p) for p in names] for i in range(2)], dtype=torch.float64)
    rewards = page.locator("#results .reward")
    before = float(rewards.nth(0).get_attribute("data-value"))

    page.locator('#weights input[data-weight="factuality"]').fill("0.75")
    sync_api.expect(rewards.nth(1)).to_have_attribute("data-spec", re.compile(r'"factuality":0\.75\b'))
    spec = ScalarizerSpec.model_validate_json(page.text_content("#weights-json"))  # what the copy button copies
    assert spec.name == "soft_max_min" and spec.weights["factuality"] == 0.75 and spec.params == {"temperature": 0.5}
    expected = scalarize(scores, names, name=spec.name, weights=spec.weights, params=spec.params).tolist()
    shown = [float(rewards.nth(i).get_attribute("data-value")) for i in range(2)]
    assert shown == pytest.approx(expected, abs=1e-9)
    assert shown[0] != pytest.approx(before, abs=1e-6)  # the slider moved the reward
    assert rewards.nth(0).text_content() == f"{expected[0]:.3f}"
    assert page.input_value('#weights input[data-weight-number="factuality"]') == "0.75"

    page.select_option("#scalarizer", "linear")  # another scalarizer: its own parameters (none)
    sync_api.expect(rewards.nth(1)).to_have_attribute("data-spec", re.compile(r'"name":"linear"'))
    spec = ScalarizerSpec.model_validate_json(page.text_content("#weights-json"))
    expected = scalarize(scores, names, name="linear", weights=spec.weights).tolist()
    shown = [float(rewards.nth(i).get_attribute("data-value")) for i in range(2)]
    assert shown == pytest.approx(expected, abs=1e-9)

    page.click("#reset-weights")  # back to the server's default
    sync_api.expect(rewards.nth(1)).to_have_attribute("data-spec", re.compile(r'"name":"soft_max_min"'))
    assert float(rewards.nth(0).get_attribute("data-value")) == pytest.approx(before, abs=1e-9)


def test_all_weights_zero_shows_the_apis_error(page, server):
    enter_keys(page, server)
    score_two(page)
    for slider in page.locator("#weights input[type=range]").all():
        slider.fill("0")
    sync_api.expect(page.locator("#error")).to_contain_text("at least one weight must be > 0")


def test_an_unauthorised_admin_action_shows_the_error_and_changes_nothing(page, server):
    enter_keys(page, server)  # the API key only
    page.click('nav .tab[data-tab="adapters"]')
    sync_api.expect(page.locator("#adapters-table tbody tr")).to_have_count(len(api_principles(server)))
    page.click('[data-unload="helpfulness"]')
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("401 invalid_admin_key")
    sync_api.expect(error).to_contain_text("Enter the admin key")
    assert "helpfulness" in api_principles(server)


def test_adapters_show_their_package_and_the_admin_key_unloads_and_loads(page, server):
    enter_keys(page, server, admin=True)
    page.click('nav .tab[data-tab="adapters"]')
    info = {
        p["name"]: p for p in httpx.get(server.url + "/v1/principles", headers=AUTH, timeout=10).json()["principles"]
    }
    row = page.locator('#adapters-table tr[data-principle="helpfulness"]')
    sync_api.expect(row).to_contain_text(info["helpfulness"]["version"])
    sync_api.expect(row).to_contain_text(f"mean {info['helpfulness']['calibration']['mean']:.3f}")
    sync_api.expect(row).to_contain_text(f"std {info['helpfulness']['calibration']['std']:.3f}")
    page.click('[data-unload="factuality"]')
    sync_api.expect(page.locator('#adapters-table tr[data-principle="factuality"]')).to_have_count(0)
    assert "factuality" not in api_principles(server)
    page.fill("#load-name", "factuality")
    page.click("#load-form button[type=submit]")
    sync_api.expect(page.locator("#admin-state")).to_have_text(f"loaded factuality {info['factuality']['version']}")
    sync_api.expect(page.locator('#adapters-table tr[data-principle="factuality"]')).to_have_count(1)
    assert "factuality" in api_principles(server)


def test_live_shows_score_distributions_throughput_and_run_warnings(page, server):
    enter_keys(page, server)
    score_two(page)
    page.click('nav .tab[data-tab="live"]')
    names = api_principles(server)
    stats = httpx.get(server.url + "/v1/stats", headers=AUTH, timeout=10).json()
    learned = [h["principle"] for h in stats["principles"]]
    assert set(learned) <= set(names) and "helpfulness" in learned
    sync_api.expect(page.locator("#histograms [data-histogram]")).to_have_count(len(learned))
    shown = int(page.locator('[data-stat="scores"] b').text_content())
    assert shown >= 2 * len(names)  # at least this test's two responses, every principle
    sync_api.expect(page.locator('[data-stat="rate"] b')).not_to_have_text("–", timeout=10_000)  # a second poll
    page.select_option("#run", "ppo")
    sync_api.expect(page.locator("#run-warnings li")).to_have_count(1)
    sync_api.expect(page.locator("#run-warnings li")).to_contain_text("possible reward hacking: helpfulness +0.90")
    sync_api.expect(page.locator("#run-charts path[data-series]")).to_have_count(2 + 2)  # 2 principles, reward, KL
