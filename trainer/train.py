"""Pretrain VideoBERT on token or clip shards with DeepSpeed ZeRO-3; resumable at any step.

  one process (CPU or one GPU):
    videobert train --config launch/recipes/demo.yaml data.train=shards/train run_dir=runs/r1
  all GPUs of one node:
    deepspeed --module trainer.train --config launch/recipes/base.yaml ...
    torchrun --nproc_per_node 8 -m videobert.trainer.train --config launch/recipes/base.yaml ...
  several nodes: see launch/ (hostfile, torchrun elastic, SLURM).

Resume: ``checkpoint.resume=auto`` (the default) continues from the newest complete checkpoint of
``run_dir``, on the same or another number of ranks and workers (``optim.global_batch_size`` keeps the
global batch); SIGTERM/SIGINT save one and stop at the next step boundary (exit status 75).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from videobert.models.errors import PrintableFormatter, VideoBertError
from videobert.models.sizing import step_flops
from videobert.models.videobert import MODEL_INPUTS
from videobert.models.vocab import JointVocab
from videobert.shards import schema
from videobert.shards.options import add_section_arguments, settings_from_args
from videobert.trainer import build
from videobert.trainer.audit import Audit, drop_after
from videobert.trainer.checkpoint import (
    Snapshot, StopSignals, TrainerState, load_checkpoint, plan_resume, save_checkpoint,
)
from videobert.trainer.config import (
    ConfigError, TrainConfig, batch_sizes, heldout_sources, load_config, save_config, shard_specs,
    shipped_recipes,
)
from videobert.trainer.data import SAMPLE_EPOCHS, SAMPLE_KEYS, StreamPosition, make_loader
from videobert.trainer.distributed import all_reduce_, end_within, gather_lists, init_distributed, leave_distributed
from videobert.trainer.engine import build_ds_config, build_engine
from videobert.trainer.evaluation.heldout import engine_heldout, heldout_objectives, training_negative_share
from videobert.trainer.evaluation.tables import format_table, heldout_table
from videobert.trainer.example_builder import ExampleBuilder, resolve_visual
from videobert.trainer.metrics import TensorBoard, Window, console_summary, peak_flops
from videobert.trainer.mixing import SOURCE
from videobert.trainer.run_folder import RunFolder, write_json
from videobert.trainer.run_lock import RunFolderLocked, RunLock

log = logging.getLogger("videobert.train")

EXIT_RESUMABLE = 75
"""Exit status after SIGTERM/SIGINT: a checkpoint was saved; the same command continues the run."""

EXIT_GRACE_S = 30.0
"""After an error, the longest the process takes to end: its teardown (the process group, the data
loader's workers, TensorBoard's writer) gets this long, then the process exits regardless."""


class TrainingStopped(VideoBertError, RuntimeError):
    """Training cannot go on (e.g. a run of non-finite losses); a checkpoint was written first."""

    exit_status = 3


def _floats(results: dict[str, Any]) -> dict[str, float]:
    """The scalar figures of a held-out pass (intervals and per-source figures left out)."""
    return {k: v for k, v in results.items() if isinstance(v, float)}


class Trainer:
    """Owns the engine, the data and the trainer state; ``train()`` runs to ``max_steps``."""

    def __init__(self, cfg: TrainConfig, dist_info=None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.dist_timeout_s)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.run = RunFolder(cfg.run_dir)
        self.lock = self._lock_run_folder()
        self.sizes = batch_sizes(cfg.optim, self.dist.world_size)
        self.codebook = build.build_codebook(cfg)
        self.source, self.mix = build.build_train_data(cfg, self.codebook)
        self.tokenizer = build.build_tokenizer(cfg)
        self.vocab = JointVocab.from_tokenizer(self.tokenizer, self.codebook.num_leaves)
        self.model_config = build.build_model_config(cfg, self.vocab)
        # The checkpoint is chosen and checked before any weights are built.
        self.plan = plan_resume(self.run.checkpoints, cfg.checkpoint.resume, self.dist.rank, self.dist.world_size,
                                self.model_config.to_dict(), self.codebook)
        self.ds_config = build_ds_config(cfg, self.dist.world_size, self.model_config.hidden_size)
        self.engine = build_engine(build.build_model(cfg, self.model_config, self.ds_config), cfg, self.ds_config)
        self.visual = build.build_visual_tokenizer(cfg, self.dist.device) if self.source.kind == schema.CLIP_KIND else None
        self.builder = ExampleBuilder(self.vocab, self.tokenizer, cfg.objectives, cfg.data.max_seq_len)
        self.spec = build.stream_spec(cfg, self.source.urls, self.dist)
        named = [(s.name, s.urls) for s in self.mix.sources] if self.mix else [("training", self.source.urls)]
        for name, urls in named:
            build.warn_if_few_shards(urls, self.spec, self.dist.is_main, name)
        self.state = TrainerState(codebook_hash=self.codebook.hash, world_size=self.dist.world_size,
                                  num_streams=self.spec.num_streams)
        self.boundary = Snapshot.take(self.state)
        """The state at the last optimizer-step boundary: what a checkpoint records."""
        self.audit = None
        self._batches: Iterator[dict[str, Any]] | None = None
        self.stopped_by_signal = False

    def _lock_run_folder(self) -> RunLock | None:
        """Collective: rank 0 takes the run folder's lock (``trainer.run_lock``); a refusal is raised on
        every rank. Released by ``release`` (or when the process exits)."""
        lock, refused = None, []
        if self.dist.is_main:
            try:
                lock = RunLock(self.run.path).acquire()
                atexit.register(lock.release)
            except RunFolderLocked as e:
                refused = [str(e)]
        refused = gather_lists(refused)
        if refused:
            raise RunFolderLocked(refused[0])
        return lock

    def release(self) -> None:
        """Let go of the run folder (another run may start on it)."""
        if self.lock is not None:
            self.lock.release()

    # -- state -----------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def state_dict(self):
        return self.state

    def load_state_dict(self, state) -> None:
        self.state = state
        self.boundary = Snapshot.take(state)
        self.close_loader()

    def resume(self) -> bool:
        if self.plan is None:
            return False
        plan = self.plan
        self.load_state_dict(load_checkpoint(self.engine, plan, self.dist.rank, self.spec.num_streams, self.cfg.seed))
        self._main_log("resumed from %s (step %d) on %d rank(s) x %d stream(s); it was written by %d x %d",
                       plan.folder, self.state.step, self.dist.world_size, self.spec.num_streams,
                       plan.world_size, plan.num_streams)
        if plan.other_world_size and not self.cfg.optim.global_batch_size:
            self._main_log("the global batch is now %d examples (micro-batch x accumulation x ranks); set "
                           "optim.global_batch_size to keep it the same at every number of ranks", self.sizes.global_batch)
        if self.dist.is_main and (self.mix is not None) != bool(self.state.mix):
            log.warning("data.train is %s, the checkpoint's data position is of %s: the data starts again at "
                        "epoch 0", *(("a mix of sources", "one source") if self.mix else ("one source", "a mix")))
        return True

    def save(self, stopped: str = "") -> Path:
        """Collective. ``stopped``: why training cannot go on (recorded in the checkpoint's marker)."""
        if self.lock is not None:
            self.lock.check()
        if self.audit is not None:
            self.audit.sync()
        folder = save_checkpoint(self.engine, self.run.checkpoints, self.boundary, self.cfg, self.model_config.to_dict(),
                                 self.dist.rank, self.cfg.checkpoint.keep_last, stopped=stopped)
        self._main_log("checkpoint %s", folder)
        return folder

    def _open_audit(self) -> None:
        """Collective (with ``data.audit``): drop the audit lines past the current step, then append."""

        if self.dist.is_main:
            drop_after(self.run.audit_dir, self.state.step)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        self.audit = Audit(self.run, self.dist.rank)
        self.audit.open()

    # -- data ------------------------------------------------------------------------------

    def batches(self) -> Iterator[dict[str, Any]]:
        if self._batches is None:

            d = self.cfg.data
            if self.mix is not None:
                loader = self.mix.loader(self.spec, self.state.mix, self.state.batches_consumed, self.builder.build,
                                         self.sizes.micro, d.num_workers, d.prefetch_factor)
            else:
                spec = dataclasses.replace(self.spec, history=self.state.history)
                loader = make_loader(spec, self.state.positions, self.state.batches_consumed, self.builder.build,
                                     self.sizes.micro, d.num_workers, d.prefetch_factor)
            self._batches = iter(loader)
        return self._batches

    def next_batch(self) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        try:
            batch = next(self.batches())
        except BaseException:
            self.close_loader()
            raise
        waited = time.perf_counter() - started
        st = self.state
        if self.mix is not None:
            self.mix.record(st.mix, batch)
        else:
            st.positions[int(batch["stream"])] = StreamPosition(int(batch["epoch"]), int(batch["items"]))
        st.batches_consumed += 1
        st.bad_samples += int(batch["bad_samples"])
        return batch, waited

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Move a batch to the device; for clip shards, tokenize its clips and fill video positions."""

        device = self.dist.device
        batch = {k: torch.as_tensor(v) for k, v in batch.items() if k not in (SAMPLE_KEYS, SAMPLE_EPOCHS)}
        if "clips" in batch:

            with torch.no_grad():
                ids = self.visual(batch.pop("clips").to(device, non_blocking=True))
            refs = {k: batch[k].to(device) for k in ("video_ref", "label_ref")}
            moved = {k: batch[k].to(device) for k in ("input_ids", "mlm_labels")}
            resolve_visual({**moved, **refs}, ids, self.vocab)
            batch.update(moved)
        return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS}

    # -- steps -----------------------------------------------------------------------------

    def train_step(self, window) -> None:
        """One optimizer step: ``accumulation`` good micro-batches (non-finite ones are dropped)."""

        done, bad_in_a_row, consumed = 0, 0, []
        while done < self.sizes.accumulation:
            batch, waited = self.next_batch()
            source = self.mix.names[int(batch[SOURCE])] if self.mix is not None else None
            taken = (batch.pop(SAMPLE_KEYS), batch.pop(SAMPLE_EPOCHS), *([source] if source else []))
            started = time.perf_counter()
            inputs = self.model_inputs(batch)
            out = self.engine(**inputs)
            finite = all_reduce_(torch.isfinite(out.loss.detach()).float().reshape(1).cpu(), "min").item() > 0
            if not finite:
                bad_in_a_row += 1
                if self.audit is not None:
                    self.audit.record(self.state.step + 1, [taken], skipped=True)
                self._skip_bad_batch(window, bad_in_a_row)
                continue
            self.engine.backward(out.loss)
            self.engine.step()
            done += 1
            consumed.append(taken)
            window.add_output(out)
            if source is not None:
                window.add_source(source, out, int(inputs["input_ids"].shape[0]))
            self._count(window, batch, inputs, waited, time.perf_counter() - started)
        self.state.step += 1
        if self.audit is not None:
            self.audit.record(self.state.step, consumed)
        self.boundary = Snapshot.take(self.state)
        window.add(grad_norm_sum=_grad_norm(self.engine))

    def _skip_bad_batch(self, window, bad_in_a_row: int) -> None:
        self.state.skipped_steps += 1
        window.add(skipped_steps=1)
        log.warning("rank %d: non-finite loss at step %d; micro-batch skipped (%d in a row)",
                    self.dist.rank, self.state.step, bad_in_a_row)
        if bad_in_a_row >= self.cfg.max_bad_steps:
            why = f"{bad_in_a_row} non-finite losses in a row at step {self.state.step}"
            folder = self.save(stopped=f"{why}; the state is that of the step's start")
            raise TrainingStopped(
                f"{why}; saved {folder} (its marker says so). "
                "Lower optim.lr, raise optim.warmup_steps, or use optim.precision=fp32, then resume"
            )

    def _count(self, window, batch, inputs, waited: float, computed: float) -> None:
        tokens = int(inputs["attention_mask"].sum())
        samples = int(inputs["input_ids"].shape[0])
        st = self.state
        st.samples += samples
        st.tokens += tokens
        st.segments += int(batch["segments"])
        window.add(steps=1, samples=samples, tokens=tokens, segments=int(batch["segments"]),
                   bad_samples=int(batch["bad_samples"]), data_seconds=waited, compute_seconds=computed,
                   flops=step_flops(self.model_config, inputs["attention_mask"], inputs["mlm_labels"]))

    # -- the loop --------------------------------------------------------------------------

    def train(self):
        """Train to ``max_steps`` (or until SIGTERM/SIGINT); checkpoint on the way and at the end."""

        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run.config)
        board = TensorBoard(self.run, self.dist.is_main, resumed_at=self.state.step)
        if cfg.data.audit:
            self._open_audit()
        peak = peak_flops(self.dist.device, cfg.logging.peak_flops)
        bar = self._progress_bar()
        self.engine.train()
        try:
            self._loop(board, bar, peak)
        finally:
            # Whatever ends the loop (an error included), the loader's worker processes end now: left
            # to the interpreter's exit, they would be joined forever (they ignore SIGTERM).
            self.close_loader()
        if bar is not None:
            bar.close()
        board.close()
        if self.audit is not None:
            self.audit.close()
        return self.state

    def _loop(self, board, bar, peak: float) -> None:
        cfg = self.cfg
        saved_at = self.state.step
        window = Window(self.mix.names if self.mix is not None else ())
        with StopSignals() as signals:
            while self.state.step < cfg.max_steps:
                self.train_step(window)
                if bar is not None:
                    bar.update(1)
                if self.state.step % cfg.logging.every_steps == 0 or self.state.step == cfg.max_steps:
                    self._log(window, board, bar, peak)
                    window = Window(self.mix.names if self.mix is not None else ())
                every = cfg.logging.heldout_every_steps
                if cfg.data.heldout and every and self.state.step % every == 0 and self.state.step < cfg.max_steps:
                    self.evaluate_heldout(board=board)
                stop = all_reduce_(torch.tensor([float(signals.requested)]), "max").item() > 0
                if stop or self.state.step % cfg.checkpoint.every_steps == 0:
                    self.save()
                    saved_at = self.state.step
                if stop:
                    self._main_log("stopped by signal at step %d", self.state.step)
                    self.stopped_by_signal = True
                    break
        if saved_at != self.state.step:
            self.save()

    def close_loader(self) -> None:
        """End the training loader's worker processes (they ignore SIGTERM, which is the trainer's to
        handle, so a process leaving on an error would wait on them); a new iterator starts if
        training goes on."""
        if self._batches is not None:
            stop_workers(self._batches)
            self._batches = None

    def evaluate_heldout(self, max_batches: int | None = None, board: TensorBoard | None = None) -> dict[str, Any]:
        """The held-out pass through the engine (``data.heldout``), its figures logged at this step as
        ``heldout/*`` (on ``board`` during training); at the end rank 0 also prints and saves it. Named
        held-out sources are also evaluated each on its own (``by_source``, ``heldout/NAME/*``)."""

        cfg = self.cfg
        results = self._heldout_pass(shard_specs(cfg.data.heldout), "data.heldout", max_batches)
        by_source = {name: self._heldout_pass(paths, f"data.heldout ({name})", max_batches)
                     for name, paths in heldout_sources(cfg.data)}
        if by_source:
            results["by_source"] = by_source
        end = None if board is not None or not self.dist.is_main else TensorBoard(self.run, True)
        for writer in (board, end):
            if writer is None:
                continue
            writer.scalars("heldout", _floats(results), self.state.step)
            for name, figures in by_source.items():
                writer.scalars(f"heldout/{name}", _floats(figures), self.state.step)
        if end is not None:
            end.close()
            write_json(self.run.heldout, results)
            print(format_table(heldout_table(results)))
            for name, figures in by_source.items():
                print(format_table(heldout_table(figures, title=f"held-out: {name}")))
        return results

    def _heldout_pass(self, spec: list[str], what: str, max_batches: int | None) -> dict[str, Any]:
        cfg = self.cfg
        source = build.inspect_source(spec, what)
        build.check_source(source, self.codebook, what)
        builder = ExampleBuilder(self.vocab, self.tokenizer, heldout_objectives(cfg.objectives), cfg.data.max_seq_len)
        return engine_heldout(self.engine, self.model_inputs, source.urls, builder,
                              batch_size=cfg.optim.micro_batch_size, seed=cfg.seed, visual=self.visual,
                              max_batches=max_batches, negative_share=training_negative_share(cfg.objectives))

    def _log(self, window, board, bar, peak: float) -> None:
        values = window.reduce(self.dist.world_size, peak)
        values["lr"] = float(self.engine.get_lr()[0])
        board.scalars("train", values, self.state.step)
        if bar is not None:
            bar.set_postfix(console_summary(values), refresh=False)
        elif self.dist.is_main:
            self._main_log("step %d %s", self.state.step, console_summary(values))

    def _progress_bar(self):
        if not (self.dist.is_main and self.cfg.logging.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True)

    def _main_log(self, msg: str, *args) -> None:
        if self.dist.is_main:
            log.info(msg, *args)


def stop_workers(batches: Iterator[dict[str, Any]], timeout_s: float = 5.0) -> None:
    """End a DataLoader iterator's worker processes: asked first, killed after ``timeout_s``."""
    # The workers ignore SIGTERM (the scheduler's signal is the trainer's to handle), so the
    # DataLoader's own fallback, terminate(), cannot end a worker that did not stop when asked.
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:  # num_workers=0: no processes
        return
    shutdown()
    for worker in getattr(batches, "_workers", ()):
        worker.join(timeout=timeout_s)
        if worker.is_alive():
            log.warning("a data loader worker (pid %d) did not stop in %.0f s: killed", worker.pid, timeout_s)
            worker.kill()
            worker.join(timeout=timeout_s)


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


# ------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RECIPE",
                        help=f"recipe file (YAML or JSON) or the name of a shipped one ({', '.join(shipped_recipes())}); "
                             "the options below are applied over it")
    parser.add_argument("--resume", help="auto (newest complete checkpoint), none, or a step-N folder; overrides --checkpoint.resume")
    parser.add_argument("--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    parser.add_argument("stray", nargs="*", help=argparse.SUPPRESS)
    add_section_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    if args.stray:
        flags = " ".join(f"--{a}" if "=" in a else a for a in args.stray)
        raise ConfigError(f"unexpected argument(s) {' '.join(args.stray)}: settings are options ({flags})")
    settings = settings_from_args(args) | ({"checkpoint.resume": args.resume} if args.resume else {})
    cfg = load_config(args.config, settings=settings)
    if os.environ.get(STOPPED_FILE_VARIABLE):  # a stop of an earlier round (torchrun elastic restarts)
        Path(os.environ[STOPPED_FILE_VARIABLE]).unlink(missing_ok=True)
    dist_info, together = init_distributed(cfg.dist_timeout_s), False
    try:
        trainer = train(cfg, dist_info)
        together = True
    except BaseException as e:
        end_within(EXIT_GRACE_S, exit_status_of(e))
        raise
    finally:
        leave_distributed(dist_info, together)
    if trainer.stopped_by_signal:
        _tell_the_launch_script()
        return EXIT_RESUMABLE
    return 0


STOPPED_FILE_VARIABLE = "VIDEOBERT_STOPPED_FILE"
"""A file the launch scripts name: created when a rank stopped on a signal after a complete checkpoint.
torchrun reports a worker's status 75 as a failure (its own status 1); the script reads the file
and exits 75, which the scheduler's requeue logic looks for."""


def _tell_the_launch_script() -> None:
    path = os.environ.get(STOPPED_FILE_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{EXIT_RESUMABLE}\n")


def log_to_stderr() -> None:
    """INFO and above to stderr, one line each, control characters (from shard keys) escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def exit_status_of(error: BaseException) -> int:
    """The status a process that failed with ``error`` exits with (as ``trainer.cli.main`` would)."""
    if isinstance(error, VideoBertError):
        return error.exit_status
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 1


def train(cfg: TrainConfig, dist_info=None) -> Trainer:
    """Build, resume if asked, train, and evaluate on the held-out shards when configured (unless
    stopped by a signal). ``dist_info``: the process group joined already (None: join it here)."""
    log_to_stderr()
    trainer = Trainer(cfg, dist_info)
    try:
        trainer.resume()
        trainer.train()
        if cfg.data.heldout and not trainer.stopped_by_signal:
            trainer.evaluate_heldout()
    finally:
        trainer.release()
    return trainer


if __name__ == "__main__":  # `python -m videobert.trainer.train`, as launchers start it
    from videobert.trainer.cli import entry

    entry(["train", *sys.argv[1:]])
