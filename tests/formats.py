"""Small files in each source's real format (the real datasets cannot be downloaded here)."""
from __future__ import annotations

import json

HH_ROWS = [
    {  # multi-turn: everything up to the final assistant turn is the shared prompt
        "chosen": "\n\nHuman: What are some good houseplants?\n\nAssistant: Pothos and snake plants are hardy."
                  "\n\nHuman: Which one needs less light?\n\nAssistant: Snake plants tolerate low light well.",
        "rejected": "\n\nHuman: What are some good houseplants?\n\nAssistant: Pothos and snake plants are hardy."
                    "\n\nHuman: Which one needs less light?\n\nAssistant: I don't know, figure it out.",
    },
    {
        "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for nine minutes, then cool it in ice water.",
        "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in the microwave.",
    },
    {
        "chosen": "\n\nHuman: Say something nice.\n\nAssistant: You are doing great!",
        "rejected": "\n\nHuman: Say something nice.\n\nAssistant: No.",
    },
]
HH_PROMPT_0 = ("\n\nHuman: What are some good houseplants?\n\nAssistant: Pothos and snake plants are hardy."
               "\n\nHuman: Which one needs less light?\n\nAssistant:")

TLDR_ROWS = [
    {"prompt": "SUBREDDIT: r/cooking\n\nTITLE: Burnt rice\n\nPOST: I always burn rice at the bottom of the pot.\n\nTL;DR:",
     "chosen": " I burn rice; how do I stop?", "rejected": " rice"},
    {"prompt": "SUBREDDIT: r/running\n\nTITLE: Knee pain\n\nPOST: My knee hurts after 5k runs.\n\nTL;DR:",
     "chosen": " Knee hurts after 5k runs, advice?", "rejected": " I like running a lot and also cats"},
]

UFB_ROWS = [
    {"prompt": "Write a haiku about rain.", "prompt_id": "abc",
     "chosen": [{"content": "Write a haiku about rain.", "role": "user"},
                {"content": "Soft rain on the roof / whispers to the sleeping town / puddles hold the sky", "role": "assistant"}],
     "rejected": [{"content": "Write a haiku about rain.", "role": "user"},
                  {"content": "Rain is wet.", "role": "assistant"}],
     "score_chosen": 8.0, "score_rejected": 3.0},
    {"prompt": "What is 2+2?", "prompt_id": "def",
     "chosen": [{"content": "What is 2+2?", "role": "user"}, {"content": "4", "role": "assistant"}],
     "rejected": [{"content": "What is 2+2?", "role": "user"}, {"content": "5", "role": "assistant"}],
     "score_chosen": 10.0, "score_rejected": 1.0},
]

# stanfordnlp/SHP rows (all of its columns; two comment pairs on one post): labels 1 = A preferred
_SHP_POST = "What should I bake for a first-time sourdough attempt? I have a starter going but no idea where to begin."
SHP_ROWS = [
    {"post_id": "himc90", "domain": "askbaking_train", "upvote_ratio": 0.99, "history": _SHP_POST,
     "c_root_id_A": "fusqwbo", "c_root_id_B": "fusr3k4", "created_at_utc_A": 1593535113, "created_at_utc_B": 1593535250,
     "score_A": 44, "score_B": 7, "human_ref_A": "Start with a simple country loaf; it teaches you the feel of the dough.",
     "human_ref_B": "Pancakes.", "labels": 1, "seconds_difference": 137.0, "score_ratio": 6.29},
    {"post_id": "himc90", "domain": "askbaking_train", "upvote_ratio": 0.99, "history": _SHP_POST,
     "c_root_id_A": "fut1a2b", "c_root_id_B": "fusqwbo", "created_at_utc_A": 1593540000, "created_at_utc_B": 1593535113,
     "score_A": 3, "score_B": 44, "human_ref_A": "idk", "labels": 0,
     "human_ref_B": "Start with a simple country loaf; it teaches you the feel of the dough.",
     "seconds_difference": 4887.0, "score_ratio": 14.67},
    {"post_id": "k2x9aa", "domain": "askacademia_train", "upvote_ratio": 0.95,
     "history": "Is it normal to feel lost in the first year of a PhD?", "c_root_id_A": "gdl0a1", "c_root_id_B": "gdl0b2",
     "created_at_utc_A": 1606000000, "created_at_utc_B": 1606000100, "score_A": 120, "score_B": 30,
     "human_ref_A": "Completely normal. Talk to your advisor and your cohort.", "human_ref_B": "No, quit now.",
     "labels": 1, "seconds_difference": 100.0, "score_ratio": 4.0},
]


def write_jsonl(path, rows, extra_lines: list[bytes] = ()):
    with open(path, "wb") as f:
        for r in rows:
            f.write(json.dumps(r).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return str(path)
