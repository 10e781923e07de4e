"""Target engines: what runs the target model for the verifier (see ``interface.py``)."""
