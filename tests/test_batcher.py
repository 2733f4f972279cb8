"""The batcher driven by a fake runner: what it merges, when, in which order, and what it refuses."""

import asyncio

import numpy as np
import pytest

from server.batching.batcher import Batcher, BatchPolicy, QueuePolicy
from server.batching.collate import Padding
from server.core.errors import InvalidArgument, Unavailable
from server.core.stats import Timing


class FakeRunner:
    """Doubles `x`; records every batch; can be held closed to let a queue build up."""

    def __init__(self, fail_on=None):
        self.batches: list[dict[str, np.ndarray]] = []
        self.into: list[dict | None] = []  # each batch's arrays to write its outputs into
        self.tasks: list[asyncio.Task] = []  # the task each batch ran on
        self.running = self.most_running = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def __call__(self, feeds, names, into=None):
        self.batches.append(feeds)
        self.into.append(into)
        self.tasks.append(asyncio.current_task())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        if self.fail_on is not None and (feeds["x"] == self.fail_on).any():
            raise RuntimeError("poisoned row")
        outputs = {"y": feeds["x"] * 2, "total": feeds["x"].reshape(len(feeds["x"]), -1).sum(axis=1)}
        return {name: outputs[name] for name in names}, Timing(infer_ns=1)

    @property
    def sizes(self) -> list[int]:
        return [len(batch["x"]) for batch in self.batches]


def rows(value, n=1, width=2):
    return {"x": np.full((n, width), value, dtype=np.int64)}


async def started(runner, **policy) -> Batcher:
    padding = policy.pop("padding", None)
    instances = policy.pop("instances", 1)
    batcher = Batcher("m", runner, BatchPolicy(**policy), padding, instances)
    batcher.start()
    return batcher


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_full_batch_goes_at_once():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=60_000_000)
        results = await asyncio.gather(*(batcher.submit(rows(i), ["y"]) for i in range(4)))
        assert runner.sizes == [4]
        assert [int(r[0]["y"][0, 0]) for r in results] == [0, 2, 4, 6]
        await batcher.stop()

    run(scenario())


def test_a_batch_the_next_request_cannot_join_goes_at_once():
    """As Triton's dynamic batcher: when the next request would pass max_batch_size, waiting out the
    delay would not let the batch grow."""
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=8, max_queue_delay_us=60_000_000)
        requests = [rows(0, n=3), rows(1, n=3), rows(2, n=3), rows(3, n=5)]
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(r, ["y"]) for r in requests)), 5)
        assert runner.sizes == [6, 8]  # 3 + 3 (3 more would pass 8), then 3 + 5 (full)
        await batcher.stop()

    run(scenario())


def test_partial_batch_goes_after_the_delay():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=8, max_queue_delay_us=20_000)
        results = await asyncio.gather(*(batcher.submit(rows(i, n=2), ["y"]) for i in range(3)))
        assert runner.sizes == [6]
        assert [r[0]["y"].shape for r in results] == [(2, 2)] * 3
        assert all(r[1].queue_ns > 0 for r in results)
        await batcher.stop()

    run(scenario())


def test_preferred_size_goes_without_waiting():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(
            runner, max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_us=60_000_000
        )
        await asyncio.gather(*(batcher.submit(rows(i), ["y"]) for i in range(2)))
        assert runner.sizes == [2]
        await batcher.stop()

    run(scenario())


def test_without_dynamic_batching_each_request_runs_alone():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner)
        await asyncio.gather(*(batcher.submit(rows(i, n=3), ["y"]) for i in range(3)))
        assert runner.sizes == [3, 3, 3]
        await batcher.stop()

    run(scenario())


@pytest.mark.parametrize("instances", [1, 2])
def test_without_dynamic_batching_a_request_that_finds_an_instance_free_runs_on_its_callers_task(instances):
    """No hand-over to the loop's task and back; a request that arrives while every instance runs waits
    for one, so executions never outnumber the instances."""
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner, instances=instances)
        callers = [asyncio.create_task(batcher.submit(rows(i), ["y"])) for i in range(instances + 1)]
        await settle()
        assert runner.tasks == callers[:instances]  # the last one waits in the queue
        runner.gate.set()
        results = await asyncio.gather(*callers)
        assert [int(result["y"][0, 0]) for result, _ in results] == [2 * i for i in range(instances + 1)]
        assert runner.tasks[-1] is not callers[-1] and runner.most_running == instances
        await batcher.stop()

    run(scenario())


def test_a_stop_lets_an_execution_on_its_callers_task_finish():
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner)
        running = asyncio.create_task(batcher.submit(rows(3), ["y"]))
        await settle()
        stopping = asyncio.create_task(batcher.stop())
        await settle()
        assert not stopping.done()
        runner.gate.set()
        await stopping
        assert int((await running)[0]["y"][0, 0]) == 6

    run(scenario())


def test_only_a_request_that_runs_alone_at_its_own_size_has_its_outputs_written_into_its_arrays():
    """A batch's outputs are one array cut into the requests' rows, so arrays given by one request
    (`into`, its shared memory regions) are used only where it runs alone, not padded to a batch size."""
    async def scenario(**policy):
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=8, max_queue_delay_us=20_000, **policy)
        targets = [{"y": np.empty((1, 2), np.int64)} for _ in range(3)]
        await batcher.submit(rows(1), ["y"], into=targets[0])
        await asyncio.gather(*(batcher.submit(rows(i), ["y"], into=t) for i, t in enumerate(targets[1:])))
        await batcher.stop()
        return runner, targets

    runner, targets = run(scenario())
    assert runner.sizes == [1, 2] and runner.into == [targets[0], None]
    runner, _ = run(scenario(padded_batch_sizes=(4, 8)))
    assert runner.sizes == [4, 4] and runner.into == [None, None]


def test_higher_priority_runs_first():
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        policy = dict(max_batch_size=1, queues=(QueuePolicy(), QueuePolicy()), default_priority=2)
        batcher = await started(runner, **policy)
        first = asyncio.create_task(batcher.submit(rows(0), ["y"]))
        await settle()  # 0 is running, the instance is busy
        low = asyncio.create_task(batcher.submit(rows(1), ["y"], priority=2))
        default = asyncio.create_task(batcher.submit(rows(2), ["y"]))
        high = asyncio.create_task(batcher.submit(rows(3), ["y"], priority=1))
        await settle()
        runner.gate.set()
        await asyncio.gather(first, low, default, high)
        assert [int(b["x"][0, 0]) for b in runner.batches] == [0, 3, 1, 2]
        with pytest.raises(InvalidArgument, match="priority 3"):
            await batcher.submit(rows(0), ["y"], priority=3)
        await batcher.stop()

    run(scenario())


def test_full_queue_is_refused_at_once():
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner, max_batch_size=1, queues=(QueuePolicy(max_queue_size=2),))
        running = asyncio.create_task(batcher.submit(rows(0), ["y"]))
        await settle()
        waiting = [asyncio.create_task(batcher.submit(rows(i), ["y"])) for i in (1, 2)]
        await settle()
        with pytest.raises(Unavailable, match="^Exceeds maximum queue size"):  # Triton's words
            await batcher.submit(rows(3), ["y"])
        runner.gate.set()
        await asyncio.gather(running, *waiting)
        await batcher.stop()

    run(scenario())


def test_timeout_rejects_or_delays():
    async def scenario(delay: bool):
        runner = FakeRunner()
        runner.gate.clear()
        queue = QueuePolicy(default_timeout_us=1_000, delay_on_timeout=delay, allow_timeout_override=True)
        batcher = await started(runner, max_batch_size=1, queues=(queue,))
        running = asyncio.create_task(batcher.submit(rows(0), ["y"]))
        await settle()
        expiring = asyncio.create_task(batcher.submit(rows(1), ["y"]))
        patient = asyncio.create_task(batcher.submit(rows(2), ["y"], timeout_us=60_000_000))
        await asyncio.sleep(0.05)
        runner.gate.set()
        await asyncio.gather(running, patient)
        if delay:
            assert int((await expiring)[0]["y"][0, 0]) == 2
        else:
            with pytest.raises(Unavailable, match="^Request timeout expired"):  # Triton's words
                await expiring
        await batcher.stop()

    run(scenario(delay=False))
    run(scenario(delay=True))


def test_preserve_ordering_across_instances():
    async def scenario():
        slow_gate = asyncio.Event()

        async def runner(feeds, names, into=None):
            if feeds["x"][0, 0] == 0:
                await slow_gate.wait()
            return {"y": feeds["x"]}, Timing()

        batcher = await started(runner, max_batch_size=1, preserve_ordering=True, instances=2)
        done = []

        async def call(value):
            await batcher.submit(rows(value), ["y"])
            done.append(value)

        tasks = [asyncio.create_task(call(v)) for v in (0, 1)]
        await asyncio.sleep(0.02)
        assert done == []  # 1 finished first but waits for 0
        slow_gate.set()
        await asyncio.gather(*tasks)
        assert done == [0, 1]
        await batcher.stop()

    run(scenario())


PADDING = Padding(values={"x": -1}, outputs=frozenset({"y"}), buckets=(4, 8, 16))


def test_padding_merges_lengths_of_one_bucket_and_cuts_outputs_back():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=20_000, padding=PADDING)
        short, long_ = rows(3, width=5), rows(4, width=7)
        (out_short, _), (out_long, _) = await asyncio.gather(
            batcher.submit(short, ["y", "total"]), batcher.submit(long_, ["y", "total"])
        )
        assert runner.sizes == [2]
        assert runner.batches[0]["x"].tolist() == [[3] * 5 + [-1, -1], [4] * 7]
        np.testing.assert_array_equal(out_short["y"], short["x"] * 2)
        np.testing.assert_array_equal(out_long["y"], long_["x"] * 2)
        assert out_short["total"].tolist() == [15 - 2]  # outputs not on the padded axis are kept whole
        await batcher.stop()

    run(scenario())


def test_lengths_of_different_buckets_do_not_share_a_batch():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=20_000, padding=PADDING)
        short, long_ = rows(1, width=3), rows(1, width=12)
        await asyncio.gather(batcher.submit(short, ["y"]), batcher.submit(long_, ["y"]))
        assert sorted(batch["x"].shape[1] for batch in runner.batches) == [3, 12]
        await batcher.stop()

    run(scenario())


def test_a_token_budget_caps_rows_by_their_bucket_length():
    """Budget 32 tokens: rows of bucket 8 go 4 to an execution, rows of bucket 16 two, and one row longer
    than the budget still runs (alone)."""

    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner, max_batch_size=8, max_queue_delay_us=20_000, padding=PADDING,
                                max_execution_tokens=32)
        blocker = asyncio.ensure_future(batcher.submit(rows(9, width=1), ["y"]))
        await settle()
        short = [batcher.submit(rows(1, width=6), ["y"]) for _ in range(6)]
        long_ = [batcher.submit(rows(2, width=12), ["y"]) for _ in range(3)]
        huge = batcher.submit(rows(3, width=40), ["y"])
        waiting = asyncio.gather(*short, *long_, huge)
        await settle()
        runner.gate.set()
        await asyncio.gather(blocker, waiting)
        sizes = sorted((batch["x"].shape[1], len(batch["x"])) for batch in runner.batches[1:])
        assert sizes == [(6, 2), (6, 4), (12, 1), (12, 2), (40, 1)]
        await batcher.stop()

    run(scenario())


def test_padded_inputs_must_agree_on_length():
    async def scenario():
        padding = Padding(values={"x": 0, "mask": 0}, outputs=frozenset())
        batcher = await started(FakeRunner(), max_batch_size=4, padding=padding)
        feeds = {"x": np.zeros((1, 3), dtype=np.int64), "mask": np.zeros((1, 4), dtype=np.int64)}
        with pytest.raises(InvalidArgument, match="same length"):
            await batcher.submit(feeds, ["y"])
        await batcher.stop()

    run(scenario())


def test_a_failing_row_fails_only_its_request():
    async def scenario():
        runner = FakeRunner(fail_on=7)
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=20_000)
        results = await asyncio.gather(
            *(batcher.submit(rows(v), ["y"]) for v in (1, 7, 3)), return_exceptions=True
        )
        assert isinstance(results[1], RuntimeError)
        assert int(results[0][0]["y"][0, 0]) == 2 and int(results[2][0]["y"][0, 0]) == 6
        assert int((await batcher.submit(rows(5), ["y"]))[0]["y"][0, 0]) == 10  # still serving
        await batcher.stop()

    run(scenario())


def test_stop_fails_waiting_requests_and_refuses_new_ones():
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner, max_batch_size=1)
        running = asyncio.create_task(batcher.submit(rows(0), ["y"]))
        await settle()
        waiting = [asyncio.create_task(batcher.submit(rows(i), ["y"])) for i in (1, 2)]
        await settle()
        stopping = asyncio.create_task(batcher.stop())
        for task in waiting:
            with pytest.raises(Unavailable, match="unloaded"):
                await task
        runner.gate.set()
        await stopping
        assert int((await running)[0]["y"][0, 0]) == 0  # the running batch finished
        with pytest.raises(Unavailable, match="unloading"):
            await batcher.submit(rows(3), ["y"])

    run(scenario())


def test_a_draining_stop_runs_the_waiting_requests_at_once_and_refuses_new_ones():
    async def scenario():
        runner = FakeRunner()
        runner.gate.clear()
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=60_000_000)
        running = asyncio.create_task(batcher.submit(rows(0, n=4), ["y"]))
        await settle()
        waiting = [asyncio.create_task(batcher.submit(rows(i), ["y"])) for i in (1, 2)]
        await settle()
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await settle()
        with pytest.raises(Unavailable, match="unloading"):
            await batcher.submit(rows(3), ["y"])
        runner.gate.set()  # the two waiting requests go as one batch, without their 60 s delay
        await stopping
        assert [int(result["y"][0, 0]) for result, _ in await asyncio.gather(running, *waiting)] == [0, 2, 4]
        assert runner.sizes == [4, 2]

    run(scenario())


@pytest.mark.parametrize("lone, sizes", [(False, [2]), (True, [1, 1])])
def test_a_lone_request_waits_for_the_delay_unless_told_to_go_at_once(lone, sizes):
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=4, max_queue_delay_us=300_000,
                                dispatch_lone_requests=lone)
        first = asyncio.create_task(batcher.submit(rows(1), ["y"]))
        await asyncio.sleep(0.05)  # well inside the delay
        second = asyncio.create_task(batcher.submit(rows(2), ["y"]))
        await asyncio.gather(first, second)
        await batcher.stop()
        return runner.sizes

    assert run(scenario()) == sizes


def test_padded_batch_sizes_pad_each_execution_with_its_last_row_and_cut_the_outputs_back():
    async def scenario():
        runner = FakeRunner()
        batcher = await started(runner, max_batch_size=8, max_queue_delay_us=20_000,
                                padded_batch_sizes=(4, 8))
        three = [batcher.submit(rows(value), ["y"]) for value in (1, 2, 3)]
        answers = await asyncio.gather(*three)
        five = await batcher.submit(rows(7, n=5), ["y", "total"])
        await batcher.stop()
        return runner, answers, five

    runner, answers, five = run(scenario())
    assert runner.sizes == [4, 8]
    assert runner.batches[0]["x"][:, 0].tolist() == [1, 2, 3, 3]
    assert [answer[0]["y"].tolist() for answer in answers] == [[[2, 2]], [[4, 4]], [[6, 6]]]
    assert five[0]["y"].shape == (5, 2) and five[0]["total"].tolist() == [14] * 5


@pytest.mark.parametrize("value, on_gpu, sizes", [
    ("", False, ()), ("", True, (2, 4, 8)), ("auto", True, (2, 4, 8)), ("true", False, (2, 4, 8)),
    ("false", True, ()),
])
def test_pad_batch_pads_to_preferred_sizes_and_the_largest_by_default_on_a_gpu(value, on_gpu, sizes):
    from server.protocol import ModelConfig

    config = ModelConfig(max_batch_size=8)
    config.dynamic_batching.preferred_batch_size.extend([4, 2, 16])
    if value:
        config.parameters["pad_batch"].string_value = value
    assert BatchPolicy.from_config(config, on_gpu=on_gpu).padded_batch_sizes == sizes


@pytest.mark.parametrize("parameters, budget", [
    ({}, 0),
    ({"max_batch_tokens": "8192"}, 8192),
    ({"max_batch_tokens": "8192", "max_execution_tokens": "1024"}, 1024),
])
def test_the_execution_budget_is_max_execution_tokens_else_max_batch_tokens(parameters, budget):
    from server.protocol import ModelConfig

    config = ModelConfig(max_batch_size=8)
    config.dynamic_batching.SetInParent()
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    assert BatchPolicy.from_config(config).max_execution_tokens == budget
