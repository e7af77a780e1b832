"""Ray job entrypoint for `cwpo demo`: `ray job submit --working-dir . -- python jobs/demo.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("demo")
