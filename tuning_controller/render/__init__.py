"""Pure renderers: a Workspace (plus what the controller read) in, the Kubernetes objects to apply out.

No Kubernetes client and no kopf here, so every object the controller would create can be printed by
``kaito-tune render`` and compared with expected objects in unit tests.
"""
