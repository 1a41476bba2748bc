"""Every rule of the profile format is enforced, and the refusal names run, layer and rule."""

from __future__ import annotations

import pytest

from estimator.profile import ProfileError, parse_profile


def test_valid_profile_accepted_and_unknown_fields_kept(valid_profile):
    valid_profile["tool"] = "my-profiler"
    valid_profile["runs"][0]["layers"][0]["queue"] = 3
    p = parse_profile(valid_profile)
    assert p.model == "yolo_v2_tiny"
    assert p.model_extra["tool"] == "my-profiler"
    assert p.runs[0].layers[0].model_extra["queue"] == 3


def _refused(profile, *fragments):
    with pytest.raises(ProfileError) as info:
        parse_profile(profile, "p.json")
    msg = str(info.value)
    assert msg.startswith("p.json: ")
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_wrong_format(valid_profile):
    valid_profile["format"] = "deadline-dvfs.profile/2"
    _refused(valid_profile, "rule 'format'")


def test_frequencies_not_ascending(valid_profile):
    valid_profile["frequencies"]["gpu_hz"] = [450000000, 250000000, 625000000]
    _refused(valid_profile, "frequencies.gpu_hz strictly ascending")


def test_run_frequency_not_in_table(valid_profile):
    valid_profile["runs"][1]["cpu_khz"] = 1000000
    _refused(valid_profile, "run 1", "rule 'cpu_khz in frequencies.cpu_khz'")
    valid_profile["runs"][1]["cpu_khz"] = 652800
    valid_profile["runs"][0]["gpu_hz"] = 1
    _refused(valid_profile, "run 0", "rule 'gpu_hz in frequencies.gpu_hz'")


def test_layer_sequence_differs(valid_profile):
    valid_profile["runs"][1]["layers"][1]["name"] = "conv_X"
    _refused(valid_profile, "run 1, layer 1", "same layer sequence")


def test_cpu_end_before_start(valid_profile):
    valid_profile["runs"][0]["layers"][1]["cpu_end_ns"] = 20000
    _refused(valid_profile, "run 0, layer 1", "0 <= cpu_start_ns <= cpu_end_ns")


def test_host_order(valid_profile):
    valid_profile["runs"][0]["layers"][1]["cpu_start_ns"] = 10000
    _refused(valid_profile, "run 0, layer 1", "rule 'host order'")


def test_gpu_layer_without_gpu_times(valid_profile):
    del valid_profile["runs"][1]["layers"][0]["gpu_end_ns"]
    _refused(valid_profile, "run 1, layer 0", "gpu layer has gpu_start_ns and gpu_end_ns")


def test_kernel_before_its_launch(valid_profile):
    valid_profile["runs"][0]["layers"][1]["gpu_start_ns"] = 20000
    _refused(valid_profile, "run 0, layer 1", "a kernel starts after its launch began")


def test_device_order(valid_profile):
    valid_profile["runs"][0]["layers"][1]["gpu_start_ns"] = 200000
    _refused(valid_profile, "run 0, layer 1", "rule 'device order'")


def test_gpu_end_before_start(valid_profile):
    valid_profile["runs"][0]["layers"][1]["gpu_end_ns"] = 239000
    _refused(valid_profile, "run 0, layer 1", "gpu_start_ns <= gpu_end_ns")


def test_cpu_layer_before_drain(valid_profile):
    valid_profile["runs"][0]["layers"][2]["cpu_start_ns"] = 300000
    _refused(valid_profile, "run 0, layer 2", "cpu layer starts after the device drained")


def test_cpu_layer_with_gpu_times(valid_profile):
    valid_profile["runs"][0]["layers"][2]["gpu_start_ns"] = 500000
    valid_profile["runs"][0]["layers"][2]["gpu_end_ns"] = 600000
    _refused(valid_profile, "run 0, layer 2", "cpu layer has no gpu times")


def test_latency_shorter_than_layers(valid_profile):
    valid_profile["runs"][1]["latency_ns"] = 800000
    _refused(valid_profile, "run 1", "latency_ns covers every layer")


def test_mixed_context(valid_profile):
    valid_profile["runs"][1]["context_len"] = 128
    _refused(valid_profile, "run 1", "rule 'context_len'")


def test_bad_kind_and_missing_field_name_run_and_layer(valid_profile):
    valid_profile["runs"][1]["layers"][2]["kind"] = "npu"
    msg = _refused(valid_profile, "run 1, layer 2", "field 'kind'")
    assert "'gpu' or 'cpu'" in msg
    del valid_profile["runs"][0]["latency_ns"]
    _refused(valid_profile, "run 0", "field 'latency_ns'")


def test_no_runs(valid_profile):
    valid_profile["runs"] = []
    _refused(valid_profile, "field 'runs'")
