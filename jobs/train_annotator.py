"""Ray job entrypoint for `cwpo train-annotator`: `ray job submit --working-dir . -- python jobs/train_annotator.py --config FILE [key=value ...]`."""
from _entry import run

if __name__ == "__main__":
    run("train-annotator")
