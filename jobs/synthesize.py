"""Ray job entrypoint for `cwpo synthesize`: `ray job submit --working-dir . -- python jobs/synthesize.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("synthesize")
