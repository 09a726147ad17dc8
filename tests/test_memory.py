"""bpttcli.memory: the peak-memory meter `bptt compare` and the benchmark's memory section share."""

from __future__ import annotations

import torch

from bpttcli.memory import CudaPeak, SavedActivations, memory_measure, memory_meter


def test_saved_activations_meter_counts_activations_not_parameters():
    weight, data = torch.nn.Parameter(torch.randn(1000)), torch.randn(1000)
    with SavedActivations() as meter:
        (weight * data).exp().sum().backward()  # saves data (4000 B) and the exp's output (4000 B), not weight
    assert meter.peak == 8000 and meter.current == 0 and weight.grad is not None


def test_views_of_one_buffer_count_once_and_a_slice_as_itself():
    weight, data, big = torch.nn.Parameter(torch.randn(100)), torch.randn(100), torch.randn(1000)
    with SavedActivations() as meter:
        h = (weight * data).exp()  # saves data and h: 400 B each
        (h.view(10, 10) * h.view(10, 10).t()).sum().backward()  # two more views of h: still 400 B
    assert meter.peak == 800 and meter.current == 0
    with SavedActivations() as meter:
        (weight * big[:100]).sum().backward()  # a slice of a 4000 B buffer: 400 B
    assert meter.peak == 400


def test_the_peak_is_the_most_held_at_once_not_the_sum():
    weight = torch.nn.Parameter(torch.randn(1000))
    with SavedActivations() as meter:
        for _ in range(3):  # each step's activations are released by its backward before the next
            (weight * torch.randn(1000)).exp().sum().backward()
    assert meter.peak == 8000 and meter.current == 0


def test_the_meter_follows_the_device():
    assert isinstance(memory_meter(torch.device("cpu")), SavedActivations)
    assert isinstance(memory_meter(torch.device("cuda")), CudaPeak)  # nothing touches CUDA before the block
    assert "autograd" in memory_measure(torch.device("cpu")) and "CUDA" in memory_measure(torch.device("cuda"))
