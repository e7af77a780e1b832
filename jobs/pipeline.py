"""Ray job entrypoint for `cwpo pipeline`: `ray job submit --working-dir . -- python jobs/pipeline.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("pipeline")
