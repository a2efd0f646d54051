"""Pipeline stages: each ``run(params, ...)`` reads the files of earlier stages, writes its own."""
