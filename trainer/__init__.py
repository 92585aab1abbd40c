"""What runs inside the tuning pod; `python -m trainer.qlora` is the entry point."""
