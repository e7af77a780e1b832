"""Ray job entrypoint for `cwpo evaluate`: `ray job submit --working-dir . -- python jobs/evaluate.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("evaluate")
