"""System metrics of every training process, in its member's one MLflow run: MLflow's own monitor (the machine's
CPU, memory, disk, network; GPUs where MLflow can read them) under a per-process id, `system/rank<R>/...`, plus
what only the process knows about itself: its own CPU and resident memory, and on CUDA its own peak GPU memory.
On one machine the machine-wide figures repeat across ranks; the process figures are what tell them apart."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

log = logging.getLogger("fmnist.tracking")

# MLflow's default is a sample every 10 s; a member trains for minutes on a CPU and seconds per epoch on a GPU.
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it, as MLflow documents.
SAMPLING_INTERVAL_S = 5.0


class ProcessMonitor(BaseMetricsMonitor):
    """This process's share: CPU in percent of one core (200 = two cores busy), resident memory, threads, and
    the peak CUDA memory it allocated since the last sample."""

    def __init__(self, cuda: bool) -> None:
        super().__init__()
        self.process = psutil.Process()
        self.process.cpu_percent()  # the first call only starts the interval
        self.cuda = cuda

    def collect_metrics(self) -> None:
        self._metrics["process_cpu_utilization_percentage"].append(self.process.cpu_percent())
        self._metrics["process_memory_rss_megabytes"].append(self.process.memory_info().rss / 1e6)
        self._metrics["process_threads"].append(self.process.num_threads())
        if self.cuda:
            import torch

            self._metrics["process_gpu_memory_peak_megabytes"].append(torch.cuda.max_memory_allocated() / 1e6)
            torch.cuda.reset_peak_memory_stats()

    def aggregate_metrics(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items()}


class EpochMonitor(SystemMetricsMonitor):
    """MLflow's monitor, its samples logged at the step of the training epoch in progress instead of a sample
    count: system and training metrics share one x axis, and the logged model of epoch N (which MLflow links to
    every metric of its step) gets the samples taken while epoch N trained, not an unrelated sample N."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 1

    def epoch_done(self, epoch: int) -> None:
        self.epoch = epoch + 1

    def publish_metrics(self, metrics: dict[str, float]) -> None:
        self._logging_step = self.epoch  # MLflow's own publish_metrics logs at this step
        super().publish_metrics(metrics)


def node_id(rank: int) -> str:
    """`rank<R>`: the prefix under system/ that one process's metrics share, whatever the process count, so
    runs on one and on several processes compare metric by metric."""
    return f"rank{rank}"


@contextlib.contextmanager
def system_metrics(run_id: str, uri: str, rank: int, cuda: bool) -> Iterator[EpochMonitor]:
    """Sample this process's system metrics into run `run_id` until the block ends (or the run does), at the
    step of the epoch in progress (tell the monitor `epoch_done`). A monitor that cannot write (a store that went
    away) logs a warning and stops; training goes on."""
    # Its INFO lines (started, stopped, no GPU) would repeat in every process's log for nothing new.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = EpochMonitor(run_id, sampling_interval=SAMPLING_INTERVAL_S, node_id=node_id(rank), tracking_uri=uri)
    monitor.monitors.append(ProcessMonitor(cuda))
    monitor.start()
    log.debug("system metrics of rank %d (pid %d on %s) go to run %s", rank, os.getpid(), socket.gethostname(),
              run_id)
    try:
        yield monitor
    finally:
        monitor.finish()
        # MLflow's loop drops the samples of its last, unfinished interval: a last sample keeps a short run (or
        # the tail of a long one) on record.
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # MLflow's own monitor treats a failed write the same way: a warning
            log.warning("rank %d: last system metrics sample not logged: %s", rank, exc)
