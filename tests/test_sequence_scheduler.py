"""The sequence scheduler alone: batch layout per strategy, controls and state, on a recording model."""

import asyncio

import numpy as np
import pytest
from google.protobuf import text_format

from server.core.stats import SequenceStats, Timing
from server.protocol import ModelConfig
from server.sequences.scheduler import SequenceControl, SequenceScheduler
from server.sequences.settings import sequence_settings

CONFIG = """
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  %s
  control_input [ { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
                  { name: "ID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] } ]
  state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ 1 ]
            initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "ten" } } ]
}
"""


class RecordingModel:
    """S_OUT = S_IN + x; Y = S_OUT; keeps every batch's feeds. Each run waits for `gate` to open."""

    def __init__(self):
        self.batches: list[dict[str, np.ndarray]] = []
        self.gate = asyncio.Event()

    async def __call__(self, feeds, names):
        await self.gate.wait()
        self.batches.append(feeds)
        state = feeds["S_IN"] + feeds["x"]
        return {"S_OUT": state, "Y": state}, Timing()


def scheduler(tmp_path, strategy: str, model: RecordingModel) -> SequenceScheduler:
    (tmp_path / "initial_state").mkdir(exist_ok=True)
    np.array([10.0], np.float32).tofile(tmp_path / "initial_state" / "ten")
    config = text_format.Parse(CONFIG % strategy, ModelConfig())
    settings = sequence_settings(config, tmp_path, instances=2)
    return SequenceScheduler("m", model, settings, 2, SequenceStats())


async def send(s: SequenceScheduler, sequence_id, value, start=False, end=False):
    feeds = {"x": np.array([[value]], np.float32)}
    outputs, _ = await s.submit(feeds, ["Y"], SequenceControl(sequence_id, start, end))
    return float(outputs["Y"][0, 0])


def test_direct_keeps_each_sequence_in_its_slot_and_marks_empty_rows_not_ready(tmp_path):
    async def scenario():
        model = RecordingModel()
        s = scheduler(tmp_path, "direct { }", model)
        s.start()
        model.gate.set()
        # slots 0, 1, 2 of instance 0; then sequence 11 (slot 1) ends and 30 takes its slot
        assert [await send(s, i, 1.0, start=True) for i in (10, 11, 12)] == [11.0] * 3
        await send(s, 11, 1.0, end=True)
        await send(s, 30, 5.0, start=True)
        model.gate.clear()
        pending = [asyncio.ensure_future(send(s, i, 1.0)) for i in (12, 30)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*pending)
        await s.stop()
        return model.batches[-1], results

    batch, results = asyncio.run(scenario())
    assert results == [12.0, 16.0]
    # sequence 30 sits in row 1 (the slot 11 left), 12 in row 2; row 0 (sequence 10) has no request
    assert batch["ID"].ravel().tolist() == [0, 30, 12]
    assert batch["READY"].ravel().tolist() == [0, 1, 1]
    assert batch["S_IN"].ravel().tolist() == [0.0, 15.0, 11.0]


def test_oldest_batches_the_oldest_sequences_first_up_to_the_batch_size(tmp_path):
    async def scenario():
        model = RecordingModel()
        s = scheduler(tmp_path, "oldest { max_candidate_sequences: 8 }", model)
        s.start()
        model.gate.set()
        for i in range(6):
            await send(s, 100 + i, float(i), start=True)
        model.gate.clear()
        pending = [asyncio.ensure_future(send(s, 100 + i, 1.0)) for i in reversed(range(6))]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*pending)
        await s.stop()
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert results == [10.0 + i + 1.0 for i in reversed(range(6))]
    # the first batch went while the gate was shut, so it holds whichever came first; after it, the
    # oldest sequences (started first) go first, at most 4 at a time
    sizes = [len(batch["ID"]) for batch in batches[6:]]
    assert max(sizes) == 4 and sum(sizes) == 6
    fullest = next(batch for batch in batches[6:] if len(batch["ID"]) == 4)
    assert fullest["ID"].ravel().tolist() == sorted(fullest["ID"].ravel().tolist())


@pytest.mark.parametrize("text", [
    'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]',
    'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 1 ] } ] } ]',
    'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
])
def test_malformed_controls_are_config_errors(tmp_path, text):
    from server.protocol.model_config import ConfigError

    config = text_format.Parse(f"max_batch_size: 2 sequence_batching {{ {text} }}", ModelConfig())
    with pytest.raises(ConfigError, match="control input"):
        sequence_settings(config, tmp_path, instances=1)


def test_oldest_waits_out_its_delay_until_a_preferred_size_forms(tmp_path):
    async def scenario():
        model = RecordingModel()
        model.gate.set()
        config = "oldest { max_queue_delay_microseconds: 30000000 preferred_batch_size: 3 }"
        s = scheduler(tmp_path, config, model)
        s.start()
        # four STARTs together: every live sequence is in the batch (and it is full), so it goes at once
        await asyncio.gather(*(send(s, 200 + i, 0.0, start=True) for i in range(4)))
        first = [asyncio.ensure_future(send(s, 200 + i, 1.0)) for i in range(2)]
        await asyncio.sleep(0.05)
        waiting = [task.done() for task in first]
        third = asyncio.ensure_future(send(s, 202, 1.0))
        results = await asyncio.wait_for(asyncio.gather(*first, third), 5)
        await s.stop()
        return waiting, results, model.batches

    waiting, results, batches = asyncio.run(scenario())
    assert waiting == [False, False]  # 2 of 4 live sequences ready, 30 s of delay left
    assert results == [11.0, 11.0, 11.0]
    assert [len(batch["ID"]) for batch in batches] == [4, 3]
