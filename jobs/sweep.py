"""Ray job entrypoint for `cwpo sweep`: `ray job submit --working-dir . -- python jobs/sweep.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("sweep")
