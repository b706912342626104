"""The scoring service: validates requests, snapshots principles, encodes, batches, scalarizes, answers.

No FastAPI here: `routes` is a thin face over `ScoringService`, and tests can drive the service directly. Which
principles are served (rules, packages, loading and unloading them) is `adapters.AdapterManager`'s business; the
service reads them from the shared `Registry`. Blocking work (tokenizing, reading packages, the model) never runs
on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

import anyio
import torch

from morlaif.chat_templates import QueryParser
from morlaif.conversation import Conversation, from_messages
from morlaif.protocol import (
    ClassifyData,
    ClassifyRequest,
    ClassifyResponse,
    CompareRequest,
    CompareResponse,
    ItemScores,
    Limits,
    ModelCard,
    ModelList,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    Pairwise,
    PrinciplesResponse,
    QueryInfo,
    ScalarizeRequest,
    ScalarizeResponse,
    ScalarizerSpec,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    Usage,
    length_feature,
    replace_invalid_text,
)
from morlaif.scalarize import scalarize
from pm_server.model.base import BaseModel, load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import Encoded, InputTemplate, TemplateEncoder
from pm_server.serving.adapters import AdapterManager
from pm_server.serving.batcher import Batcher
from pm_server.serving.config import ServerSettings
from pm_server.serving.errors import InvalidRequest, ModelFailure, NotFound, TooLarge, Unavailable, VersionConflict
from pm_server.serving.metrics import Metrics
from pm_server.serving.registry import Entry

__all__ = ["REWARD_MODEL", "ScoringService"]

#: the model name of the default scalarized reward on vLLM-style routes (/classify, /v1/models)
REWARD_MODEL = "reward"

logger = logging.getLogger(__name__)


def policy_query_parser(tokenizer_id: str, template: str = "auto") -> QueryParser:
    """A `QueryParser` for one policy's tokenizer: its end strings, and its chat template's family.

    Raises `ValueError` when the tokenizer cannot be loaded, or when `template` is ``auto`` and the tokenizer's
    chat template is none of `morlaif.chat_templates.TEMPLATES` (set the template by name, or ``none``).
    """
    from transformers import AutoTokenizer

    from morlaif.chat_templates import detect_template

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_id)
    except (OSError, ValueError) as e:
        raise ValueError(f"policy_tokenizer {tokenizer_id!r}: cannot load it: {e}") from e
    specials = [t for t in getattr(tok, "all_special_tokens", []) if isinstance(t, str)]
    ends = [t for t in (tok.eos_token, tok.pad_token) if isinstance(t, str)]
    ends += [t for t in specials if any(k in t.lower() for k in ("end", "eot", "eos", "pad", "eom"))]
    if template == "auto" and getattr(tok, "chat_template", None):
        probe = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
        rendered = str(tok.apply_chat_template(probe, tokenize=False))  # tokenize=False: the text
        found = detect_template(rendered)
        if found is None:
            raise ValueError(
                f"policy_tokenizer {tokenizer_id!r}: its chat template is none of the recognised ones; set "
                "policy_template to one of them, or none to split queries from their prompts"
            )
        template = found
    parser = QueryParser(template, end_strings=ends)
    logger.info("reading policy queries with chat template %s, end strings %s", template, ", ".join(parser.end_strings))
    return parser


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class ScoringService:
    """Answers the scoring routes: /v1/score, /v1/compare, /get_reward, /classify, /v1/scalarize and the listings.

    It owns the base model, the model thread (`engine`, `batcher`), the encoders and the policy query parser, and
    holds the `AdapterManager` (`adapters`) whose `registry` it scores from. Errors are `ServiceError`s (and the
    shared library's `ScalarizeError`); `errors` says how each is answered over HTTP.
    """

    def __init__(
        self, settings: ServerSettings, *, base: BaseModel | None = None, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._base = base
        self.ready = False
        self._encoders: dict[InputTemplate, TemplateEncoder] = {}
        self.engine: ScoringEngine | None = None
        self.batcher: Batcher | None = None
        self.adapters = AdapterManager(settings, self.metrics, check_template=self._encoder)
        #: the served principles: `adapters` writes them, scoring reads them
        self.registry = self.adapters.registry
        self.query_parser = QueryParser(settings.policy_template)
        if settings.policy_tokenizer is not None:
            self.query_parser = policy_query_parser(settings.policy_tokenizer, settings.policy_template)

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Load the base, start the model thread, then serve the principles (`AdapterManager.start`). Blocking."""
        s = self.settings
        if self._base is None:
            self._base = load_base(s.base_model, max_length=s.max_length, device=s.device, dtype=s.dtype)
        self.engine = ScoringEngine(self._base, num_threads=s.num_threads)
        self.batcher = Batcher(
            self.engine,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_rows=s.max_batch_rows,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_queued_rows=s.max_queued_rows,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.adapters.start(self._base, self.engine, self.batcher)
        self.ready = True
        logger.info("serving principles: %s", ", ".join(self.registry.names()) or "none")

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.stop()

    @property
    def base(self) -> BaseModel:
        if self._base is None:
            raise Unavailable("the base model is still loading")
        return self._base

    def _encoder(self, template: InputTemplate) -> TemplateEncoder:
        enc = self._encoders.get(template)
        if enc is None:
            enc = self._encoders[template] = TemplateEncoder(self.base.tokenizer, template)
        return enc

    # --------------------------------------------------------------------------------------- score
    def _check_items(self, items: Sequence[ScoreItem], field: str = "items") -> list[Conversation]:
        if len(items) > self.settings.max_items:
            raise TooLarge(
                f"at most {self.settings.max_items} items per request, got {len(items)}; split the batch "
                "(morlaif.client does, by the limits /v1/principles gives)",
                field=field,
                code="too_many_items",
            )
        conversations = []
        limit = self.settings.max_text_chars
        for i, item in enumerate(items):
            # An empty response is scored, not refused: an RL policy that stops at once must still get a reward.
            conv = item.conversation()
            for name, text in zip(("prompt", "response"), conv.pair(), strict=True):
                if len(text) > limit:
                    raise InvalidRequest(
                        f"{name} has {len(text)} characters; the limit is {limit}",
                        field=f"{field}[{i}].{name}",
                    )
            conversations.append(conv)
        return conversations

    def _choose_principles(self, principles: list[str] | None, scalarizer: ScalarizerSpec | None) -> list[str]:
        if principles is not None:
            if not principles:
                raise InvalidRequest("principles must not be empty (omit it to score all)", field="principles")
            if len(set(principles)) != len(principles):
                raise InvalidRequest("principles must not repeat", field="principles")
            return list(principles)
        if scalarizer is not None and scalarizer.weights:
            return list(scalarizer.weights)
        names = self.registry.names()
        if not names:
            raise Unavailable("no principle is loaded")
        return names

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        if not self.ready:
            raise Unavailable("the server is still loading")
        conversations = self._check_items(req.items)
        return await self._score(
            conversations, req.principles, req.scalarizer, req.normalize, req.expected_versions, chunk=len(req.items)
        )

    async def _score(
        self,
        conversations: Sequence[Conversation],
        principles: list[str] | None,
        scalarizer: ScalarizerSpec | None,
        normalize: bool,
        expected_versions: dict[str, str] | None,
        *,
        chunk: int,
    ) -> ScoreResponse:
        """Score `conversations` in chunks of `chunk` items, every chunk on the same adapter versions."""
        names = self._choose_principles(principles, scalarizer)
        if scalarizer is not None:  # fail on bad weights or params before spending compute
            scalarize(
                torch.zeros(1, len(names)),
                names,
                name=scalarizer.name,
                weights=scalarizer.weights,
                params=scalarizer.params,
            )
        pairs = [c.pair() for c in conversations]
        entries = self.registry.acquire(names)
        raw: list[list[float]] = []
        encoded: list[Encoded] = []
        try:
            self._check_versions(entries, expected_versions)
            for start in range(0, len(pairs), max(1, chunk)):
                r, e = await self._raw_scores(entries, pairs[start : start + chunk])
                raw += r
                encoded += e
        finally:
            self.registry.release(entries)
        return self._assemble(
            entries,
            raw,
            encoded,
            normalize,
            scalarizer,
            [c.dropped_parts for c in conversations],
            [length_feature(response) for _, response in pairs],
        )

    @staticmethod
    def _check_versions(entries: Sequence[Entry], expected: dict[str, str] | None) -> None:
        if not expected:
            return
        by_name = {e.name: e for e in entries}
        for name, version in expected.items():
            e = by_name.get(name)
            if e is None:
                raise InvalidRequest(
                    f"expected_versions names {name!r}, which this request does not score",
                    field=f"expected_versions.{name}",
                )
            if e.version != version:
                raise VersionConflict(
                    f"{name} version {version} is no longer loaded (serving {e.version}); rescore the batch",
                    field=f"expected_versions.{name}",
                )

    async def _raw_scores(
        self, entries: Sequence[Entry], pairs: list[tuple[str, str]]
    ) -> tuple[list[list[float]], list[Encoded]]:
        assert self.batcher is not None
        learned = [e for e in entries if e.adapter_id is not None]
        templates = list(dict.fromkeys(e.template for e in learned if e.template is not None))
        if not templates:
            templates = [self.base.default_template]

        def encode_all() -> dict[InputTemplate, list[Encoded]]:
            return {t: [self._encoder(t).encode(p, r) for p, r in pairs] for t in templates}

        encoded = await anyio.to_thread.run_sync(encode_all)
        rows = []  # item-major: item i's learned principles are rows i*L .. i*L + L - 1
        for i in range(len(pairs)):
            for e in learned:
                enc = encoded[e.template or templates[0]][i]
                rows.append(Row(enc.input_ids, enc.token_type_ids, e.adapter_id or "", enc.prefix_tokens))
        fut = self.batcher.submit(rows)
        try:
            flat = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()  # the batcher drops rows of requests whose client went away
            raise
        primary = encoded[templates[0]]
        raw: list[list[float]] = []
        k = 0
        for i, (_, response) in enumerate(pairs):
            row = []
            for e in entries:
                if e.rule is not None:
                    row.append(e.rule.raw(response, primary[i].response_tokens))
                else:
                    row.append(flat[k])
                    k += 1
            raw.append(row)
        return raw, primary

    def _assemble(
        self,
        entries: Sequence[Entry],
        raw: list[list[float]],
        encoded: list[Encoded],
        normalize: bool,
        scalarizer: ScalarizerSpec | None,
        dropped: Sequence[int],
        lengths: Sequence[float],
    ) -> ScoreResponse:
        """Scores from raw ones: calibrated (``normalize``: length term, then standardised; see `Calibration`),
        the scalarized reward, the per-item usage. `lengths` is `length_feature` of each item's response."""
        names = [e.name for e in entries]
        raw_t = torch.tensor(raw, dtype=torch.float64).reshape(len(raw), len(names))  # (N, P)
        bad = (~torch.isfinite(raw_t)).nonzero()
        if len(bad):  # never answer a score (or a reward made of it) that is NaN or infinite
            i, j = bad[0].tolist()
            raise ModelFailure(f"{names[j]} gave a non-finite score ({raw_t[i, j].item()}) for item {i}")
        if normalize:
            mean = torch.tensor([e.calibration.mean for e in entries], dtype=torch.float64)
            std = torch.tensor([e.calibration.std for e in entries], dtype=torch.float64)
            coef = torch.tensor([e.calibration.length_coef for e in entries], dtype=torch.float64)
            length = torch.tensor(lengths, dtype=torch.float64).reshape(-1, 1)  # (N, 1)
            used = (raw_t - coef * length - mean) / std
        else:
            used = raw_t
        rewards = None
        if scalarizer is not None:
            rewards = scalarize(
                used, names, name=scalarizer.name, weights=scalarizer.weights, params=scalarizer.params
            ).tolist()
        for j, n in enumerate(names):
            column = used[:, j].tolist()
            for v in column:
                self.metrics.scores.labels(principle=n).observe(v)
            self.metrics.score_sum.labels(principle=n).inc(sum(column))
        results = [
            ItemScores(
                scores=dict(zip(names, used[i].tolist(), strict=True)),
                raw_scores=dict(zip(names, raw_t[i].tolist(), strict=True)),
                reward=None if rewards is None else rewards[i],
                tokens=len(encoded[i]),
                truncated=encoded[i].truncated,
                dropped_parts=dropped[i],
            )
            for i in range(len(raw))
        ]
        learned = sum(1 for e in entries if e.adapter_id is not None)
        return ScoreResponse(
            principles=names,
            results=results,
            versions={e.name: e.version for e in entries},
            scalarizer=None if scalarizer is None else scalarizer.name,
            usage=Usage(items=len(raw), input_tokens=sum(len(x) for x in encoded), forward_rows=learned * len(raw)),
        )

    async def compare(self, req: CompareRequest) -> CompareResponse:
        res = await self.score(
            ScoreRequest(
                items=[
                    ScoreItem(prompt=req.prompt, response=req.response_a),
                    ScoreItem(prompt=req.prompt, response=req.response_b),
                ],
                principles=req.principles,
                scalarizer=req.scalarizer,
                normalize=req.normalize,
                expected_versions=req.expected_versions,
            )
        )
        a, b = res.results

        def pair(x: float, y: float) -> Pairwise:
            return Pairwise(score_a=x, score_b=y, p_a_better=_sigmoid(x - y))

        return CompareResponse(
            principles={n: pair(a.scores[n], b.scores[n]) for n in res.principles},
            reward=None if a.reward is None or b.reward is None else pair(a.reward, b.reward),
            versions=res.versions,
        )

    def scalarize(self, req: ScalarizeRequest) -> ScalarizeResponse:
        """Scores already computed, scalarized: what /v1/score's reward would be with this scalarizer."""
        if len(req.scores) > self.settings.max_items:
            raise InvalidRequest(
                f"at most {self.settings.max_items} items per request, got {len(req.scores)}", field="scores"
            )
        names = list(req.scores[0])
        for i, item in enumerate(req.scores):
            if set(item) != set(names):
                raise InvalidRequest(
                    f"has principles {sorted(item)} but scores.0 has {sorted(names)}: every item needs the same",
                    field=f"scores.{i}",
                )
        values = torch.tensor([[item[n] for n in names] for item in req.scores], dtype=torch.float64)
        spec = req.scalarizer
        rewards = scalarize(values, names, name=spec.name, weights=spec.weights, params=spec.params)
        return ScalarizeResponse(principles=names, rewards=rewards.tolist(), scalarizer=spec.name)

    def _default_spec(self) -> ScalarizerSpec:
        s = self.settings
        return ScalarizerSpec(name=s.default_scalarizer, weights=s.default_weights, params=s.default_scalarizer_params)

    def _read_queries(
        self, queries: Sequence[str], prompts: Sequence[str] | None
    ) -> tuple[list[Conversation], list[QueryInfo]]:
        """Each policy-decoded query as the conversation it encodes (chat template, end strings, prompt split)."""
        conversations, info = [], []
        for i, raw_query in enumerate(queries):
            query, replaced = replace_invalid_text(raw_query)
            prompt = None
            if prompts is not None:
                prompt, prompt_replaced = replace_invalid_text(prompts[i])
                replaced = replaced or prompt_replaced
            parsed = self.query_parser.parse(query, prompt)
            conversations.append(parsed.conversation)
            info.append(
                QueryInfo(
                    template=parsed.template, split=parsed.split, stripped=parsed.stripped, replaced_text=replaced
                )
            )
        return conversations, info

    async def get_reward(self, req: OpenRLHFRewardRequest) -> OpenRLHFRewardResponse:
        """OpenRLHF's remote reward model: `query` is the policy's decoded prompt + response; `prompts` the prompts.

        Any number of queries (OpenRLHF 0.6-0.9 post a whole rollout): they are scored in chunks of `max_items`
        on one set of adapter versions. No query fails the batch: see `QueryParser.parse`.
        """
        if not self.ready:
            raise Unavailable("the server is still loading")
        if req.prompts is not None and len(req.prompts) != len(req.query):
            raise InvalidRequest(
                f"prompts has {len(req.prompts)} entries but query has {len(req.query)}", field="prompts"
            )
        if not req.query:
            return OpenRLHFRewardResponse(rewards=[], scores=[], extra_logs={}, info=[])
        conversations, info = await anyio.to_thread.run_sync(self._read_queries, req.query, req.prompts)
        res = await self._score(conversations, None, self._default_spec(), True, None, chunk=self.settings.max_items)
        rewards = [float(r.reward) for r in res.results if r.reward is not None]
        assert len(rewards) == len(conversations)
        return OpenRLHFRewardResponse(
            rewards=rewards,
            scores=[_sigmoid(r) for r in rewards],
            extra_logs={n: [r.scores[n] for r in res.results] for n in res.principles}
            if self.settings.get_reward_extra_logs
            else {},
            info=info,
        )

    # ------------------------------------------------------------------------------ vLLM compatibility
    def models(self) -> ModelList:
        """vLLM's /v1/models: the default reward (`reward` and any served_model_name) and every served principle."""
        names = [REWARD_MODEL, *self.settings.served_model_name, *self.registry.names()]
        return ModelList(data=[ModelCard(id=n, root=self.base.model_id) for n in dict.fromkeys(names)])

    async def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        """vLLM's /classify for a reward model: `model` is a principle, or `reward` (or a served_model_name, or
        omitted) for the default scalarized reward. Each input is one text, read as /get_reward reads a query
        (chat template, end strings); `messages` is one conversation. `probs` holds one value per input:
        sigmoid(value) unless `use_activation` is false (then the reward or normalised score itself)."""
        if not self.ready:
            raise Unavailable("the server is still loading")
        model = req.model or REWARD_MODEL
        if model == REWARD_MODEL or model in self.settings.served_model_name:
            principles, spec = None, self._default_spec()
        elif model in self.registry.names():
            principles, spec = [model], None
        else:
            raise NotFound(
                f"no model {model!r}: serving {REWARD_MODEL!r} (the default reward; more names with "
                f"MORLAIF_SERVED_MODEL_NAME) and the principles {', '.join(self.registry.names())}",
                field="model",
                code="model_not_found",
            )
        if req.messages is not None:
            conversations = [from_messages(req.messages)]
        else:
            texts = [req.input] if isinstance(req.input, str) else list(req.input or [])
            if len(texts) > self.settings.max_items:
                raise TooLarge(
                    f"at most {self.settings.max_items} inputs per request, got {len(texts)}",
                    field="input",
                    code="too_many_items",
                )
            conversations, _ = await anyio.to_thread.run_sync(self._read_queries, texts, None)
        if not conversations:
            return ClassifyResponse(model=model, data=[], usage={"prompt_tokens": 0, "total_tokens": 0})
        res = await self._score(conversations, principles, spec, True, None, chunk=self.settings.max_items)
        values = [float(r.reward if spec is not None else r.scores[model]) for r in res.results]  # type: ignore[arg-type]
        if req.use_activation is not False:
            values = [_sigmoid(v) for v in values]
        n_tokens = res.usage.input_tokens
        return ClassifyResponse(
            model=model,
            data=[ClassifyData(index=i, label=model, probs=[v], num_classes=1) for i, v in enumerate(values)],
            usage={"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0},
        )

    # ---------------------------------------------------------------------------------- principles
    def principles(self) -> PrinciplesResponse:
        s = self.settings
        dtype = str(self.base.dtype).removeprefix("torch.")
        return PrinciplesResponse(
            base_model=self.base.model_id,
            base_config_hash=self.base.config_hash,
            dtype=dtype,
            batch_invariant=dtype == "float32",
            limits=Limits(
                max_items=s.max_items, max_request_bytes=s.max_request_bytes, max_text_chars=s.max_text_chars
            ),
            principles=[e.info for e in self.registry.entries()],
        )
