"""The embedded synthetic preference task: no downloads, learnable by a tiny LM on a CPU in minutes.

A prompt asks for a few words about a topic, of a given length, mentioning one word and avoiding
another (HH-RLHF's turn format, so the same code paths run on it)::

    \\n\\nHuman: tell me about cats in 6 words mention purr avoid fur\\n\\nAssistant:

A response is a short sequence of words.

**Gold reward** r*(x, y) (:func:`gold_reward`) is additive and visible. Every *distinct* word of the
response adds its own weight for the prompt's topic (:func:`word_weight`): on-topic words +0.5…+1.5,
polite words +0.25…+0.75, rude words −1…−2, words of another topic −0.37…−0.7, filler 0 (each word's
weight is fixed once by a seeded draw, so almost no two different responses tie). A repeated word
costs 0.5, each word of length error 0.4, mentioning the asked word earns 1.5, the avoided word costs 2.
The gold reward is pluggable: :class:`SyntheticGoldReward` is one implementation of
:class:`cwpo_ray.evaluate.gold.GoldReward`.

**Responses** come from one generative *sampler* (:meth:`SyntheticTask.sample_response`): each
response draws a latent quality q ~ U(0, 1), and better q means more on-topic and polite words,
fewer rude/off-topic words, the asked word more often, the avoided word less often and the right
length more often. The same sampler writes the text the tiny base LMs are pretrained on
(:meth:`SyntheticTask.pretraining_texts`, prompts and responses, never rewards or labels) and the
pool's candidate pairs. That is the choice that makes preferences transfer: in the paper the pool's
responses come from models like the student, so DPO moves probability mass among responses the
student actually produces. Here the pretrained student is a model of the sampler. Measured (seed 0,
docs/results/sandbox.md, before the tokenizer fix of 2026-12-05): the SFT student's samples match the pool's responses in mean gold reward
(1.18 vs 1.14), length (6.6 vs 7.0 words), rate of the avoided word (0.38 vs 0.40) and repeats (0.81
vs 0.81), but write the requested word half as often (0.35 vs 0.67: the tiny LM copies from the
prompt poorly). Sampling the pool from the pretrained student itself (on-policy pairs) removes that
gap but did not raise Human-DPO's validation GRA (0.60 vs 0.64), so the sampler stays. What did
matter was the backbone: 500 pretraining steps instead of 125 raised it from 0.61 to 0.64. The
earlier design trained students from random weights on ~1k chosen responses, and DPO then moved mass
to responses neither model had seen (runaway length).

**Human labels** are Bradley–Terry draws on r* with a temperature T::

    P(a ≻ b) = σ((r*(a) − r*(b)) / T)

By default T is not set by hand but solved for so that the labels agree with the gold ordering on
``human_agreement`` (0.70) of the pool's pairs in expectation — real preference data is that noisy
(the paper's weak annotators reach only 60–68% against held-out human labels). Noise is larger on
close pairs, as with real annotators. ``synthesize`` reports the measured agreement.

Bradley–Terry labels are exactly the model DPO assumes, with the gold reward as the utility: DPO on them
is a correctly specified estimator of r*, and a weak annotator trained on 30% of the same labels can only
approximate what the other 70% already say. Real labels are also wrong in ways the margin does not explain
(attention lapses, annotators who disagree with the consensus the gold reward model learned), which is
where a smooth annotator's confident labels can be cleaner than the human ones. ``label_noise: flip``
models that: each label is the gold ordering, flipped with probability 1 − ``human_agreement`` whatever the
margin (a gold tie is a coin flip), so clear pairs are mislabeled as often as close ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cwpo_ray.config import StrictModel

TOPICS: dict[str, list[str]] = {
    "cats": ["whiskers", "purr", "kitten", "paws", "meow", "fur", "claws", "nap"],
    "dogs": ["puppy", "bark", "fetch", "leash", "tail", "bone", "walk", "loyal"],
    "ocean": ["waves", "salt", "coral", "tide", "shark", "shore", "reef", "whale"],
    "space": ["stars", "orbit", "rocket", "planet", "comet", "moon", "galaxy", "astronaut"],
    "food": ["bread", "soup", "spice", "cheese", "apple", "bake", "recipe", "dinner"],
    "music": ["melody", "drum", "guitar", "rhythm", "song", "chord", "piano", "concert"],
    "forest": ["trees", "moss", "pine", "owl", "leaves", "trail", "fern", "deer"],
    "winter": ["snow", "frost", "scarf", "ice", "sled", "cold", "blizzard", "mittens"],
    "garden": ["flowers", "seeds", "soil", "roses", "weeds", "bloom", "shovel", "tulips"],
    "city": ["traffic", "subway", "skyline", "streets", "taxi", "crowds", "bridge", "lights"],
}
POLITE = ["please", "thanks", "glad", "kindly", "happy", "sure"]
RUDE = ["stupid", "ugh", "dumb", "hate", "idiot", "boring"]
FILLER = ["the", "a", "and", "is", "so", "very", "really", "it", "this", "with"]
LENGTHS = list(range(4, 11))

W_REPEAT, W_LENGTH, W_MENTION, W_AVOID = -0.5, -0.4, 1.5, -2.0
GOLD_SEED = 20260  # fixes every word's weight once; part of the task's definition


def _word_weights() -> tuple[dict[str, float], dict[str, float]]:
    """(topic word → on-topic weight, other word → weight), drawn once from GOLD_SEED."""
    rng = np.random.default_rng(GOLD_SEED)
    topic_w = {w: round(float(rng.uniform(0.5, 1.5)), 3) for t in TOPICS for w in TOPICS[t]}
    other = {w: round(float(rng.uniform(0.25, 0.75)), 3) for w in POLITE}
    other.update({w: round(float(rng.uniform(-2.0, -1.0)), 3) for w in RUDE})
    other.update({w: 0.0 for w in FILLER})
    return topic_w, other


_TOPIC_W, _OTHER_W = _word_weights()
_TOPIC_OF = {w: t for t, ws in TOPICS.items() for w in ws}


def word_weight(topic: str, word: str) -> float:
    """The gold weight of one distinct word in a response to a prompt about ``topic``."""
    t = _TOPIC_OF.get(word)
    if t == topic:
        return _TOPIC_W[word]
    if t is not None:  # a word of another topic: off-topic, −0.37…−0.7
        return round(-0.2 - 0.333 * _TOPIC_W[word], 3)
    return _OTHER_W.get(word, 0.0)


def _check_agreement_or_temperature(cfg) -> None:
    if (cfg.human_agreement is None) == (cfg.label_temperature is None):
        raise ValueError("set exactly one of human_agreement (target share of labels that agree with the gold "
                         "ordering; T is solved for) and label_temperature (T by hand); set the other to null")


class SyntheticTaskConfig(StrictModel):
    num_pairs: int = Field(default=4000, gt=0)
    seed: int = 0
    # How the simulated human labels are noisy (see the module docstring):
    # - bradley_terry: P(a > b) = σ(Δr*/T); close pairs are mislabeled often, clear ones rarely;
    # - flip: the gold ordering, flipped with probability 1 − human_agreement whatever the margin.
    label_noise: Literal["bradley_terry", "flip"] = "bradley_terry"
    # The expected share of labels agreeing with the gold ordering (0.5 < a < 1): bradley_terry solves T for
    # it, flip keeps each gold ordering with this probability ...
    human_agreement: float | None = Field(default=0.70, gt=0.5, lt=1.0)
    # ... or bradley_terry's T set by hand (0 = noiseless labels); then human_agreement must be null.
    label_temperature: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _one_noise_setting(self):
        _check_agreement_or_temperature(self)
        if self.label_noise == "flip" and self.label_temperature is not None:
            raise ValueError("label_temperature is a Bradley–Terry temperature; label_noise=flip takes "
                             "human_agreement (the share of labels kept) and needs label_temperature null")
        return self


@dataclass(frozen=True)
class Prompt:
    topic: str
    length: int
    mention: str
    avoid: str

    @property
    def text(self) -> str:
        return f"\n\nHuman: tell me about {self.topic} in {self.length} words mention {self.mention} avoid {self.avoid}\n\nAssistant:"


def parse_prompt(text: str) -> Prompt:
    body = text.split("Human:", 1)[1].split("\n\nAssistant:", 1)[0].split()
    # tell me about {topic} in {n} words mention {w} avoid {w}
    return Prompt(topic=body[3], length=int(body[5]), mention=body[8], avoid=body[10])


def gold_reward(prompt: Prompt, response: str) -> float:
    """r*(x, y): the visible ground truth of the synthetic task (see the module docstring)."""
    words = response.split()
    seen: set[str] = set()
    r = 0.0
    for w in words:
        if w in seen:
            r += W_REPEAT
            continue
        seen.add(w)
        r += word_weight(prompt.topic, w)
    r += W_LENGTH * abs(len(words) - prompt.length)
    r += W_MENTION * (prompt.mention in seen) + W_AVOID * (prompt.avoid in seen)
    return round(r, 6)


class SyntheticGoldReward:
    """The synthetic task's gold reward behind the same interface as an HF reward model."""

    name = "synthetic-gold"

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([gold_reward(parse_prompt(p), r) for p, r in zip(prompts, responses)], dtype=np.float64)


def agreement_for_temperature(gold_diffs: np.ndarray, temperature: float) -> float:
    """E[share of BT labels that agree with the gold ordering] = mean σ(|Δr*| / T) over pairs with Δr* ≠ 0."""
    d = np.abs(np.asarray(gold_diffs, dtype=np.float64))
    d = d[d > 0]
    if d.size == 0:
        return float("nan")
    if temperature == 0:
        return 1.0
    return float(np.mean(1.0 / (1.0 + np.exp(-d / temperature))))


def temperature_for_agreement(gold_diffs: np.ndarray, agreement: float) -> float:
    """The BT temperature T whose expected agreement with the gold ordering is ``agreement``.

    Agreement falls monotonically from 1 (T → 0) to ½ (T → ∞); solved by bisection on log T.
    """
    if not 0.5 < agreement < 1.0:
        raise ValueError(f"agreement must be in (0.5, 1), got {agreement}")
    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if agreement_for_temperature(gold_diffs, math.exp(mid)) > agreement:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def expected_label_noise(rows: list[dict], temperature: float) -> float:
    """E[P(label disagrees with gold ordering)] over pairs with Δr* ≠ 0."""
    return 1.0 - agreement_for_temperature(np.array([r["gold_a"] - r["gold_b"] for r in rows]), temperature)


class SyntheticTask:
    def __init__(self, cfg: SyntheticTaskConfig):
        self.cfg = cfg
        self.temperature: float | None = cfg.label_temperature  # solved for in rows() when None

    def sample_prompt(self, rng: np.random.Generator) -> Prompt:
        topic = list(TOPICS)[rng.integers(len(TOPICS))]
        mention, avoid = rng.choice(TOPICS[topic], size=2, replace=False)
        return Prompt(topic, int(rng.choice(LENGTHS)), str(mention), str(avoid))

    def sample_response(self, prompt: Prompt, rng: np.random.Generator) -> str:
        """One response from the task's sampler, of latent quality q ~ U(0, 1) (see the module docstring)."""
        q = rng.random()
        n = max(1, prompt.length + int(rng.integers(-3, 4) * (rng.random() > q)))
        off = [w for t, ws in TOPICS.items() if t != prompt.topic for w in ws]
        cats = [TOPICS[prompt.topic], POLITE, RUDE, off, FILLER]
        probs = np.array([0.15 + 0.45 * q, 0.05 + 0.15 * q, 0.25 * (1 - q), 0.15 * (1 - q), 0.2])
        probs /= probs.sum()
        words = []
        if rng.random() < 0.3 + 0.5 * q:
            words.append(prompt.mention)
        while len(words) < n:
            cat = cats[rng.choice(len(cats), p=probs)]
            words.append(str(cat[rng.integers(len(cat))]))
        rng.shuffle(words)
        if rng.random() < 0.3 * (1 - q):
            words[rng.integers(len(words))] = prompt.avoid
        return " " + " ".join(words)

    def human_label(self, r_a: float, r_b: float, rng: np.random.Generator) -> str:
        if self.cfg.label_noise == "flip":  # one draw per pair: a gold tie is a coin, else the gold order kept or flipped
            u = rng.random()
            if r_a == r_b:
                return "a" if u < 0.5 else "b"
            return "a" if (r_a > r_b) == (u < self.cfg.human_agreement) else "b"
        t = self.temperature
        if t is None:
            raise RuntimeError("the label temperature is solved for in rows(); call rows() first")
        if t == 0:
            return "a" if r_a >= r_b else "b"
        p_a = 1.0 / (1.0 + math.exp(-(r_a - r_b) / t))
        return "a" if rng.random() < p_a else "b"

    def rows(self) -> list[dict]:
        """The task's pairs in the canonical (pre-id) form, with the gold rewards for diagnostics."""
        rng = np.random.default_rng(self.cfg.seed)
        out = []
        for _ in range(self.cfg.num_pairs):
            p = self.sample_prompt(rng)
            a = self.sample_response(p, rng)
            b = self.sample_response(p, rng)
            while b == a:
                b = self.sample_response(p, rng)
            out.append({"prompt": p.text, "response_a": a, "response_b": b,
                        "gold_a": gold_reward(p, a), "gold_b": gold_reward(p, b)})
        if self.cfg.human_agreement is not None and self.cfg.label_noise == "bradley_terry":
            diffs = np.array([r["gold_a"] - r["gold_b"] for r in out])
            self.temperature = temperature_for_agreement(diffs, self.cfg.human_agreement)
        label_rng = np.random.default_rng([self.cfg.seed, 1])  # labels drawn after T is known
        for r in out:
            r["human_label"] = self.human_label(r["gold_a"], r["gold_b"], label_rng)
        return out

    def pretraining_texts(self, num: int, seed: int) -> list[str]:
        """Unlabeled text of the task's domain: prompt + one sampled response (no rewards, no labels)."""
        rng = np.random.default_rng([seed, 2])
        out = []
        for _ in range(num):
            p = self.sample_prompt(rng)
            out.append(p.text + self.sample_response(p, rng))
        return out

    def corpus(self) -> list[str]:
        """Text covering the task's whole vocabulary, for training its tokenizer."""
        words = sorted({w for ws in TOPICS.values() for w in ws} | set(POLITE) | set(RUDE) | set(FILLER))
        lines = [Prompt(t, n, TOPICS[t][0], TOPICS[t][1]).text for t in TOPICS for n in LENGTHS]
        lines += [" " + " ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
        lines += self.pretraining_texts(300, self.cfg.seed + 1)
        return lines


def label_statistics(rows: list[dict]) -> dict:
    """Measured human–gold agreement of the pool (pairs with a gold tie excluded)."""
    d = np.array([r["gold_a"] - r["gold_b"] for r in rows])
    lab = np.array([r["human_label"] for r in rows])
    nz = d != 0
    agree = ((d > 0) & (lab == "a")) | ((d < 0) & (lab == "b"))
    return {"pairs": int(d.size), "gold_ties": int((~nz).sum()),
            "human_gold_agreement": float(agree[nz].mean()) if nz.any() else float("nan")}
