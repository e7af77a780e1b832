"""Ray job entrypoint for `cwpo prepare`: `ray job submit --working-dir . -- python jobs/prepare.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("prepare")
