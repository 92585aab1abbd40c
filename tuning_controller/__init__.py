"""The operator: Workspace model and validation, CRD, pure renderers, kopf handlers, status, nodes, CLI."""
