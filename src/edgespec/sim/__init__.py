"""Traces and the simulator: the round core replayed on a discrete-event clock, with what each
model would say taken from a recorded trace and what each step costs from a hardware profile."""
