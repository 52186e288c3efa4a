"""The worker process: pin, load, warm up, say Ready, then serve batches until told to stop.

Protocol, over the worker's one channel to the main process:
    worker -> main   Ready, once the model is loaded and warmed up; or BootFailed, then exit 3
    main -> worker   Batch            worker -> main   BatchDone (one per Batch, in order)
    main -> worker   Stop             the worker exits 0
    main -> worker   HeadsUp          a Batch is due soon: poll for it (busy_poll.py)
  a handler whose predict is `async def` holds up to max_concurrency batches at once and answers
  each as it finishes (inferd/async_worker.py); Stop lets those in flight finish first
  a generative model's worker instead runs a continuous batch:
    main -> worker   Generate, Cancel (any time)   worker -> main   Chunks, one per decode step
  and so does a handler whose predict yields, for its streamed requests (its Batches too):
    main -> worker   StreamPredict, Cancel         worker -> main   Chunks, one per yield
  any other worker answers a StreamPredict at once with a failed Chunk
    worker -> main   Stats, every few seconds on a GPU (sent under the same lock as BatchDone)
Invariants: the process pins itself and caps its thread pools before torch runs anything (a
forkserver may have imported torch, idle, before forking it; torch's thread pools start on first
use); it exits when the main process is gone (a thread waits on a pidfd of the main process, and
an end-of-stream on its channel ends the serving loop), so no worker outlives the daemon even
when the main process is SIGKILLed. It watches the main process, not its parent: the fork helper
that forked it may die, and must take no worker with it. Where the model sets
max_worker_memory_mb, each BatchDone carries the worker's resident memory, read after the batch.

This module imports torch only inside functions, so that where workers are spawned the fresh
interpreter imports it only after pinning.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from setproctitle import setproctitle

from inferd import logs
from inferd.busy_poll import WorkerPoll
from inferd.channel import Channel, ChannelClosed
from inferd.config import ModelConfig
from inferd.errors import EXIT_STARTUP
from inferd.generation.arrival_hold import ArrivalHold
from inferd.messages import (
    Batch,
    BatchDone,
    BootFailed,
    Cancel,
    Chunk,
    Chunks,
    Generate,
    GpuMemory,
    HeadsUp,
    Ready,
    RequestFailure,
    Stats,
    Stop,
    StreamPredict,
)
from inferd.placement import WorkerSlot, pin_before_torch, set_torch_threads

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0
MAIN_POLL_INTERVAL_S = 0.5  # where there are no pidfds


@dataclass(frozen=True)
class WorkerSpec:
    slot: WorkerSlot
    model: ModelConfig
    base_dir: Path  # the config file's folder: handler files resolve against it
    log_level: str
    log_format: str = "text"
    main_pid: int = field(default_factory=os.getpid)  # built in the main process
    busy_poll_s: float = 0.0  # how long to poll for the next batch before sleeping (busy_poll.py)


def worker_main(spec: WorkerSpec, channel: Channel) -> None:
    """Entry point of a worker process (the spawn target)."""
    setproctitle(f"inferd: worker {spec.model.name} {spec.slot.name}")
    pin_before_torch(spec.slot)
    exit_with_main_process(spec.main_pid)
    # Ctrl+C, `timeout` and systemd signal the whole process group; the main process drains first
    # and then stops its workers itself, so a worker must not die of the group's signal mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(spec.log_level, spec.log_format, f"{spec.model.name} {spec.slot.name}")
    try:
        runner, ready = _boot(spec)
    except BaseException as error:  # any failure to boot, SystemExit from user code included
        log.error("boot failed: %s: %s", type(error).__name__, error)
        channel.send(BootFailed(type(error).__name__, str(error) or repr(error)))
        sys.exit(EXIT_STARTUP)
    channel.send(ready)
    _serve(runner, spec, channel)


def exit_with_main_process(main_pid: int) -> None:
    """Exit, from a daemon thread, as soon as the main process is gone, however it went."""
    threading.Thread(target=_wait_for_exit_of, args=(main_pid,), name="inferd-main-watch", daemon=True).start()


def _wait_for_exit_of(main_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(main_pid)
    except ProcessLookupError:  # gone before this worker got this far
        os._exit(0)
    except (AttributeError, OSError):  # no pidfds here (not Linux >= 5.3): poll instead
        _poll_until_gone(main_pid)
    else:
        select.select([pidfd], [], [])  # readable once the process has exited
    log.info("the main process (pid %d) is gone; exiting", main_pid)
    os._exit(0)


def _poll_until_gone(pid: int) -> None:
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(MAIN_POLL_INTERVAL_S)


def _boot(spec: WorkerSpec) -> tuple[Any, Ready]:
    started = time.perf_counter()
    import torch  # after pinning (a no-op where the forkserver preloaded it)

    from inferd.generation.runner import GenerationRunner
    from inferd.runners import build_runner, warm_up

    set_torch_threads(spec.slot)
    select_device(spec.slot, torch)
    runner: Any
    if spec.model.generation is not None:
        runner, warmup_s = GenerationRunner(spec.model, spec.slot.device, spec.base_dir), 0.0
    else:
        runner = build_runner(spec.model, spec.slot.device, spec.base_dir)
        warmup_s = warm_up(runner, spec.model)
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    log.info(
        "ready in %.2f s (warmup %.3f s) on CPUs %s with %d thread(s)",
        time.perf_counter() - started, warmup_s, cpus, torch.get_num_threads(),
    )  # fmt: skip
    ready = Ready(
        pid=os.getpid(), cpus=cpus, threads=torch.get_num_threads(),
        inputs=runner.inputs, outputs=runner.outputs, load_s=time.perf_counter() - started,
        streams=getattr(runner, "streams", False),
    )  # fmt: skip
    return runner, ready


def select_device(slot: WorkerSlot, torch: Any) -> None:
    if not slot.device.startswith("cuda"):
        return
    index = int(slot.device.split(":")[1])
    torch.cuda.set_device(index)
    if slot.gpu_memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(slot.gpu_memory_fraction, index)


def _serve(runner: Any, spec: WorkerSpec, channel: Channel) -> None:
    send_lock = threading.Lock()
    watch_memory = spec.model.max_worker_memory_mb is not None
    gpu_reader = _gpu_reader(spec.slot)
    if gpu_reader is not None:
        _start_stats_thread(channel, send_lock, gpu_reader)
    if spec.model.generation is not None:
        return _serve_generation(runner, channel, send_lock)
    if getattr(runner, "streams", False):
        from inferd.generation.handler_streams import HandlerStreams

        return _serve_generation(HandlerStreams(runner), channel, send_lock)
    from inferd.async_runner import AsyncHandlerRunner  # torch is loaded by now

    if isinstance(runner, AsyncHandlerRunner):
        from inferd.async_worker import serve_concurrently

        def finish(batch_id: int, results: list[Any], compute_s: float) -> BatchDone:
            resident = _resident_bytes() if watch_memory else None
            return BatchDone(batch_id, results, compute_s, gpu_reader() if gpu_reader else None, resident)

        return serve_concurrently(runner, channel, send_lock, finish)
    import torch  # loaded by now

    # Where this thread does all of a batch's work, its CPU time is the batch's cost without the
    # time other processes on the same cores took from it (a pipeline's other steps, say).
    one_cpu_thread = gpu_reader is None and spec.slot.device == "cpu" and torch.get_num_threads() == 1
    poll = WorkerPoll(spec.busy_poll_s)
    while True:
        poll.wait(channel.readable)
        try:
            message = channel.recv()
        except ChannelClosed:
            log.info("the main process closed the channel; exiting")
            return
        if isinstance(message, Stop):
            log.info("stopping: %s", message.reason)
            return
        if isinstance(message, HeadsUp):
            poll.told(message.within_s)
        if isinstance(message, StreamPredict):
            _refuse_stream(message, spec.model.name, channel, send_lock)
        if isinstance(message, Batch):
            started, cpu_started = time.perf_counter(), time.thread_time()
            results = runner.run_batch(message.payloads)
            done = BatchDone(
                message.batch_id, results, time.perf_counter() - started,
                gpu_reader() if gpu_reader else None, _resident_bytes() if watch_memory else None,
                time.thread_time() - cpu_started if one_cpu_thread else None,
            )  # fmt: skip
            with send_lock:
                try:
                    channel.send(done)
                except ChannelClosed:
                    return


def _serve_generation(runner: Any, channel: Channel, send_lock: threading.Lock) -> None:
    """Step the running batch while it holds sequences; messages that came meanwhile are taken
    between steps (a reader thread queues them), so a new sequence joins at the next step. An
    idle GenerationRunner given a sequence first takes what else arrives in a short hold
    (arrival_hold.py), so a burst shares its prefill passes. The runner is a GenerationRunner or
    a HandlerStreams."""
    inbox: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read_into, args=(channel, inbox), name="inferd-inbox", daemon=True).start()
    arrival_hold: ArrivalHold | None = getattr(runner, "arrival_hold", None)
    while True:
        idle = not runner.running
        messages = [inbox.get()] if idle else []
        if messages and isinstance(messages[0], Generate) and arrival_hold is not None:
            messages += _held(inbox, arrival_hold)
        while not inbox.empty():
            messages.append(inbox.get_nowait())
        if not idle and arrival_hold is not None:
            arrival_hold.joined(_sequences(messages))
        chunks: list[Chunk] = []
        for message in messages:
            if message is None or isinstance(message, Stop):
                log.info("stopping: %s", "the channel closed" if message is None else message.reason)
                return
            if isinstance(message, (Generate, StreamPredict)) and (refused := runner.start(message)) is not None:
                chunks.append(refused)
            elif isinstance(message, Cancel):
                runner.cancel(message.sequence_id)
            elif isinstance(message, Batch) and not _send(channel, send_lock, runner.answer_batch(message)):
                return
        for part in runner.steps() if runner.running else ():
            chunks += part
            if chunks and not _send(channel, send_lock, Chunks(chunks)):
                return
            chunks = []
        if chunks and not _send(channel, send_lock, Chunks(chunks)):
            return


def _held(inbox: queue.Queue[Any], arrival_hold: ArrivalHold) -> list[Any]:
    """What comes while an idle worker holds the sequence it was just given (arrival_hold.py)."""
    hold = arrival_hold.next_hold()
    if hold is None:
        return []
    held: list[Any] = []
    deadline = time.monotonic() + hold.longest_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            held.append(inbox.get(timeout=min(left, hold.gap_s)))
        except queue.Empty:
            break
    arrival_hold.held(_sequences(held))
    return held


def _sequences(messages: list[Any]) -> int:
    """How many of `messages` start a sequence."""
    return sum(isinstance(message, Generate) for message in messages)


def _send(channel: Channel, send_lock: threading.Lock, message: Any) -> bool:
    """Whether `message` went out (False once the main process closed the channel)."""
    with send_lock:
        try:
            channel.send(message)
        except ChannelClosed:
            return False
    return True


def _refuse_stream(message: StreamPredict, model: str, channel: Channel, send_lock: threading.Lock) -> None:
    text = f'model {model!r} does not stream: its predict does not yield; send the request without "stream"'
    _send(channel, send_lock, Chunks([Chunk(message.sequence_id, failure=RequestFailure("NotStreamed", text))]))


def _read_into(channel: Channel, inbox: queue.Queue[Any]) -> None:
    while True:
        try:
            inbox.put(channel.recv())
        except ChannelClosed:
            inbox.put(None)
            return


def _resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _gpu_reader(slot: WorkerSlot) -> Any:
    if not slot.device.startswith("cuda"):
        return None
    import torch

    index = int(slot.device.split(":")[1])

    def read() -> GpuMemory:
        return GpuMemory(slot.device, torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index))

    return read


def _start_stats_thread(channel: Channel, send_lock: threading.Lock, read: Any) -> None:
    def report() -> None:
        while True:
            with send_lock:
                try:
                    channel.send(Stats(read()))
                except ChannelClosed:
                    return
            time.sleep(STATS_INTERVAL_S)

    threading.Thread(target=report, name="inferd-stats", daemon=True).start()
