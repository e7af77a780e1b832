"""Ray job entrypoint for `cwpo annotate`: `ray job submit --working-dir . -- python jobs/annotate.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("annotate")
