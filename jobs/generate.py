"""Ray job entrypoint for `cwpo generate`: `ray job submit --working-dir . -- python jobs/generate.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("generate")
