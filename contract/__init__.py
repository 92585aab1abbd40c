"""The contract every other package shares: the Workspace API, problems, the training-config options and
the pod contract (paths, environment, exit codes, strengths).

It sits at the bottom of the layers and imports none of the project's other packages, nor torch,
kopf or kubernetes, so the controller, the trainer, the inference server and the tools all read it
(``make test`` checks the layering with import-linter).
"""
