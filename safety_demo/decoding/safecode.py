"""SafeCoDe (arXiv 2509.19212): a scene-level judge, then contrastive decoding with token
modulation for the first few tokens. Defaults are the official implementation's.

Per step t < `steps`, with z(v) and z(ṽ) the logits of the real and the noised image rows
(one batch of two, each on its own cache):

    z_cd = z(v) − α·z(ṽ)                      α = 0.3 after `unsafe`, 0.15 after `safe`
    unsafe: force the first ≤ `steps` tokens of the refusal phrase with the highest
            Σ softmax(z_cd) over its tokens (a phrase with a strong refusal word preferred
            among the best `phrase_top_k`); if none fits, p′ = p_cd·(1 + λ_boost) on R
    safe:   p′ = p_cd·(1 − 0.5·λ_supp) on R, renormalised; modulation stops early once the
            answer so far has two words and its first word (≥ 2 letters) starts with a
            capital, as the official code does ("The image …" is natural language already)

After that, ordinary decoding from z(v), on the real row only (as the official code), unless
`delta_after_steps` keeps the noised row running so every token gets its contrastive delta
log p(real) − log p(noised) in the trace (one more row per step). After `unsafe` the answer is
capped at the official length for the family (the refusal prefix + 30 new tokens on Qwen,
+ 20 on LLaVA).

The verdict comes from a judge: the decoding model captioning the image and answering the
official few-shot prompt (`judge="self"`), a second local model (`judge=<registry name>`),
or (ours, no paper has it) the Decoding-Probe's P(harmful | h₀) at prefill (`judge="probe"`),
which costs no decoding at all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..inputs import add_gaussian_noise
from ..models.base import Request, VLMAdapter
from ..probe import DecodingProbe
from ..trace import JudgeInfo
from .judge import PARSE_FALLBACKS, VERDICTS
from .policy import Decision, Policy, View, check_knobs

# The official list, as written there (duplicates removed; "</s>" kept: it is the official
# Llama-style end token and simply tokenises to text on other models).
OFFICIAL_REFUSALS = (
    "I'm sorry", "I am sorry", "I'm an", "I'm just", "Sorry", "I apologize", "As an", "As an AI",
    "As a language model", "As an Assistant", "I cannot", "I do not", "It is not</s>",
    "It is not appropriate", "I'm unable to", "I am unable to", "I am not allowed to",
    "I am an AI language model", "I’m unable to", "Hello", "I", "cannot", "apologize", "inappropriate",
)
# Curated: phrases that only ever start a refusal; R keeps only tokens that carry refusal
# meaning on their own (no bare "I", "As", "Hello").
CURATED_REFUSALS = (
    "I'm sorry, but I can't help with that.", "I'm sorry, but I cannot assist with that.",
    "Sorry, I can't help with that.", "I apologize, but I cannot help with this request.",
    "I cannot help with that.", "I can't assist with that.", "I am unable to help with that.",
    "I'm unable to provide that.", "I am not able to help with this.", "Unfortunately, I can't help with that.",
    "As an AI, I cannot help with that.", "It is not appropriate for me to help with that.",
)
REFUSAL_VOCABULARIES = {"official": OFFICIAL_REFUSALS, "curated": CURATED_REFUSALS}
STRONG_REFUSAL_WORDS = ("sorry", "apologize", "unable", "cannot", "can't", "not allowed", "not able to")
OFFICIAL_LENGTH_CAPS = {"qwen": 30, "llava": 20}  # new tokens after the refusal prefix once `unsafe` (official, per family)
JUDGES = ("self", "probe")  # or a registry name: a second local model


def official_length_cap(adapter: VLMAdapter) -> int:
    """The official cap for this model's family (0 = none: the official default of 256 tokens)."""
    ident = f"{adapter.name} {adapter.model_id}".lower()
    return next((cap for family, cap in OFFICIAL_LENGTH_CAPS.items() if family in ident), 0)


def natural_prefix(text: str) -> bool:
    """The official early stop of the safe path: two words, the first ≥ 2 letters and capitalised."""
    words = text.split()
    return len(words) >= 2 and len(words[0]) >= 2 and words[0][0].isupper()


_CURATED_TOKEN_WORDS = ("sorry", "apolog", "unable", "cannot", "can't", "can’t", "unfortunately", "inappropriate", "refuse", "not able", "won't")


@dataclass
class SafeCoDeConfig:
    alpha_unsafe: float = 0.3  # contrast weight α after an `unsafe` verdict (official 0.3)
    alpha_safe: float = 0.15  # α after `safe` (official: half of α)
    sigma: float = 0.1  # std of the Gaussian pixel noise of ṽ, in [0, 1] RGB space
    steps: int = 5  # modulated steps at the start of the answer (official max_steps)
    phrase_top_k: int = 20  # refusal phrases ranked before preferring a strong one (official top_k)
    lambda_boost: float = 1.0  # unsafe fallback: p′ = p·(1 + λ_boost) on R
    lambda_supp: float = 1.0  # safe: p′ = p·(1 − 0.5·λ_supp) on R, i.e. ×0.5
    vocabulary: str = "official"  # refusal vocabulary R: "official" or "curated"
    verdict: str = "auto"  # judge override: auto / safe / unsafe
    min_phrase_score: float = 0.0  # a phrase "fits" if its Σ p_cd exceeds this (official: any phrase)
    length_cap: int = -1  # new tokens after the refusal prefix once `unsafe`: -1 = official for the family (Qwen 30, LLaVA 20), 0 = off
    caption_max_tokens: int = 40  # judge caption budget (official ≤ 100; one sentence is kept)
    movers: int = 5  # tokens whose log-probability moved most, recorded per step
    judge: str = "self"  # "self" (the decoding model), "probe" (P(harmful | h₀), ours) or a registry name
    verdict_fallback: str = "safe"  # an unparseable verdict: "safe" (official) or "logit" (the judge's first-token odds)
    safe_early_stop: bool = True  # official: stop modulating once the answer starts as natural language
    delta_after_steps: bool = False  # keep the noised row after the modulated steps: deltas for every token, one more row

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.alpha_unsafe <= 2.0, "alpha_unsafe must be in [0, 2]"),
            (0.0 <= self.alpha_safe <= 2.0, "alpha_safe must be in [0, 2]"),
            (0.0 <= self.sigma <= 1.0, "sigma must be in [0, 1]"),
            (0 <= self.steps <= 64, "steps must be in [0, 64]"),
            (1 <= self.phrase_top_k <= 100, "phrase_top_k must be in [1, 100]"),
            (0.0 <= self.lambda_boost <= 10.0, "lambda_boost must be in [0, 10]"),
            (0.0 <= self.lambda_supp <= 2.0, "lambda_supp must be in [0, 2] (2 removes refusals)"),
            (self.vocabulary in REFUSAL_VOCABULARIES, f"vocabulary must be one of {list(REFUSAL_VOCABULARIES)}"),
            (self.verdict in VERDICTS, f"verdict must be one of {VERDICTS}"),
            (-1 <= self.length_cap <= 4096, "length_cap must be in [-1, 4096] (-1 = official, 0 = off)"),
            (isinstance(self.judge, str) and 0 < len(self.judge) <= 200, "judge must be 'self', 'probe' or a model name"),
            (self.verdict_fallback in PARSE_FALLBACKS, f"verdict_fallback must be one of {PARSE_FALLBACKS}"),
            (1 <= self.caption_max_tokens <= 100, "caption_max_tokens must be in [1, 100]"),
        ]
        check_knobs("SafeCoDe", checks)


def refusal_token_ids(adapter: VLMAdapter, vocabulary: str) -> list[int]:
    """R: the token ids of the chosen refusal vocabulary."""
    phrases = REFUSAL_VOCABULARIES[vocabulary]
    if vocabulary == "official":  # every token of every phrase, as the official code does
        return sorted({i for p in phrases for i in adapter.encode_text(p)})
    ids = {i for p in phrases for v in (p, " " + p) for i in adapter.encode_text(v)}
    texts = adapter.token_texts(sorted(ids))
    return sorted(i for i, t in zip(sorted(ids), texts) if any(w in t.strip().lower() for w in _CURATED_TOKEN_WORDS))


@dataclass(frozen=True)
class Vocabulary:
    """What SafeCoDe reads from the tokenizer once per model: R, the phrases, the end token."""

    refusal_ids: torch.Tensor  # [|R|] long
    refusal_tokens: tuple[str, ...]
    phrases: tuple[tuple[str, tuple[int, ...]], ...]  # (phrase, its ids), non-empty only
    eos: int | None
    length_cap: int  # new tokens after the refusal prefix once `unsafe` (0 = off)

    @classmethod
    def for_model(cls, adapter: VLMAdapter, config: SafeCoDeConfig) -> "Vocabulary":
        ids = refusal_token_ids(adapter, config.vocabulary)
        phrases = tuple((p, tuple(adapter.encode_text(p))) for p in REFUSAL_VOCABULARIES[config.vocabulary])
        return cls(
            refusal_ids=torch.tensor(ids, dtype=torch.long),
            refusal_tokens=tuple(adapter.token_texts(ids)),
            phrases=tuple((p, i) for p, i in phrases if i),
            eos=min(adapter.eos_token_ids) if adapter.eos_token_ids else None,
            length_cap=official_length_cap(adapter) if config.length_cap < 0 else config.length_cap,
        )


@dataclass(frozen=True)
class SafeCoDeState:
    """One run's memory: the verdict it follows and what the first steps fixed."""

    judge: JudgeInfo
    alpha: float
    forced: tuple[int, ...] = ()  # the refusal prefix picked at step 0 after `unsafe`
    stopped_at: int | None = None  # the step the safe path's early stop fired

    @property
    def verdict(self) -> str:
        return self.judge.verdict

    @property
    def facts(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "alpha": self.alpha}


class SafeCoDePolicy(Policy):
    """Real-vs-noised contrast and refusal modulation for the first `steps` tokens, after a verdict.

    The verdict comes in: `judge` (from `decoding.judge.run_judge`, run by `safety_demo.methods`),
    or the config's `verdict` override, or, with `judge="probe"`, the probe's reading of h₀ at
    step 0 (`probe` must then be given).
    """

    name = "safecode"

    def __init__(
        self, vocabulary: Vocabulary, config: SafeCoDeConfig | None = None, *, judged: JudgeInfo | None = None,
        probe: DecodingProbe | None = None, **knobs: Any,
    ) -> None:
        self.config = config or SafeCoDeConfig(**knobs)
        self.vocabulary = vocabulary
        self.judged, self.probe = judged, probe  # the judge's result; the probe of judge="probe"
        if self.config.judge == "probe" and probe is None and self.config.verdict == "auto":
            raise ValueError("SafeCoDe: judge='probe' needs a probe.")
        if self.config.judge != "probe" and judged is None and self.config.verdict == "auto":
            raise ValueError("SafeCoDe: no verdict; run the judge first (safety_demo.methods.prepare does) or set verdict.")

    @classmethod
    def for_model(
        cls, adapter: VLMAdapter, config: SafeCoDeConfig | None = None, *, judged: JudgeInfo | None = None,
        probe: DecodingProbe | None = None, **knobs: Any,
    ) -> "SafeCoDePolicy":
        """Read R and the phrases from `adapter`'s tokenizer (no model call)."""
        config = config or SafeCoDeConfig(**knobs)
        return cls(Vocabulary.for_model(adapter, config), config, judged=judged, probe=probe)

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)

    def rows(self, request: Request, seed: int) -> list[Request]:
        noised = add_gaussian_noise(request.image, self.config.sigma, seed)  # ṽ, seeded
        return [request, Request(noised, request.prompt)]

    def start(self, view: View) -> SafeCoDeState:
        """Step 0: the verdict given, the override, or (judge="probe") P(harmful | h₀) > 0.5."""
        c = self.config
        if self.probe is not None and c.judge == "probe":
            p = float(self.probe.prob(view.hidden[0].float().cpu().numpy()))
            verdict = c.verdict if c.verdict != "auto" else ("unsafe" if p > 0.5 else "safe")
            judge = JudgeInfo("", f"P(harmful | h₀) = {p:.3f}", verdict, "override" if c.verdict != "auto" else "probe", p, 0.0, "probe")
        elif self.judged is not None:
            judge = self.judged
        else:
            judge = JudgeInfo("", "", c.verdict, "override", float("nan"), 0.0, "")
        return SafeCoDeState(judge, c.alpha_unsafe if judge.verdict == "unsafe" else c.alpha_safe)

    def step(self, view: View) -> Decision:
        c, voc, t = self.config, self.vocabulary, view.step
        state: SafeCoDeState = view.state or self.start(view)
        z_real = view.logits[0].float()  # [V]
        common: dict[str, Any] = dict(notes={"verdict": state.verdict})
        if view.logits.shape[0] > 1:  # the noised row is still decoding beside the real one
            z_noised = view.logits[1].float()  # [V]
            delta = torch.log_softmax(z_real, -1) - torch.log_softmax(z_noised, -1)  # [V] log p(real) − log p(noised)
            common = dict(per_token={"policy.contrastive.delta": delta},
                          notes={"movers": self._movers(z_real, z_noised, delta), "verdict": state.verdict})
            if t >= c.steps - 1 and not c.delta_after_steps:
                common["keep_rows"] = (0,)  # after this step only the real row decodes (as the official code)
        R = voc.refusal_ids.to(z_real.device)

        if voc.length_cap and state.verdict == "unsafe" and t >= len(state.forced) + voc.length_cap and voc.eos is not None:
            return Decision(logits=z_real, action="forced", forced_token=voc.eos, state=state, **common)  # official length cap
        if state.verdict == "safe" and c.safe_early_stop and t >= 2 and state.stopped_at is None and natural_prefix(view.text):
            state = replace(state, stopped_at=t)  # official: "natural language prefix detected, continuing with normal generation"
            common["notes"] = {**common["notes"], "early_stop": True}
        if t >= c.steps or state.stopped_at is not None:
            if view.logits.shape[0] > 1 and not c.delta_after_steps:
                common["keep_rows"] = (0,)  # the noised row is no longer needed
            return Decision(logits=z_real, action="kept", state=state, **common)  # ordinary decoding

        z_cd = z_real - state.alpha * z_noised  # [V] contrastive logits
        p_cd = torch.softmax(z_cd, -1)
        raw_mass = float(torch.softmax(z_real, -1)[R].sum()) if len(R) else 0.0  # only the modulated steps report it
        scores = {"policy.refusal_mass.raw": raw_mass, "policy.refusal_mass.cd": float(p_cd[R].sum()) if len(R) else 0.0}

        if state.verdict == "unsafe":
            if t == 0:
                forced, phrases = self._pick_phrase(p_cd, voc.phrases)
                state = replace(state, forced=tuple(forced))
                common["notes"] = {**common["notes"], "phrases": phrases}
            if t < len(state.forced):
                return Decision(logits=z_cd, action="forced", forced_token=state.forced[t], scores=scores, state=state, **common)
            if state.forced:  # the refusal prefix is in place: ordinary decoding continues it
                return Decision(logits=z_real, action="kept", scores=scores, state=state, **common)
            p_mod = p_cd.clone()
            p_mod[R] *= 1.0 + c.lambda_boost  # no phrase fits: boost R instead
            action = "boosted"
        else:
            p_mod = p_cd.clone()
            p_mod[R] *= 1.0 - 0.5 * c.lambda_supp  # suppress refusals
            action = "suppressed"
        p_mod = p_mod / p_mod.sum()
        scores["policy.refusal_mass.policy"] = float(p_mod[R].sum()) if len(R) else 0.0
        return Decision(logits=torch.log(p_mod.clamp_min(1e-30)), action=action, scores=scores, state=state, **common)

    def _pick_phrase(self, p_cd: torch.Tensor, phrases: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[list[int], list]:
        """Official phrase choice: rank by Σ p_cd over the phrase's tokens, prefer a strong refusal."""
        c = self.config
        ranked = sorted(((p, float(p_cd[list(ids)].sum()), ids) for p, ids in phrases), key=lambda x: -x[1])[: c.phrase_top_k]
        ranked = [r for r in ranked if r[1] > c.min_phrase_score]
        strong = [r for r in ranked if any(w in r[0].lower() for w in STRONG_REFUSAL_WORDS)]
        best = (strong or ranked or [None])[0]
        note = [{"phrase": p, "score": round(s, 6), "chosen": best is not None and p == best[0]} for p, s, _ in ranked[:5]]
        return (list(best[2][: c.steps]) if best else []), note

    def _movers(self, z_real: torch.Tensor, z_noised: torch.Tensor, delta: torch.Tensor) -> list[dict[str, float]]:
        """Plausible tokens (top-50 under either image) whose log-probability moved most."""
        pool = torch.unique(torch.cat([torch.topk(z_real, 50).indices, torch.topk(z_noised, 50).indices]))
        order = torch.argsort(delta[pool].abs(), descending=True)[: self.config.movers]
        return [{"token_id": int(pool[i]), "delta": round(float(delta[pool[i]]), 4)} for i in order]
