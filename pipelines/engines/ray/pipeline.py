"""distilabel's ``RayPipeline`` made to run like the local engine (``run.engine: ray``, docs/scaling.md).

Every copy of a stage is a Ray actor placed by the resources the spec gives it (``run.steps``); copies of one
stage are spread over the nodes. What the local ``ThrottledPipeline`` does is done here too: the per-batch
bookkeeping is rate-limited, SIGTERM and Ctrl-C stop the run gracefully (every stage finishes the batch it has,
the write stage writes the parts it holds, then the actors go), and ``stop_reason`` says why a run stopped.
What only a cluster has:

- a watcher notices an actor that died (a node lost, a worker killed, the OOM killer) and stops the run with
  one line naming the stage; whole parts are on the shared storage, so the rerun resumes;
- the queues between the driver and the stages and the generation replicas' drain board live on the driver's
  node, so losing a worker node never takes the driver's plumbing with it;
- the run's lease (pipelines/run/shared_lock.py) is watched: a run whose lease was taken over stops.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from typing import Any

from distilabel.pipeline.ray import RayPipeline

from pipelines.engines.local import STOP_SIGNALS, FactoryPipelineMixin, ThrottledPipeline
from pipelines.errors import RESUME_HINT, Interrupted, RunAborted

# What a Ray worker needs from the driver's environment (nodes started by `ray start` have their own). No
# tokens: a runtime_env is kept in Ray's GCS and shown by its dashboard.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "DO_NOT_TRACK")
LOCAL_OBJECT_STORE_MB = 256
STOP_WAIT_S = 60.0  # a graceful stop waits this long for the stages to finish their batches


class StepActor:
    """A stage copy as a Ray actor: runs distilabel's step wrapper loop (as ``RayPipeline`` does)."""

    def __init__(self, step_wrapper: Any, log_queue: Any, pipeline_name: str, pipeline_cache_id: str) -> None:
        self._step_wrapper = step_wrapper
        self._log_queue = log_queue
        self._pipeline_name = pipeline_name
        self._pipeline_cache_id = pipeline_cache_id

    def run(self) -> str:
        from distilabel.pipeline.base import set_pipeline_running_env_variables
        from distilabel.utils.logging import setup_logging

        setup_logging(log_queue=self._log_queue)
        set_pipeline_running_env_variables(self._pipeline_name, self._pipeline_cache_id)
        return self._step_wrapper.run()


class FactoryRayPipeline(FactoryPipelineMixin, RayPipeline):
    """``RayPipeline`` with the factory's stop handling, placement and death watch (see the module doc)."""

    snapshot_every_s = 5.0
    load_poll_s = 0.05
    watch_every_s = 0.5
    _last_snapshot = -math.inf
    _location: Any = None

    stop_reason: BaseException | None = None
    log_handler: logging.Handler | None = None
    verbose = False

    def __init__(self, name: str, cache_dir: Any = None, address: str | None = None,
                 actor_options: dict[str, dict[str, Any]] | None = None, local_cpus: int = 2,
                 fence: threading.Event | None = None, description: str | None = None,
                 requirements: list[str] | None = None) -> None:
        # description/requirements: distilabel's ``from_dict`` rebuilds the cached pipeline.yaml on a resume as
        # ``cls(name=, description=, requirements=)``, only for its DAG (``_refresh_pipeline_from_cache``)
        super().__init__(name=name, cache_dir=cache_dir, description=description, requirements=requirements)
        self.address = address
        self.actor_options = actor_options or {}
        self.local_cpus = local_cpus
        self.fence = fence  # set when the run's lease was taken over
        self.boards: list[str] = []  # drain boards to create (pipelines/engines/ray/drain.py)
        self._actors: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._board_handles: list[Any] = []
        self._watcher: threading.Thread | None = None
        self._done = threading.Event()

    def drain_board_for(self, step: str) -> str:
        """The board where ``step``'s replicas meet at the end (engines/ray/drain.py); made when Ray starts."""
        from pipelines.engines.ray.drain import board_name

        name = board_name(self.name, step)
        if name not in self.boards:
            self.boards.append(name)
        return name

    # --- borrowed as they are from the local engine (they do not depend on the base class) ----------------
    _register_batch = ThrottledPipeline._register_batch
    _handle_batch_on_stop = ThrottledPipeline._handle_batch_on_stop
    _run_stage_steps_and_wait = ThrottledPipeline._run_stage_steps_and_wait
    _setup_write_buffer = ThrottledPipeline._setup_write_buffer
    _is_running = ThrottledPipeline._is_running
    _cache_location = ThrottledPipeline._cache_location

    def run(self, *args: Any, **kwargs: Any) -> Any:
        import ray

        self._location = None
        self._last_snapshot = -math.inf
        self.stop_reason = None
        self._done.clear()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        root = logging.getLogger()
        root_handlers, root_level = list(root.handlers), root.level
        try:
            return super().run(*args, **kwargs)
        except (SystemExit, Exception):
            if self.stop_reason is not None:
                raise self.stop_reason from None
            raise
        finally:
            self._done.set()
            self._finish_actors()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            root.handlers[:], root.level = root_handlers, root_level
            self._location = None
            if ray.is_initialized():
                ray.shutdown()

    # --- Ray: connect, place, watch -----------------------------------------------------------------------
    def _init_ray(self) -> None:
        import ray

        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": self.verbose,
                                   "logging_level": logging.INFO if self.verbose else logging.WARNING}
        if self.address:
            ray.init(address=self.address, **options)
        else:  # a Ray of its own on this machine, sized for the stages ("local": never one found running)
            ray.init(address="local", num_cpus=self.local_cpus, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_MB * 2**20, **options)
        self._ray_node_ids = self._get_ray_gpus_per_node()
        from pipelines.engines.ray.drain import create_board

        self._board_handles = [create_board(name) for name in self.boards]  # an actor lives while a handle does
        self._watcher = threading.Thread(target=self._watch, name="ray-watch", daemon=True)
        self._watcher.start()

    @property
    def QueueClass(self) -> Any:  # noqa: N802 - distilabel's name
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)

        def make(maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> Queue:
            return Queue(maxsize, actor_options={**(actor_options or {}), "num_cpus": 0,
                                                 "scheduling_strategy": here})

        return make

    def _run_step(self, step: Any, input_queue: Any, replica: int) -> None:
        import ray
        from distilabel.pipeline.step_wrapper import _StepWrapper

        options = {"name": f"distilabel-{self.name}-{step.name}-{replica}", "max_restarts": 0,
                   **self.actor_options.get(step.name, {})}
        if self.dag.get_step_replica_count(step.name) > 1:
            options.setdefault("scheduling_strategy", "SPREAD")  # copies of a stage on different nodes
        actor = ray.remote(StepActor).options(**options).remote(
            step_wrapper=_StepWrapper(step=step, replica=replica, input_queue=input_queue,
                                      output_queue=self._output_queue, load_queue=self._load_queue,
                                      dry_run=self._dry_run, ray_pipeline=True),
            log_queue=self._log_queue, pipeline_name=self.name, pipeline_cache_id=self.signature)
        self._actors[(step.name, replica)] = (actor, actor.run.remote())

    def _watch(self) -> None:
        """Stop the run when a stage's actor dies or the lease is lost; a stage that returns is fine."""
        import ray
        from ray.exceptions import RayError

        checked: set[tuple[str, int]] = set()
        while not self._done.wait(self.watch_every_s):
            if self.fence is not None and self.fence.is_set():
                self._abort("another distill run took over this folder's lease (run.lease); this run stops "
                            "without writing more")
                return
            pending = {key: ref for key, (_, ref) in list(self._actors.items()) if key not in checked}
            if not pending:
                continue
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
            for key, ref in pending.items():
                if ref not in ready:
                    continue
                checked.add(key)
                try:
                    ray.get(ref, timeout=0)
                except RayError as exc:
                    if self._done.is_set() or self._stop_called:
                        return
                    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    self._abort(f"a Ray worker died: stage '{key[0]}' (copy {key[1]}) ({type(exc).__name__}: "
                                f"{why}); the parts written are kept, {RESUME_HINT}")
                    return

    def _abort(self, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = RunAborted(message)
        if getattr(self, "_output_queue", None) is not None:
            self._stop()
        else:  # still starting: the stage-load wait sees this and gives up
            self._stop_called = True

    def _finish_actors(self) -> None:
        """After SIGTERM or Ctrl-C, let every stage finish its batch (the write stage its parts); then end them."""
        import ray

        if not ray.is_initialized() or not self._actors:
            return
        if isinstance(self.stop_reason, Interrupted):  # a lost worker's batches are lost anyway: no wait
            for name, queue in list(getattr(self, "_steps_input_queues", {}).items()):
                try:
                    for _ in range(self.dag.get_step_replica_count(name)):
                        queue.put(None, timeout=5)
                except Exception:  # noqa: BLE001 - a queue that is gone: nothing to stop there
                    continue
            ray.wait([ref for _, ref in self._actors.values()], num_returns=len(self._actors),
                     timeout=STOP_WAIT_S)
        self._kill_actors()

    def _kill_actors(self) -> None:
        import ray

        for actor, _ in self._actors.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                continue
        self._actors.clear()
        self._board_handles.clear()

    # --- the local engine's stop handling and throttled snapshots ------------------------------------------
    def _handle_keyboard_interrupt(self) -> Any:
        previous = signal.getsignal(signal.SIGINT)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not isinstance(self.stop_reason, RunAborted):
            self.stop_reason = Interrupted(signum)
        if getattr(self, "_output_queue", None) is None:  # not started yet: nothing to drain
            raise self.stop_reason
        threading.Thread(target=self._stop, name="ray-stop", daemon=True).start()  # Ray calls may block

    def _finalize_pipeline_execution(self) -> None:
        self._last_snapshot = -math.inf
        if isinstance(self.stop_reason, RunAborted):
            # distilabel's own stop waits for every step to report that it unloaded and for every input queue
            # to empty: a dead actor does neither. The parts written are whole; what is in flight is asked again.
            self._kill_actors()
            with self._stop_called_lock:
                self._stop_called = False
            self._cache()
            return
        super()._finalize_pipeline_execution()


def actor_options(cpus: float | None, gpus: int | None) -> dict[str, Any]:
    """Ray actor options for a stage copy: Ray's default of one CPU unless the spec says otherwise."""
    options: dict[str, Any] = {"num_cpus": 1.0 if cpus is None else cpus}
    if gpus:
        options["num_gpus"] = gpus
    return options


def local_cpus(options: dict[str, dict[str, Any]], replicas: dict[str, int]) -> int:
    """Logical CPUs a Ray started on this machine needs so that every stage copy is placed."""
    return max(1, math.ceil(sum(o["num_cpus"] * replicas.get(name, 1) for name, o in options.items())))


STAGES = ("load", "generate", "curate", "judge", "prm", "write")


def ray_pipeline(spec: Any, name: str, cache_dir: Any, fence: threading.Event | None = None) -> FactoryRayPipeline:
    """The Ray engine for a spec: each stage's copies with the resources ``run.steps`` gives them."""
    run = spec.run
    options = {"load": actor_options(None, None)}
    replicas = {"load": 1}
    for stage in STAGES[1:]:
        config = getattr(run.steps, stage)
        options[stage] = actor_options(config.cpus, config.gpus)
        replicas[stage] = run.replicas(stage)
    present = {"generate", "curate", "write", "load"} | ({"judge"} if spec.judge else set()) | (
        {"prm"} if spec.prm else set())
    options = {stage: o for stage, o in options.items() if stage in present}
    return FactoryRayPipeline(name=name, cache_dir=cache_dir, address=run.ray_address, actor_options=options,
                              local_cpus=local_cpus(options, replicas), fence=fence)
