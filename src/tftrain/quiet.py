"""Quiet by default: the lines TensorFlow's native code prints on every normal run (library banners, the cuInit
ERROR on machines without an NVIDIA GPU, 8 to 11 lines per TFLite conversion) stay off the terminal; `--verbose`
or TFTRAIN_VERBOSE=1 shows everything.

Why a filter and not only log levels (measured with TensorFlow 2.21): TF_CPP_MIN_LOG_LEVEL=1 hides the INFO lines
logged once TensorFlow's logging is set up, but not those its libraries log while loading ("before
absl::InitializeLog()", twice per process), not the cuInit ERROR (level 3 would hide every real error too) and
not the converter's plain prints. So file descriptor 2, where native code writes, goes through a small child
process that drops exactly the known lines below and passes every other line on; Python's own sys.stderr
(tracebacks, tftrain's errors and progress) writes straight to the real stderr. A child process rather than a
thread: if TensorFlow aborts, the child still drains the pipe, so a fatal line is never lost; and the processes
tftrain starts or becomes (the scoring server of `serve`, bench workers) inherit the filtered descriptor 2.
This file imports only the standard library: the child runs it as a script.

It is tftrain's one output filter: the same rules, plus Ray's own noise, apply to the lines Ray forwards from its
worker processes to the driver (`forwarded_lines`, used by cluster/launcher.py). tftrain's own messages are not
filtered: they go through the `tftrain` logger (log.py)."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import signal
import subprocess
import sys

# TensorFlow's own log lines, "I0000 00:00:1796205818.446761    4080 port.cc:153] message": (severity, source
# file, start of the message). All are measured on a normal train, export, predict or serve run.
_LOG_LINE = re.compile(rb"([IWEF])\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] (.*)")
_KNOWN_LOGGED = [
    ("I", "port.cc", "oneDNN custom operations are on."),
    ("I", "cpu_feature_guard.cc", "This TensorFlow binary is optimized to use available CPU instructions"),
    # the TFLite converter, each conversion
    ("W", "tf_tfl_flatbuffer_helpers.cc", "Ignored output_format."),
    ("W", "tf_tfl_flatbuffer_helpers.cc", "Ignored drop_control_dependency."),
    ("I", "reader.cc", "Reading SavedModel from: "),
    ("I", "reader.cc", "Reading meta graph with tags "),
    ("I", "reader.cc", "Reading SavedModel debug info (if present) from: "),
    ("I", "loader.cc", "Restoring SavedModel bundle."),
    ("I", "loader.cc", "Running initialization op on SavedModel bundle at path: "),
    ("I", "loader.cc", "SavedModel load for tags { serve }; Status: success: OK."),
    ("I", "mlir_graph_optimization_pass.cc", "MLIR V1 optimization pass is not enabled"),
    ("I", "dump_mlir_util.cc", "disabling MLIR crash reproducer"),
    ("W", "flatbuffer_export.cc", "Skipping runtime version metadata in the model."),
]
# Dropped only where there is no NVIDIA GPU: with one, these say something is wrong.
_NO_GPU_LOGGED = [
    ("I", "cudart_stub.cc", "Could not find cuda drivers on your machine, GPU will not be used."),
    ("E", "cuda_platform.cc", "failed call to cuInit: "),
]
# Plain lines, whole.
_KNOWN_PLAIN = [
    re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(
        rb"To enable the following instructions: [\w ]+, in other operations, rebuild TensorFlow with the "
        rb"appropriate compiler flags\."
    ),  # fmt: skip
    re.compile(rb"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+"),
    re.compile(rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."),  # the first LiteRT interpreter
]
# How each plain line starts, to know whether a line still without its newline may become one.
_PLAIN_STARTS = [b"WARNING: All log messages", b"To enable the following", b"fully_quantize: ", b"INFO: Created"]

_filter: subprocess.Popen | None = None


def has_nvidia_gpu() -> bool:
    """The device files an NVIDIA driver creates (Linux, and WSL's GPU bridge)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")


def is_noise(line: bytes, gpu: bool) -> bool:
    """Whether `line` (without its newline) is one of the known lines above."""
    line = line.rstrip(b"\r")
    if any(plain.fullmatch(line) for plain in _KNOWN_PLAIN):
        return True
    logged = _LOG_LINE.fullmatch(line)
    if not logged:
        return False
    severity, source, message = (part.decode(errors="replace") for part in logged.groups())
    known = _KNOWN_LOGGED if gpu else _KNOWN_LOGGED + _NO_GPU_LOGGED
    return any(severity == s and source == f and message.startswith(m) for s, f, m in known)


def _may_become_noise(partial: bytes) -> bool:
    """Whether a line still without its newline could turn out to be a known line (it waits for the newline);
    any other partial line (a prompt, a progress bar redrawn with \\r) is passed on at once."""
    if any(start.startswith(partial) or partial.startswith(start) for start in _PLAIN_STARTS):
        return True
    return bool(re.fullmatch(rb"[IWE]\d{0,4}", partial) or re.match(rb"[IWE]\d{4} ", partial))


def filter_stream(source: int, destination: int, gpu: bool) -> None:
    """Copy `source` to `destination` until end of file, without the known lines."""
    pending, continuing = b"", False  # continuing: the start of the pending line was passed on already
    while chunk := os.read(source, 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        out = []
        for line in lines:
            if continuing or not is_noise(line, gpu):
                out.append(line + b"\n")
            continuing = False
        if pending and (continuing or not _may_become_noise(pending)):
            out.append(pending)
            pending, continuing = b"", True
        destination = _write(destination, b"".join(out))
    if pending and (continuing or not is_noise(pending, gpu)):
        _write(destination, pending)


def _write(fd: int, data: bytes) -> int:
    """Write all of `data`; once the reader is gone (-1), keep draining so that writers never get EPIPE."""
    while data and fd >= 0:
        try:
            data = data[os.write(fd, data) :]
        except BrokenPipeError:
            return -1
    return fd


def setup(verbose: bool) -> None:
    """Quiet this process and the processes it starts, unless `verbose`. Once per process, before TensorFlow
    loads. When stderr is not the process's own (a caller redirected sys.stderr, as tests do), only the
    environment is set."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off; warnings and errors stay
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one ~1,000-character line per load
    # MLflow's INFO lines (creating a store's tables, registering a model, validating its input example) repeat
    # or precede what tftrain says; its warnings and errors stay
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if _filter is None and sys.stderr is sys.__stderr__ and _fileno(sys.stderr) == 2:
        _start_filter()


def _fileno(stream) -> int:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and the like have none
        return -1


def _start_filter() -> None:
    """fd 2 through the filter; Python's own sys.stderr (tracebacks, errors, progress lines) writes straight to the
    real stderr, so it keeps its order with stdout and never waits on the filter."""
    global _filter
    read, write = os.pipe()
    original = os.dup(2)  # not inherited by child processes: only the filter and sys.stderr write to it
    _filter = subprocess.Popen(
        [sys.executable, "-I", "-S", __file__, "gpu" if has_nvidia_gpu() else "no-gpu"],
        stdin=read,
        stdout=original,
        stderr=original,
    )
    os.close(read)
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = open(  # noqa: SIM115 (lives as long as the process)
        original, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False
    )
    atexit.register(_stop, original)


def _stop(original: int) -> None:
    """At exit: close the pipe and wait until the filter has passed on what native code wrote, so that it comes
    before the shell's prompt."""
    sys.stderr.flush()
    os.dup2(original, 2)
    # past 5 s, a process started here still writes through the filter, which ends when that one does
    with contextlib.suppress(subprocess.TimeoutExpired):
        _filter.wait(timeout=5)


# Ray (cluster/launcher.py)

# Lines Ray's processes print on every run that say nothing to a tftrain user, as Ray forwards them (after the
# "(RayTrainWorker pid=...)" prefix): besides TensorFlow's known ones (above), Ray Train's placement group
# cleaner on a cluster without a dashboard (`ray start --include-dashboard false`), its preemption watcher's
# restart note, and TensorFlow's note on the generator datasets of distribute_datasets_from_function. And, with
# its traceback, the cleaner's stop timing out at the end on a busy machine (the job is done by then).
_RAY_NOISE = re.compile(
    r"Failed to query Ray Train Controller actor state\. .*|Monitor thread did not exit within [\d.]+ seconds"
    r"|\[[\d-]+ [\d:,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' .*"
    r"|W\d{4} [\d:.]+\s+\d+ dataset\.cc:\d+\] Input of GeneratorDatasetOp::Dataset will not be optimized .*"
    # a worker killed: the raylet's word for it, and the collective ops' errors in the others (the driver's
    # "worker failed" line says it once)
    r"|A worker died or was killed while executing a task by an unexpected system error\. .*"
    r"|[EW]\d{4} [\d:.]+\s+\d+ (?:ring_alg|base_collective_executor|collective_ops|collective_rma_distributed)"
    r"\.cc:\d+\] .*|Additional GRPC error information .*|\s*\[\[\{\{node CollectiveReduceV\d\}\}\]\].*"
    # TensorFlow's preemption notifier in a worker that Ray stops (after another's error, or at the end)
    r"|W\d{4} [\d:.]+\s+\d+ preemption_notifier\.cc:\d+\] SIGTERM caught at .*"
)
_FORWARDED_LINE = re.compile(r"\((?P<who>[^)]*)\) (?P<line>.*?)(?: \[repeated \d+x across cluster\].*)?")
_ANSI = re.compile(r"\x1b\[[\d;]*m")


@contextlib.contextmanager
def forwarded_lines(verbose: bool):
    """Ray prints its processes' lines through this process's sys.stdout and sys.stderr: without the known
    noise (all of it with --verbose)."""
    if verbose:
        yield
        return
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (ForwardedLines(s, has_nvidia_gpu()) for s in streams)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            s.flush()
        sys.stdout, sys.stderr = streams


# the placement group cleaner's tracebacks: its stop timing out, its monitor failing to reach the state API (as on
# a machine running several Ray clusters, where it cannot tell which is its own); the job goes on in both
_NOISY_TRACEBACK = re.compile(
    r"Failed to stop PlacementGroupCleaner gracefully\.|Exception in thread PlacementGroupCleaner\w*:"
)
_TRACEBACK_END = re.compile(r"(?:\w+\.)*\w*(?:Error|Exception): .*")


class ForwardedLines(io.TextIOBase):
    def __init__(self, stream, gpu: bool):
        self.stream, self.gpu, self.pending = stream, gpu, ""
        self.skipping = None  # the process whose traceback is being dropped
        self.plain = not (hasattr(stream, "isatty") and stream.isatty())  # a file or a pipe: Ray's colours dropped

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        self.stream.write("".join(f"{self._shown(line)}\n" for line in lines if not self._noise(line)))
        return len(text)

    def flush(self) -> None:
        if self.pending and not self._noise(self.pending):
            self.stream.write(self._shown(self.pending))
        self.pending = ""
        self.stream.flush()

    def _shown(self, line: str) -> str:
        return _ANSI.sub("", line) if self.plain else line

    def _noise(self, line: str) -> bool:
        forwarded = _FORWARDED_LINE.fullmatch(_ANSI.sub("", line))
        if not forwarded:
            return False
        who, body = forwarded["who"], forwarded["line"]
        if _NOISY_TRACEBACK.fullmatch(body):
            self.skipping = who
            return True
        if self.skipping == who:
            if _TRACEBACK_END.fullmatch(body):
                self.skipping = None
            return True
        return bool(_RAY_NOISE.fullmatch(body)) or is_noise(body.encode(), self.gpu)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops tftrain, which then closes the pipe
    filter_stream(0, 1, gpu=sys.argv[1:] == ["gpu"])
