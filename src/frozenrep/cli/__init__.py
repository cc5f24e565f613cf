"""Every command a user runs, each a console script (pyproject.toml, [project.scripts]):

* ``frozenrep-checkpoint``: fetch a registry checkpoint, or pin the hash of its first download;
* ``frozenrep-predict-video``: every frozen head of one backbone on a video, with one backbone pass;
* ``frozenrep-mlflow-ui``: the MLflow UI over the project's tracking store, on 127.0.0.1.

The workflow's own jobs run workflow_scripts/, which Snakemake calls.
"""
