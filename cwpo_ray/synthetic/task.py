"""The embedded synthetic preference task: no downloads, learnable by a tiny LM on a CPU in a minute.

A prompt asks for a few words about a topic, of a given length, mentioning one word and avoiding
another (HH-RLHF's turn format, so the same code paths run on it)::

    \\n\\nHuman: tell me about cats in 6 words mention purr avoid fur\\n\\nAssistant:

A response is a short sequence of words. The programmatic **gold reward** r*(x, y) is additive and
visible (see :meth:`SyntheticTask.gold_reward`): on-topic words and polite words help; rude words,
off-topic words, repeats, the avoided word and missing the length hurt; mentioning the asked word
helps. Candidate responses are sampled from a latent-quality mixture so pairs span easy and hard
comparisons, and "human" labels are Bradley–Terry samples on r* with a noise temperature::

    P(a ≻ b) = σ((r*(a) − r*(b)) / label_temperature)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cwpo_ray.config import StrictModel

TOPICS: dict[str, list[str]] = {
    "cats": ["whiskers", "purr", "kitten", "paws", "meow", "fur"],
    "dogs": ["puppy", "bark", "fetch", "leash", "tail", "bone"],
    "ocean": ["waves", "salt", "coral", "tide", "shark", "shore"],
    "space": ["stars", "orbit", "rocket", "planet", "comet", "moon"],
    "food": ["bread", "soup", "spice", "cheese", "apple", "bake"],
    "music": ["melody", "drum", "guitar", "rhythm", "song", "chord"],
    "forest": ["trees", "moss", "pine", "owl", "leaves", "trail"],
    "winter": ["snow", "frost", "scarf", "ice", "sled", "cold"],
}
POLITE = ["please", "thanks", "glad", "kindly", "happy", "sure"]
RUDE = ["stupid", "ugh", "dumb", "hate", "idiot", "boring"]
FILLER = ["the", "a", "and", "is", "so", "very", "really", "it", "this", "with"]

W_ON_TOPIC, W_POLITE, W_RUDE, W_OFF_TOPIC = 1.0, 0.5, -1.5, -0.5
W_REPEAT, W_LENGTH, W_MENTION, W_AVOID = -0.5, -0.4, 1.5, -2.0
LENGTHS = list(range(4, 11))


class SyntheticTaskConfig(StrictModel):
    num_pairs: int = 4000
    seed: int = 0
    label_temperature: float = 1.0  # BT noise of the "human" labels; 0 = noiseless
    def model_post_init(self, _):  # noqa: D401 - validation with a field name
        if self.num_pairs <= 0:
            raise ValueError("num_pairs must be > 0")
        if self.label_temperature < 0:
            raise ValueError("label_temperature must be >= 0")


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
    """r*(x, y): the visible ground truth of the synthetic task."""
    words = response.split()
    on = set(TOPICS[prompt.topic])
    off = {w for t, ws in TOPICS.items() if t != prompt.topic for w in ws}
    seen: set[str] = set()
    r = 0.0
    for w in words:
        if w in seen:
            r += W_REPEAT
            continue
        seen.add(w)
        if w in on:
            r += W_ON_TOPIC
        elif w in off:
            r += W_OFF_TOPIC
        elif w in POLITE:
            r += W_POLITE
        elif w in RUDE:
            r += W_RUDE
    r += W_LENGTH * abs(len(words) - prompt.length)
    r += W_MENTION * (prompt.mention in seen) + W_AVOID * (prompt.avoid in seen)
    return r


class SyntheticGoldReward:
    """The synthetic task's gold reward behind the same interface as an HF reward model."""

    name = "synthetic-gold"

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([gold_reward(parse_prompt(p), r) for p, r in zip(prompts, responses)], dtype=np.float64)


class SyntheticTask:
    def __init__(self, cfg: SyntheticTaskConfig):
        self.cfg = cfg

    def sample_prompt(self, rng: np.random.Generator) -> Prompt:
        topic = list(TOPICS)[rng.integers(len(TOPICS))]
        mention, avoid = rng.choice(TOPICS[topic], size=2, replace=False)
        return Prompt(topic, int(rng.choice(LENGTHS)), str(mention), str(avoid))

    def sample_response(self, prompt: Prompt, rng: np.random.Generator) -> str:
        """A response of latent quality q ~ U(0, 1): better q -> more on-topic/polite words."""
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
        t = self.cfg.label_temperature
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
            r_a, r_b = gold_reward(p, a), gold_reward(p, b)
            out.append(
                {"prompt": p.text, "response_a": a, "response_b": b,
                 "human_label": self.human_label(r_a, r_b, rng), "gold_a": r_a, "gold_b": r_b}
            )
        return out

    def corpus(self) -> list[str]:
        """Text covering the task's whole vocabulary, for training its tokenizer."""
        words = sorted({w for ws in TOPICS.values() for w in ws} | set(POLITE) | set(RUDE) | set(FILLER))
        lines = [Prompt(t, n, TOPICS[t][0], TOPICS[t][1]).text for t in TOPICS for n in LENGTHS]
        lines += [" " + " ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
        lines += [r["prompt"] + r["response_a"] for r in SyntheticTask(SyntheticTaskConfig(num_pairs=300, seed=self.cfg.seed + 1)).rows()]
        return lines


def expected_label_noise(rows: list[dict], temperature: float) -> float:
    """E[P(label disagrees with gold ordering)] = mean σ(−|Δr*| / T) over pairs with Δr* ≠ 0."""
    d = np.array([abs(r["gold_a"] - r["gold_b"]) for r in rows])
    d = d[d > 0]
    if temperature == 0:
        return 0.0
    return float(np.mean(1.0 / (1.0 + np.exp(d / temperature))))
