"""A simulated Unitree Go2 whose decisions come from a language model through edgespec.

world.py (MuJoCo arena + Go2 physics), policy.py (the ONNX walking policy), controller.py
(actions -> velocity commands), observation.py (state -> text), actions.py (strict JSON actions),
decision.py (the model through LocalEngine or EdgeClient), reuse.py (KV caches kept across
decisions), episode.py (the loop), video.py; the `edgespec robot` command is edgespec/cli/robot.py.
Submodules are imported on use: mujoco and onnxruntime are the
optional `robot` extra.
"""
