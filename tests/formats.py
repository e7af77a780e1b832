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


def write_jsonl(path, rows, extra_lines: list[bytes] = ()):
    with open(path, "wb") as f:
        for r in rows:
            f.write(json.dumps(r).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return str(path)
