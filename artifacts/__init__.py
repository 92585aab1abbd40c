"""OCI artifacts (adapter push, pull, inspect) and data fetching: one home for the tools image and the CLI."""
