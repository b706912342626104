"""One conversation, one model input: every door a conversation comes in by, in training and in serving, gives
the preference model the same tokens (issue 21: HH transcripts trained one way and served another)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from dialogue import chatml

from morlaif.chat_templates import QueryParser
from morlaif.client import trl_item
from morlaif.integrations.verl import prompt_messages
from morlaif.protocol import ScoreItem
from pm_server.model.template import DEFAULT_TEXT_TEMPLATE, InputTemplate, TemplateEncoder
from pm_server.training.pairs import Pair, prompt_bucket, read_pairs

TURNS = [("user", "How do I boil an egg?"), ("assistant", "Put it in boiling water."), ("user", "For how long?")]
CHOSEN, REJECTED = "About nine minutes for a hard yolk.", "Eggs are laid by hens."
HH_PROMPT = "".join(f"\n\n{'Human' if r == 'user' else 'Assistant'}: {t}" for r, t in TURNS) + "\n\nAssistant:"
MESSAGES = [{"role": r, "content": t} for r, t in TURNS]
#: the rendering: the first human label is the template's, later turns carry their role
EXPECTED = ("How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: For how long?", CHOSEN)


def every_door(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """(prompt, response) of the one conversation (answered with CHOSEN) through each door."""
    hh = tmp_path / "harmless.jsonl.gz"
    with gzip.open(hh, "wt") as f:  # HH-RLHF's native format: whole transcripts
        f.write(json.dumps({"chosen": HH_PROMPT + " " + CHOSEN, "rejected": HH_PROMPT + " " + REJECTED}) + "\n")
    pair_file = tmp_path / "pairs.jsonl"  # a pair file whose prompt is the transcript (as `pm split` writes them)
    pair_file.write_text(json.dumps({"prompt": HH_PROMPT, "chosen": CHOSEN, "rejected": REJECTED, "principle": "x"}))
    from_hh = read_pairs(f"harmlessness={hh}")[0]
    from_file = read_pairs(pair_file)[0]
    chatml_prompt = chatml(MESSAGES)
    parser = QueryParser()
    return {
        "pm train: HH-RLHF transcripts": (from_hh.prompt, from_hh.chosen),
        "pm train: pair file": (from_file.prompt, from_file.chosen),
        "pm train: label store row": (Pair(HH_PROMPT, " " + CHOSEN, REJECTED).prompt, CHOSEN),
        "/v1/score messages": ScoreItem(messages=[*MESSAGES, {"role": "assistant", "content": CHOSEN}]).as_pair(),
        "/v1/score prompt (our PPO's transcript)": ScoreItem(prompt=HH_PROMPT, response=" " + CHOSEN).as_pair(),
        "/v1/score prompt (already rendered)": ScoreItem(prompt=EXPECTED[0], response=CHOSEN).as_pair(),
        "OpenRLHF /get_reward, ChatML": parser.parse(
            chatml_prompt + CHOSEN + "<|im_end|>", chatml_prompt
        ).conversation.pair(),
        "OpenRLHF /get_reward, query alone": parser.parse(chatml_prompt + CHOSEN + "<|im_end|>").conversation.pair(),
        "OpenRLHF /get_reward, HH text": parser.parse(HH_PROMPT + " " + CHOSEN, HH_PROMPT).conversation.pair(),
        "TRL RemoteReward, conversational": trl_item(MESSAGES, [{"role": "assistant", "content": CHOSEN}]).as_pair(),
        "TRL RemoteReward, plain text": trl_item(HH_PROMPT, " " + CHOSEN).as_pair(),
        "veRL compute_score, messages": trl_item(
            prompt_messages({"prompt": MESSAGES}), [{"role": "assistant", "content": CHOSEN}]
        ).as_pair(),
        "veRL compute_score, HH text": trl_item(
            prompt_messages({"prompt": HH_PROMPT}), [{"role": "assistant", "content": CHOSEN}]
        ).as_pair(),
    }


def test_a_conversation_renders_the_same_through_every_door(tmp_path):
    doors = every_door(tmp_path)
    assert {door: pair for door, pair in doors.items() if pair != EXPECTED} == {}


@pytest.mark.parametrize("kind", ["pair", "text"])
def test_and_the_model_sees_the_same_tokens(tmp_path, kind, encoder_base, decoder_base):
    base = encoder_base if kind == "pair" else decoder_base
    enc = TemplateEncoder(base.tokenizer, InputTemplate(kind=kind, max_length=512))
    ids = {door: tuple(enc.encode(*pair).input_ids) for door, pair in every_door(tmp_path).items()}
    assert len(set(ids.values())) == 1, ids
    if kind == "text":  # the decoder reads the HH transcript itself: the template supplies the outer labels
        tok = base.tokenizer
        transcript = DEFAULT_TEXT_TEMPLATE.format(prompt=EXPECTED[0], response=CHOSEN)
        assert "\n\nHuman: For how long?\n\nAssistant: About" in transcript
        want = tok.decode(tok(transcript, add_special_tokens=False)["input_ids"])
        assert tok.decode(next(iter(ids.values())), skip_special_tokens=True).strip() == want


def test_the_rendering_is_idempotent_and_keeps_single_turns_plain():
    assert ScoreItem(prompt="Hi there", response=" yo ").as_pair() == ("Hi there", "yo")
    assert ScoreItem(prompt="\n\nHuman: Hi there\n\nAssistant:", response="yo").as_pair() == ("Hi there", "yo")
    assert ScoreItem(prompt="Human: Hi there", response="yo").as_pair() == ("Hi there", "yo")
    system = ScoreItem(messages=[{"role": "system", "content": "Be brief."}, *MESSAGES, {"role": "assistant",
                                 "content": CHOSEN}]).as_pair()  # fmt: skip
    assert system[0].startswith("System: Be brief.\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling")
    assert system[0].endswith("\n\nHuman: For how long?")
    for prompt in (EXPECTED[0], system[0], "a\n\nAssistant: b"):
        assert ScoreItem(prompt=prompt, response="r").as_pair() == (prompt, "r")
    # text that only mentions the labels stays one user turn
    odd = "Write a play. Assistant: yes"
    assert ScoreItem(prompt=odd, response="r").as_pair() == (odd, "r")


def test_validation_splits_follow_the_opening_turn():
    # the same dialogue opening, however it continues or is written, lands on the same side of every split
    later = HH_PROMPT + " Nine minutes.\n\nHuman: And soft?\n\nAssistant:"
    for salt in ("a", "b", "val0"):
        assert prompt_bucket(HH_PROMPT, salt) == prompt_bucket(later, salt) == prompt_bucket(EXPECTED[0], salt)
        assert prompt_bucket("How do I boil an egg?", salt) == prompt_bucket(HH_PROMPT, salt)
    assert len({prompt_bucket(f"question {i}", "s") for i in range(50)}) == 50
