"""kopf handlers: thin shells that read, call the pure core (render, status, nodes), apply and record.

Importing a module registers its handlers with kopf; ``tuning_controller.operator`` imports them.
"""
