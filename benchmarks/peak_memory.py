"""Peak training memory in a fresh process, shared by the benchmark scripts.

A script measures a configuration by starting itself again with the
arguments that name it (`start_probe`); that process builds the model, runs
`training_memory` and prints its result (`print_result`), which the first
process reads back (`finish_probe`). One process per configuration, so that
no other model, compilation cache or allocator pool counts.
"""

import gc
import json
import os
import subprocess
import sys

import keras


def read_status(field):
    """A `/proc/self/status` field in MiB (Linux), else `None`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def trim_heap():
    """Returns freed heap memory to the OS, so RSS counts live memory only."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def training_memory(build_model, steps):
    """Peak training memory of the model `build_model()` makes, in this process.

    Run it in a fresh process (`start_probe`): the resident set size's
    high-water mark (`VmHWM`, reset after two warm-up steps so that
    compilation does not count) during `steps` training steps, minus the
    resident size before the model was built (after imports and
    `malloc_trim`). It counts weights, gradients, optimizer state and
    activations however the backend allocates them. On jax also XLA's own
    buffer assignment for the compiled train step (exact, on any device),
    on TensorFlow the peak of its CPU allocator during the steps (every
    tensor, nothing else), on torch with a CUDA device the peak of torch's
    CUDA allocator during the steps (every tensor on the GPU; the resident
    set then counts host memory only), on torch without one the peak of its
    CPU tensors during as many steps again (`TorchCpuTensors`).

    Args:
        build_model: returns `(model, inputs, target)`, the model compiled.
        steps: the training steps measured.

    Returns:
        A dict of the figures, in MiB.
    """
    keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) + 1)  # Initialize the backend.
    trim_heap()
    baseline = read_status("VmRSS")
    cuda = _torch_cuda()
    cuda_baseline = cuda.memory_allocated() if cuda else None
    model, inputs, target = build_model()
    for _ in range(2):
        model.train_on_batch(inputs, target)
    peak, steady, reset = _measured_steps(model, inputs, target, steps, cuda)
    result = {
        "method": "rss_high_water" if reset else "rss_high_water_including_compilation",
        "peak_mb": None if peak is None else round(peak - baseline, 1),
        "steady_mb": None if steady is None else round(steady - baseline, 1),
    }
    if keras.backend.backend() == "jax":
        result["xla"] = xla_train_step_analysis(model, inputs, target)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # TensorFlow's own CPU allocator: every tensor the steps held, and
        # nothing else (no executables, no allocator pools).
        stats = tf.config.experimental.get_memory_info("CPU:0")
        result["tensorflow_allocator"] = {
            "peak_mb": round(stats["peak"] / 2**20, 1),
            "current_mb": round(stats["current"] / 2**20, 1),
        }
    if cuda:
        cuda.synchronize()
        result["torch_cuda_allocator"] = {
            "peak_mb": round((cuda.max_memory_allocated() - cuda_baseline) / 2**20, 1),
            "current_mb": round((cuda.memory_allocated() - cuda_baseline) / 2**20, 1),
        }
    if keras.backend.backend() == "torch" and not cuda:
        # The same number of steps again, after the resident set's: the
        # profiler's records would count in it.
        with TorchCpuTensors() as cpu_tensors:
            for _ in range(steps):
                model.train_on_batch(inputs, target)
        result["torch_cpu_tensors"] = cpu_tensors.figures()
    return result


def _measured_steps(model, inputs, target, steps, cuda):
    """Runs the measured steps (`cuda`: `_torch_cuda()`'s); returns
    `(VmHWM, VmRSS before, VmHWM reset?)`."""
    trim_heap()
    steady = read_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Resets VmHWM, so compilation's peak does not count.
        reset = True
    except OSError:
        reset = False
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("CPU:0")
    if cuda:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
    for _ in range(steps):
        model.train_on_batch(inputs, target)
    return read_status("VmHWM"), steady, reset


class TorchCpuTensors:
    """The peak bytes of CPU tensors torch holds while in this context.

    torch keeps peak statistics for CUDA memory only. This counts the
    tensors alive on entry (every Python-reachable tensor's storage, once)
    and replays from there what torch's profiler records of its CPU
    allocator inside the context (`profile_memory=True`, every allocation
    and release). Unlike the resident set it counts tensors only: not what
    the C allocator keeps of freed blocks, not libraries' own buffers. That
    is what XLA's buffer assignment and TensorFlow's allocator peak count.

    The profiler does not report the release of memory allocated before it
    started: a tensor alive on entry and released inside counts as held to
    the end. In a training loop in its steady state nothing held on entry is
    released, and `after_mb` equals `before_mb`; if it is larger, releases
    were missed and the peak may be too high.

    Example:

    >>> import torch
    >>> with TorchCpuTensors() as tensors:
    ...     passing = torch.empty(2**21, dtype=torch.uint8)
    ...     del passing
    ...     kept = torch.empty(2**20, dtype=torch.uint8)
    >>> figures = tensors.figures()
    >>> [round(figures[k] - figures["before_mb"], 1) for k in ("peak_mb", "after_mb")]
    [2.0, 1.0]
    """

    def __enter__(self):
        import torch

        self._before = _cpu_tensor_bytes()
        self._profile = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        self._profile.__enter__()
        return self

    def __exit__(self, *exception):
        self._profile.__exit__(*exception)

    def figures(self):
        """MiB held at the peak, on entry and on exit."""
        changes = sorted(
            (event.start_ns(), event.nbytes())
            for event in self._profile.profiler.kineto_results.events()
            if event.name() == "[memory]" and event.device_type().name == "CPU"
        )
        held = peak = self._before
        for _, size in changes:
            held += size
            peak = max(peak, held)
        mib = 2**20
        return {
            "peak_mb": round(peak / mib, 1),
            "before_mb": round(self._before / mib, 1),
            "after_mb": round(held / mib, 1),
        }


def _cpu_tensor_bytes():
    """Bytes of the storages of every CPU tensor Python can reach, each once."""
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        # `type(...)`, not `isinstance`: the latter asks deprecated module
        # attributes for their class, which warns.
        if not issubclass(type(obj), torch.Tensor):
            continue
        if obj.device.type == "cpu" and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _torch_cuda():
    """`torch.cuda` where Keras' torch backend computes on a CUDA device, else None."""
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def xla_train_step_analysis(model, inputs, target):
    """XLA's buffer sizes and cost estimate for the jitted `train_step`."""
    import jax

    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    compiled = (
        jax.jit(model.train_step, donate_argnums=0)
        .lower(state, (inputs, target, None))
        .compile()
    )
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mib = 2**20
    return {
        "peak_mb": round(
            (
                memory.argument_size_in_bytes
                + memory.temp_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
            )
            / mib,
            1,
        ),
        "arguments_mb": round(memory.argument_size_in_bytes / mib, 1),
        "temporaries_mb": round(memory.temp_size_in_bytes / mib, 1),
        "gflops": round(cost.get("flops", 0.0) / 1e9, 2),
        "gbytes_accessed": round(cost.get("bytes accessed", 0.0) / 1e9, 2),
    }


def start_probe(script, arguments):
    """Starts `script` with `arguments` in a fresh Python process."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(script), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def print_result(result):
    """What a probe process prints for `finish_probe` to read."""
    print("MEMORY " + json.dumps(result), flush=True)


def finish_probe(name, process, log):
    """Waits for a probe subprocess and returns its result."""
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("MEMORY ")]
    if process.returncode or not lines:
        raise RuntimeError(
            f"Memory probe '{name}' failed ({process.returncode}):\n{stderr[-3000:]}"
        )
    result = json.loads(lines[-1][len("MEMORY "):])
    log(f"  memory {name}: {result}")
    return result


def memory_figure(memory, name):
    """The figure memory ratios use, and its method: the peak of the tensors
    the backend held, as it counts them — XLA's buffers on jax, TensorFlow's
    allocator peak on TensorFlow, torch's CUDA allocator peak on torch with a
    GPU, the tensors of torch's CPU allocator without one — else (results
    written before torch's was recorded) the RSS high-water mark.

    Args:
        memory: a dict from configuration to `training_memory`'s result.
        name: the configuration.

    Returns:
        `(MiB, method)`, or `(None, None)` if `name` was not probed.
    """
    probe = memory.get(name)
    if probe is None:
        return None, None
    if "xla" in probe:
        return probe["xla"]["peak_mb"], "xla_buffer_assignment"
    if "tensorflow_allocator" in probe:
        return probe["tensorflow_allocator"]["peak_mb"], "tensorflow_allocator_peak"
    if "torch_cuda_allocator" in probe:
        return probe["torch_cuda_allocator"]["peak_mb"], "torch_cuda_allocator_peak"
    if "torch_cpu_tensors" in probe:
        return probe["torch_cpu_tensors"]["peak_mb"], "torch_cpu_tensors_peak"
    return probe["peak_mb"], probe["method"]


def memory_ratio(memory, numerator, denominator):
    """The memory ratio of two probed configurations, by `memory_figure`.

    Returns:
        `{"value", "method", "rss_ratio"}` (`rss_ratio`: the same ratio of
        the resident sets, where both were read), or None if either
        configuration was not probed.
    """
    a, method = memory_figure(memory, numerator)
    b, _ = memory_figure(memory, denominator)
    if a is None or b is None:
        return None
    row = {"value": a / b, "method": method}
    rss_a, rss_b = memory[numerator]["peak_mb"], memory[denominator]["peak_mb"]
    if rss_a and rss_b:
        row["rss_ratio"] = rss_a / rss_b
    return row
