"""Ray job entrypoint for `cwpo sft`: `ray job submit --working-dir . -- python jobs/sft.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("sft")
