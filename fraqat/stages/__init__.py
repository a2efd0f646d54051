"""Pipeline stages: each ``run(params, ...)`` reads files from the previous stage and writes its own."""
