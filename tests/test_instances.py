"""Model instances: the busy session an execution runs on while another runs, executions short enough to
run on the event loop's thread, and the config parameters of both."""

import asyncio
import re
import threading

import numpy as np
import pytest

from exporters.demo import publish
from server.protocol.model_config import ConfigError
from server.repository.loader import load_model
from server.runtime.executor import InstancePool
from tests.models import relu_model


class Labelled:
    def __init__(self, label: str):
        self.label = label


def test_a_lone_execution_runs_on_the_wide_session_and_one_beside_another_on_the_busy_one():
    async def scenario():
        pool = InstancePool([Labelled("wide0"), Labelled("wide1")], "m",
                            busy_sessions=[Labelled("busy0"), Labelled("busy1")])
        held = threading.Event()

        def slow(session):
            held.wait(10)
            return session.label

        first = asyncio.create_task(pool.call(slow))
        await asyncio.sleep(0.05)
        beside = await pool.call(lambda session: session.label)
        held.set()
        running_first = await first
        alone = await pool.call(lambda session: session.label)
        pool.close()
        return running_first, beside, alone

    running_first, beside, alone = asyncio.run(scenario())
    assert running_first.startswith("wide") and alone.startswith("wide")
    assert beside.startswith("busy")
    assert beside[-1] != running_first[-1]  # the other instance: each instance runs one execution at a time


def test_without_busy_sessions_every_execution_runs_on_the_instance_session():
    async def scenario():
        pool = InstancePool([Labelled("a"), Labelled("b")], "m")
        held = threading.Event()
        first = asyncio.create_task(pool.call(lambda s: (held.wait(10), s.label)[1]))
        await asyncio.sleep(0.05)
        beside = await pool.call(lambda s: s.label)
        held.set()
        labels = {await first, beside}
        pool.close()
        return labels

    assert asyncio.run(scenario()) == {"a", "b"}


def _load(tmp_path, config: str):
    return load_model(publish(tmp_path, "relu", relu_model(), f'name: "relu"\n{config}'))


def test_busy_intra_op_thread_count_builds_a_one_thread_session_per_instance(tmp_path):
    (model,) = _load(tmp_path, f"instance_group {{ count: 2 }}\n{_busy('1')}")
    busy = model.pool.busy_sessions
    assert len(busy) == 2 and all(s not in model.pool.sessions for s in busy)
    assert {s.session.get_session_options().intra_op_num_threads for s in busy} == {1}
    model.pool.close()


def _busy(value: str) -> str:
    return f'parameters {{ key: "busy_intra_op_thread_count" value {{ string_value: "{value}" }} }}'


@pytest.mark.parametrize("instances, value, fragment", [
    (1, "1", "2 or more instances"),
    (2, "0", "integer >= 1, got '0'"),
    (2, "x", "integer >= 1, got 'x'"),
])
def test_busy_intra_op_thread_count_that_cannot_work_fails_the_load_naming_why(tmp_path, instances, value,
                                                                              fragment):
    with pytest.raises(ConfigError, match="busy_intra_op_thread_count") as raised:
        _load(tmp_path, f"instance_group {{ count: {instances} }}\n{_busy(value)}")
    assert fragment in str(raised.value)


def test_batching_and_cuda_parameters_that_cannot_work_fail_the_load_naming_why(tmp_path):
    for key, value, fragment in (("pad_batch", "sometimes", "pad_batch must be auto, true or false"),
                                 ("max_execution_tokens", "-1", "must be integers >= 0"),
                                 ("cudnn_conv_algo_search", "3", "0 (exhaustive), 1 (heuristic) or 2")):
        parameter = f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            _load(tmp_path / key, f"max_batch_size: 4\ndynamic_batching {{ }}\n{parameter}")


def test_gpu_instances_pass_cudnn_conv_algo_search_to_the_cuda_provider(monkeypatch):
    from server.runtime import session as sessions

    monkeypatch.setattr(sessions, "gpu_available", lambda: True)
    settings = sessions.SessionSettings(device="gpu", device_id=1, cudnn_conv_algo_search="HEURISTIC")
    cuda = {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}
    assert sessions.providers(settings) == [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    assert sessions.providers(sessions.SessionSettings()) == ["CPUExecutionProvider"]


class Timed:
    """A session whose run takes `seconds` and records the thread it ran on."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.threads = seconds, []

    def run(self, feeds, output_names, into=None):
        self.threads.append(threading.current_thread())
        if self.seconds:
            threading.Event().wait(self.seconds)
        return [feeds["x"]]


def _run(pool: InstancePool, rows: int = 1):
    return pool.run({"x": np.zeros((rows, 4), np.float32)}, ["x"])


def _on_loop(session: Timed) -> list[bool]:
    """Per run, whether it ran on this (the event loop's) thread: asyncio.run runs the loop here."""
    return [thread is threading.current_thread() for thread in session.threads]


def test_short_executions_run_on_the_event_loop_after_the_first_and_a_slow_one_sends_them_to_threads():
    async def scenario():
        session = Timed()
        pool = InstancePool([session], "m", inline_execution_us=50_000)
        for _ in range(3):
            await _run(pool)
        session.seconds = 0.08  # slower than the bound, measured on the loop
        await _run(pool)
        session.seconds = 0.0
        for _ in range(12):
            await _run(pool)
        pool.close()
        return _on_loop(session)

    on_loop = asyncio.run(scenario())
    assert on_loop[:4] == [False, True, True, True]  # the first is measured on a thread
    after_slow = on_loop[4:]
    # the slow one is remembered for a few executions (they go to threads), then forgotten
    assert after_slow[:3] == [False] * 3 and after_slow[-1]


def test_inputs_larger_than_any_short_execution_had_run_on_a_thread_once():
    async def scenario():
        session = Timed()
        pool = InstancePool([session], "m", inline_execution_us=50_000)
        for rows in (1, 1, 8, 8, 4):
            (output,) = await _run(pool, rows)
            assert output.shape == (rows, 4)
        pool.close()
        return _on_loop(session)

    assert asyncio.run(scenario()) == [False, True, False, True, True]


def test_with_every_instance_busy_a_short_execution_waits_for_one_on_a_thread_not_on_the_loop():
    async def scenario():
        session = Timed()
        pool = InstancePool([session], "m", inline_execution_us=50_000)
        await _run(pool)
        await _run(pool)  # now on the loop
        held = threading.Event()
        running = asyncio.create_task(pool.call(lambda s: held.wait(10)))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(_run(pool))
        await asyncio.sleep(0.05)
        blocked = not waiting.done()  # the loop went on: this sleep ended while the instance was held
        held.set()
        await running
        await waiting
        pool.close()
        return blocked, _on_loop(session)[-1]

    blocked, on_loop = asyncio.run(scenario())
    assert blocked and not on_loop


def test_inline_execution_us_0_keeps_every_execution_on_a_worker_thread():
    async def scenario():
        session = Timed()
        pool = InstancePool([session], "m", inline_execution_us=0)
        for _ in range(3):
            await _run(pool)
        pool.close()
        return _on_loop(session)

    assert asyncio.run(scenario()) == [False, False, False]


def test_a_loaded_model_runs_executions_shorter_than_its_inline_execution_us_on_the_event_loop(tmp_path):
    async def scenario():
        bound = 'parameters { key: "inline_execution_us" value { string_value: "1000000" } }'
        (model,) = _load(tmp_path, f"max_batch_size: 4\n{bound}")
        ran_on = []
        session = model.pool.sessions[0]
        original = session.run

        def recorded(feeds, names, into=None):
            ran_on.append(threading.current_thread())
            return original(feeds, names, into)

        session.run = recorded
        for _ in range(3):
            outputs, _ = await model.execute({"x": np.array([[-1.0, 2.0]], np.float32)}, ["y"])
        model.pool.close()
        return ran_on, outputs["y"]

    ran_on, y = asyncio.run(scenario())
    assert ran_on[-1] is threading.current_thread() and ran_on[0] is not threading.current_thread()
    assert y.tolist() == [[0.0, 2.0]]


def test_inline_execution_us_that_is_not_a_count_fails_the_load(tmp_path):
    parameter = 'parameters { key: "inline_execution_us" value { string_value: "-5" } }'
    expected = r"inline_execution_us must be an integer >= 0 \(0: never\), got '-5'"
    with pytest.raises(ConfigError, match=expected):
        _load(tmp_path, parameter)
