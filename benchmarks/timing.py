"""Interleaved timing and machine facts, shared by the benchmark scripts.

These machines are noisy, so a benchmark compares things measured in the
same run, interleaved: a round calls every job in a rotating order and
again in the reverse order, and keeps the mean of its calls, so that a
drift in the machine's load within the round affects every job alike. A
ratio is the median over rounds of the ratio of the two times measured in
the same round.
"""

import os
import platform
import statistics
import time


def interleaved_rounds(jobs, rounds, log=print):
    """Times every job in each of `rounds` interleaved rounds.

    Args:
        jobs: dict key -> `(function, calls)`: a round calls `function()`
            `calls` times on each of its two passes.
        rounds: how many rounds.
        log: called with a line of progress after each round.

    Returns:
        `(wall-clock samples, CPU-time samples)`: dicts key -> one mean time
        per round, in seconds.

    Example:

    >>> samples, cpu = interleaved_rounds({"noop": (lambda: None, 2)}, 3, log=id)
    >>> len(samples["noop"]), len(cpu["noop"])
    (3, 3)
    """
    keys = list(jobs)
    samples = {key: [] for key in keys}
    cpu_samples = {key: [] for key in keys}
    for round_index in range(rounds):
        shift = round_index % len(keys)
        order = keys[shift:] + keys[:shift]
        calls = {key: [] for key in keys}
        cpu_calls = {key: [] for key in keys}
        for key in order + order[::-1]:
            function, repeats = jobs[key]
            for _ in range(repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                function()
                calls[key].append(time.perf_counter() - start)
                cpu_calls[key].append(time.process_time() - cpu_start)
        for key in keys:
            samples[key].append(statistics.fmean(calls[key]))
            cpu_samples[key].append(statistics.fmean(cpu_calls[key]))
        log(f"  round {round_index + 1}/{rounds}")
    return samples, cpu_samples


def summarize(samples, cpu_samples):
    """Median, minimum and the samples of one job (seconds)."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "cpu_median_s": statistics.median(cpu_samples),
        "samples_s": [round(s, 5) for s in samples],
        "cpu_samples_s": [round(s, 5) for s in cpu_samples],
    }


def ratio(samples, cpu_samples, numerator, denominator):
    """The ratio of two jobs' times, per round; `None` if either is missing.

    Returns:
        dict: `value` (median over rounds of the per-round ratio), its
        `min` and `max` over rounds (the spread), the ratios of the medians
        and of the minimums, and `cpu_value` (the same for CPU time).
    """
    a, b = samples.get(numerator), samples.get(denominator)
    if not a or not b:
        return None
    per_round = [x / y for x, y in zip(a, b)]
    cpu_a, cpu_b = cpu_samples[numerator], cpu_samples[denominator]
    return {
        "value": statistics.median(per_round),
        "min": min(per_round),
        "max": max(per_round),
        "ratio_of_medians": statistics.median(a) / statistics.median(b),
        "ratio_of_minimums": min(a) / min(b),
        "cpu_value": statistics.median(x / y for x, y in zip(cpu_a, cpu_b)),
    }


def machine():
    """The CPU, its core count, the memory and the accelerator of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo") as f:
            memory_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "accelerator": accelerator(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def accelerator():
    """The name of the accelerator Keras' backend computes on; None on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return None
