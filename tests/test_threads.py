"""The thread runtime of a forward step (csrc/team.h): the threads are forked once per step
and meet at barriers between its operations, instead of one fork/join per matmul; a barrier
spins briefly, then sleeps.  The results never depend on the thread count (also
test_batch_invariance.py); here: the step forks once, and threads that outnumber the cores
(so that barrier waits end in sleeps and some threads get no attention scratch) give the
logits of one thread bit for bit."""

import os

import numpy as np
import pytest

from smallmind import kernels
from smallmind.engine.model import Model
from tests.conftest import reference_path

MODEL = "tiny-llama-q4_k_m.gguf"
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 450, 11203, 1016]


@pytest.fixture
def threads():
    """Sets the thread count for the body, then restores it."""
    before = kernels.get_threads()
    yield kernels.set_threads
    kernels.set_threads(before)


def run_prompt(model: Model, n_decode: int) -> list[np.ndarray]:
    """Logits of the prompt's last token (one prefill call) and of n_decode single-token steps."""
    n = len(PROMPT)
    logits = [
        model.forward(
            np.asarray(PROMPT, np.int32),
            np.zeros(n, np.int32),
            np.arange(n, dtype=np.int32),
            np.asarray([n - 1], np.int32),
        )
    ]
    for i in range(n_decode):
        token = int(np.argmax(logits[-1][0]))
        logits.append(
            model.forward(
                np.asarray([token], np.int32),
                np.zeros(1, np.int32),
                np.asarray([n + i], np.int32),
                np.asarray([0], np.int32),
            )
        )
    return logits


def test_a_decode_step_forks_the_threads_once(threads):
    model = Model.load(reference_path("tiny", MODEL), n_ctx=64, n_slots=1, max_batch_tokens=32)
    threads(2)
    run_prompt(model, 0)
    before = kernels.thread_counts()
    run_prompt(model, 1)  # a prefill and a decode step
    after = kernels.thread_counts()
    assert after["forks"] - before["forks"] == 2
    # per layer and step at least: q/k/v, attention, output projection, gate/up, down
    assert after["barriers"] - before["barriers"] >= 2 * 5 * model.config.n_layers


def test_more_threads_than_cores_give_the_logits_of_one_thread(threads):
    model = Model.load(reference_path("tiny", MODEL), n_ctx=64, n_slots=1, max_batch_tokens=32)
    threads(1)
    expected = run_prompt(model, 8)
    threads(2 * len(os.sched_getaffinity(0)))
    before = kernels.thread_counts()
    got = run_prompt(model, 8)
    slept = kernels.thread_counts()["sleeps"] - before["sleeps"]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)
    assert slept > 0, "with twice as many threads as cores some barrier waits must end in a sleep"
