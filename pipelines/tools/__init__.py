"""Developer tools: generated stage deps, README blocks, timed `dvc repro`."""
