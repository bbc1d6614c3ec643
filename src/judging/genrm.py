"""The trained judge as a scoring function: (prompt, response) pairs in, scores in [0, 1] out.

``GenRM`` builds the judge's own prompt around each pair (the grading prompt it was trained on),
lets it write its critique and verdict (greedy), and reads the verdict in the data's format
(``src/verdicts.py``) as a score in [0, 1]; with ``direct=True`` it skips the critique and
scores from the verdict's probabilities after one forward pass (P(Yes), the expected score).

Its call signature is a reward function's, unchanged for both RL trainers people use:

    judge = GenRM("checkpoints/sft_merged_model")
    judge(prompts=["Compute 2 + 2."], completions=["4"])          # -> [0.9]
    GRPOTrainer(..., reward_funcs=[judge])                         # TRL: extra columns as kwargs
    mlx_lm_lora GRPO: reward_funcs=[judge]                         # prompts, completions, answer

A reference answer (reference-guided judging) comes from the ``reference`` column (TRL passes
dataset columns as keyword arguments) or ``answer`` (mlx-lm-lora's name).

The judge carries its format: a model folder written by the fuse stage holds its card
(``genrm_judge.json``, src/judging/card.py): the verdict format it writes and whether it was
trained on prompts with a reference answer. Both judges use it unless ``verdict=`` says otherwise;
a reference-guided judge refuses a pair without a reference (``allow_missing_reference=True``
judges it without one, knowingly). A folder without a card needs ``verdict=``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.sft import chat_messages
from ..runtime import StageError
from .card import CARD, JudgeCard
from .prompts import MAX_JUDGEMENT_TOKENS, VERDICT_ENDINGS, judge_prompt
from .scores import TOP_LOGPROBS, chat_prompt_ids, soft_verdict, value_token_ids
from .verdicts import VerdictFormat, get_format


def _verdict(verdict, card: JudgeCard | None, where: str):
    """The verdict format: the caller's, else the judge card's, else a clear error."""
    if verdict is not None:
        return verdict
    if card is None:
        raise StageError(
            f"{where} has no judge card ({CARD}) saying which verdict format the judge writes. "
            "Fix: pass verdict= (CLI: --verdict), e.g. yes_no or score10."
        )
    return card.verdict


def prompt_text(x) -> str:
    """A prompt as text: a string, or a conversation (TRL's conversational format): its last
    user turn."""
    if isinstance(x, str):
        return x
    messages = chat_messages(x)
    users = [m["content"] for m in messages or [] if m.get("role") == "user"]
    if not users:
        raise TypeError(f"a prompt must be a string or chat messages with a user turn: {x!r:.80}")
    return users[-1]


def completion_text(x) -> str:
    """A completion as text: a string, or its assistant turns (TRL's conversational format)."""
    if isinstance(x, str):
        return x
    messages = chat_messages(x)
    said = [m["content"] for m in messages or [] if m.get("role") == "assistant"]
    if not said:
        raise TypeError(f"a completion must be a string or assistant messages: {x!r:.80}")
    return "\n".join(said)


def _soft_values(tokenizer, fmt: VerdictFormat) -> dict[int, float]:
    values = value_token_ids(tokenizer, fmt)
    if values is None:
        raise StageError(
            f"soft scores need each {fmt.name} verdict to be one token; with this tokenizer "
            "some share a first token (e.g. 1 and 10): use the parsed verdict or direct scores."
        )
    return values


class _Judge:
    """What every judge shares: the verdict format, the judge's prompt, the reward signature."""

    def __init__(
        self,
        verdict: str | VerdictFormat,
        template: str | None,
        max_tokens: int,
        unparsed: float,
        card: JudgeCard | None = None,
        allow_missing_reference: bool = False,
    ):
        self.fmt = verdict if isinstance(verdict, VerdictFormat) else get_format(verdict)
        self.card = card
        # a reference-guided judge (its card says so) never saw a prompt without a reference
        self.needs_reference = bool(card and card.reference) and not allow_missing_reference
        if self.fmt.name == "pairwise":
            raise StageError(
                "GenRM scores one response at a time; a pairwise judge compares two "
                "(evaluate it with the evaluate stage)."
            )
        if template is None and self.fmt.name not in VERDICT_ENDINGS:
            raise StageError(
                f"the {self.fmt.name} format has no built-in judge prompt: pass a template "
                "with {prompt} and {response} (and {reference} if it uses one)."
            )
        self.template, self.max_tokens, self.unparsed = template, max_tokens, unparsed
        self.__name__ = f"genrm_{self.fmt.name}"  # TRL and mlx-lm-lora name reward functions

    def judge_prompt(self, prompt: str, response: str, reference: str | None = None) -> str:
        """The user turn the judge reads for one pair."""
        if self.template is None:
            return judge_prompt(prompt, response, self.fmt.name, reference)
        fields = {"prompt": prompt, "response": response}
        if "{reference}" in self.template:
            if reference is None:
                raise StageError("the template uses {reference}, but no reference was given.")
            fields["reference"] = reference
        return self.template.format(**fields)

    def user_turns(self, prompts: list, completions: list, references: list | None) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        refs = references if references is not None else [None] * len(prompts)
        if self.needs_reference and None in refs:
            raise StageError(
                f"pair {refs.index(None)} has no reference answer, and this judge was trained on "
                "prompts with one (its card: reference true). Fix: pass reference= (or answer=) "
                "for every pair, or allow_missing_reference=True to judge without one."
            )
        return [
            self.judge_prompt(prompt_text(p), completion_text(c), r)
            for p, c, r in zip(prompts, completions, refs, strict=True)
        ]

    def record(self, text: str, tokens: list[int] | None = None, top: list | None = None) -> dict:
        """A judgement's score; with its ``tokens`` and their ``top`` log-probabilities also
        ``soft_score``, the verdict's probability-weighted value where it was written."""
        # Stripped: mlx-lm's server drops the leading space SentencePiece puts on the first
        # token, batch_generate keeps it; the judgement is the same either way.
        text = text.strip()
        raw = self.fmt.parse(text)
        out = {"score": None if raw is None else self.fmt.unit(raw), "raw": raw, "judgement": text}
        if tokens is not None:
            soft = soft_verdict(self.fmt, self.tokenizer, self.soft_values, tokens, top)
            out["soft_score"] = None if soft is None else self.fmt.unit(soft)
        return out

    def judge(self, prompts: list, completions: list, references: list | None = None) -> list:
        raise NotImplementedError

    def score(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """Scores in [0, 1], one per completion; a judgement without a verdict scores
        ``unparsed`` (0.0 by default: an unreadable answer earns nothing). Keyword arguments are
        what the trainers pass: ``reference`` or ``answer`` (a reference answer per pair) is
        used, the rest (``completion_ids``, ``types``, other dataset columns) is ignored."""
        refs = kwargs.get("reference", kwargs.get("answer"))
        if refs is not None:
            refs = [None if r is None else str(r) for r in refs]
        records = self.judge(prompts, completions, refs)
        # soft scores where the judge wrote a verdict token; the parsed verdict where it did not
        scores = [r["score"] if r.get("soft_score") is None else r["soft_score"] for r in records]
        return [self.unparsed if s is None else s for s in scores]

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        return self.score(prompts, completions, **kwargs)


class GenRM(_Judge):
    """A GenRM judge loaded from a model folder (e.g. ``checkpoints/sft_merged_model``)."""

    def __init__(
        self,
        model: str | Path,
        verdict: str | VerdictFormat | None = None,
        template: str | None = None,
        direct: bool = False,
        max_tokens: int = MAX_JUDGEMENT_TOKENS,
        batch_size: int = 16,
        unparsed: float = 0.0,
        progress: bool | None = None,
        soft: bool = False,
        allow_missing_reference: bool = False,
        cpu_kernels: str = "fast",
    ):
        from ..modeling.blas import warn_if_slow_blas
        from ..modeling.head import checked_head
        from ..modeling.load import load_base

        card = JudgeCard.read(model)
        verdict = _verdict(verdict, card, str(model))
        super().__init__(verdict, template, max_tokens, unparsed, card, allow_missing_reference)
        if direct and self.fmt.template is None:
            raise StageError(f"direct scoring needs a verdict template; {self.fmt.name} has none.")
        self.direct, self.batch_size, self.progress = direct, batch_size, progress
        self.model_path = Path(model)
        warn_if_slow_blas()
        # load_base: a quantized model is dequantized on the CPU, and the CPU computes in fp32;
        # cpu_kernels="fast" binds our float32 kernels into this model (and no other)
        self.model, self.tokenizer, _, _ = load_base(str(model), 0, 64, kernels=cpu_kernels)
        self.soft_values = _soft_values(self.tokenizer, self.fmt) if soft else None
        # the LM head alone, checked once: direct scores and generation read only some positions
        self.head = checked_head(self.model)

    def prompt_ids(self, user_turns: list[str]) -> list[list[int]]:
        return chat_prompt_ids(
            self.tokenizer, [[{"role": "user", "content": u}] for u in user_turns]
        )

    def judge(self, prompts: list, completions: list, references: list | None = None) -> list[dict]:
        """One record per pair: ``score`` in [0, 1] (None: no verdict), ``raw`` on the format's
        own scale, and ``judgement`` (the critique and verdict; None with ``direct``)."""
        from . import generate as gen

        ids = self.prompt_ids(self.user_turns(prompts, completions, references))
        out = []
        bar = self._bar(len(ids))
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            if self.direct:
                for raw in self._direct(batch):
                    out.append({"score": self.fmt.unit(raw), "raw": raw, "judgement": None})
            elif self.soft_values is not None:
                for tokens, top in zip(*self._generate(batch), strict=True):
                    out.append(self.record(self.tokenizer.decode(tokens), tokens, top))
            else:
                texts, *_ = gen.judge_texts(
                    self.model, self.tokenizer, batch, self.max_tokens, len(batch), self.head
                )
                out += [self.record(text) for text in texts]
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return out

    def _generate(self, batch: list[list[int]]) -> tuple[list[list[int]], list[list[dict]]]:
        """Greedy judgements, keeping each generated token and the ``TOP_LOGPROBS``
        log-probabilities of its step (what mlx-lm's server reports): the soft score's input."""
        from . import generate as gen

        g = gen.generate(
            self.model,
            self.tokenizer,
            batch,
            self.max_tokens,
            len(batch),
            self.head,
            top=TOP_LOGPROBS,
        )
        return g.tokens, g.tops

    def _direct(self, batch: list[list[int]]) -> list[float]:
        from .scores import direct_scores

        return direct_scores(self.model, self.tokenizer, batch, self.fmt, len(batch), self.head)

    def _bar(self, total: int):
        show = self.progress if self.progress is not None else total > 4 * self.batch_size
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc="judging", unit="pair", file=sys.stderr)


class ServedGenRM(_Judge):
    """The same judge behind mlx-lm's OpenAI-compatible server, over plain HTTP:

        uv run mlx_lm.server --model checkpoints/sft_merged_model --port 8080
        judge = ServedGenRM("http://127.0.0.1:8080")
        judge(prompts=["Compute 2 + 2."], completions=["4"])    # same scores as GenRM(...)

    Each pair is one chat completion (greedy, ``max_tokens``), its verdict read as ``GenRM``
    reads it; no MLX is needed on the caller's side (the RL trainer can live elsewhere). With
    ``soft=True`` (and ``tokenizer``, the model folder: only its tokenizer is read) the
    completion also carries log-probabilities (``top_logprobs``), from which the verdict's
    soft score is computed exactly as ``GenRM(soft=True)`` computes it. ``tokenizer`` (the
    served model's folder) also gives the judge's card: its verdict format and reference rule."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        verdict: str | VerdictFormat | None = None,
        template: str | None = None,
        max_tokens: int = MAX_JUDGEMENT_TOKENS,
        unparsed: float = 0.0,
        timeout: float = 300.0,
        soft: bool = False,
        tokenizer: str | Path | None = None,
        allow_missing_reference: bool = False,
    ):
        card = JudgeCard.read(tokenizer) if tokenizer is not None else None
        verdict = _verdict(
            verdict, card, str(tokenizer or "the served model (no tokenizer= folder)")
        )
        super().__init__(verdict, template, max_tokens, unparsed, card, allow_missing_reference)
        self.url, self.timeout = url.rstrip("/"), timeout
        self.soft_values = None
        if soft:
            if tokenizer is None:
                raise StageError("soft=True needs tokenizer= (the served model's folder).")
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
            self.soft_values = _soft_values(self.tokenizer, self.fmt)

    def complete(self, user_turn: str) -> dict:
        """One chat completion of the server: its JSON response."""
        import urllib.request

        body = {
            "messages": [{"role": "user", "content": user_turn}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        if self.soft_values is not None:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.load(response)

    def judge(self, prompts: list, completions: list, references: list | None = None) -> list:
        out = []
        for user_turn in self.user_turns(prompts, completions, references):
            choice = self.complete(user_turn)["choices"][0]
            text = choice["message"]["content"]
            if self.soft_values is None:
                out.append(self.record(text))
                continue
            # Greedy decoding: each position's token is the most likely of its alternatives.
            steps = [c["top_logprobs"] for c in choice["logprobs"]["content"]]
            tokens = [max(step, key=lambda e: e["logprob"])["id"] for step in steps]
            top = [{e["id"]: e["logprob"] for e in step} for step in steps]
            out.append(self.record(text, tokens, top))
        return out
