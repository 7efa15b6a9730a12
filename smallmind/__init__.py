"""SmallMind: small quantized LLMs on the CPU behind an OpenAI-compatible API."""

import os

# Read by libgomp when it loads (with our first native module), so it is set here, first.
# OpenMP threads waiting for work (between forward steps; within a step they meet at the
# barriers of csrc/team.c, which spin briefly first) sleep instead of spinning: a spinning
# thread keeps its core from the thread it waits for whenever anything else wants the CPU
# (the event loop, another process), and then every step collapses (measured on 2 cores
# beside one busy process: 30 ms per decode step passive, 110-1000 ms spinning).
# OMP_WAIT_POLICY=active overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
