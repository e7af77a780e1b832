"""Ray job entrypoint for `cwpo align`: `ray job submit --working-dir . -- python jobs/align.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("align")
