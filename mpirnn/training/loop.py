"""The training loop: steps, metrics, checkpoints, stop signals and non-finite checks (what it
reports to the user, the progress bar and the exit status of a stop: mpirnn/training/reports.py).

Per step every rank runs its forward/backward (mpirnn/parallel/step.py), the gradient norm
is summed over the parts of the model (mpirnn/distributed/reductions.py), and one small
agreement over the world settles the loss, non-finite values and stop signals, so every
rank takes the same decision at the same step boundary. The learning rate of each step
comes from mpirnn/training/optim.py; with train.eval_every the val loss is computed between
steps (mpirnn/training/validation.py) and the best checkpoint by val loss is kept.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections import deque

import numpy as np
import torch

from mpirnn.distributed import reductions
from mpirnn.distributed.agreement import AgreedError, agree
from mpirnn.distributed import transport
from mpirnn.distributed.watchdog import Watchdog
from mpirnn import checkpoint, faults
from mpirnn.training import optim, sample
from mpirnn.training.metrics import MetricsWriter
from mpirnn.training.reports import TrainerReports
from mpirnn.training.signals import StopSignals
from mpirnn.training.state import carried_piece, check_compatible, gather_state, load_state, upgrade
from mpirnn.models.dropout import DropoutKey
from mpirnn.parallel.step import StepRunner
from mpirnn.models.precision import for_device as precision_for

CARRY_TAG = 32767  # the largest tag MPI guarantees; the schedule's tags are far below it


class Trainer(TrainerReports):
    def __init__(self, cfg, comms, plan, model, loader, info=None, validator=None):
        """`info`: what the model reads (mpirnn/inference/model_info.py), recorded in checkpoints;
        `validator`: the val-split evaluation (train.eval_every > 0), or None."""
        self.cfg, self.comms, self.plan, self.model, self.loader = cfg, comms, plan, model, loader
        self.info, self.validator = info, validator
        self.rank0 = comms.rank == 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optim.make_optimizer(self.params, cfg.train)
        self.sample = True  # the session turns the sample off when its prompt does not fit the vocabulary
        self.class_weights = None  # train.class_weights resolved (the session sets them), kept in checkpoints
        self.val_values: dict = {}  # val_loss (and val_accuracy, val_macro_f1) at the current step, when evaluated there
        self.runner = StepRunner(model, plan, comms, cfg.train.bucket_mb,
                                 precision_for(cfg.train.precision, model.device))
        self.sp = comms.axis["sp"]
        self.state = None  # carried states (stateful mode), on the first segment's ranks
        self.step = 0
        self.saved_step = None
        self.unsaved_step = None  # the step of the newest checkpoint write that failed, until one succeeds
        self.first_step = 0  # where this run started (a resumed run: its checkpoint's step)
        self.skipped = 0     # steps skipped for non-finite values (train.skip_nonfinite)
        self.owned: list[int] = []      # checkpoints of this run (resumed ones included): the only ones pruned
        self.replacing: list[int] = []  # another run's, deleted after our first save (checkpoint.overwrite)
        self.watchdog = Watchdog(cfg.train.comm_timeout_s, comms)
        self.lengths_seen: deque = deque(maxlen=50)   # recent steps' longest rows (labelled rows)
        self.signals = StopSignals()

    # -- checkpoints -------------------------------------------------------------------

    def restore(self, step: int) -> None:
        """Continue from checkpoint `step` (found and agreed on by the session)."""
        directory = self.cfg.checkpoint.dir
        path = f"{directory}/ckpt-{step:08d}.pt"
        # A branch never prunes the run it came from (docs/checkpoints.md).
        self.owned = [] if self.cfg.branched_from else [s for s in checkpoint.steps(directory) if s <= step]
        state, _ = checkpoint.load(directory, step)
        state = upgrade(state, list(self.model.serial_shapes))
        check_compatible(self.model, state, path)
        load_state(self.model, self.optimizer, state, self.plan)
        optim.apply_settings(self.optimizer, self.cfg.train)
        self.step = int(state["step"])
        if self.validator is not None:
            self.validator.recall_best(directory, self.owned)
        carried = state.get("carried")
        self.saved_step = step
        if carried is not None and self.plan.first_segment:
            width = slice(*self.plan.hidden) if self.plan.grid.tp > 1 else slice(None)
            self.state = carried[slice(*self.plan.layers), :, slice(*self.plan.rows), width].to(self.model.device)
        if self.rank0:
            print(f"mpirnn: resumed from step {self.step} of {self.cfg.train.steps} ({path})", flush=True)

    def check_checkpoint_dir(self) -> None:
        """checkpoint.dir is tested on rank 0 (the writer) before step 1, agreed on every rank: a
        directory that cannot be written would otherwise be found only at the first save, which
        with checkpoint.every = 0 is after the last step."""
        c = self.cfg.checkpoint
        values = sum(math.prod(shape) for shape in self.model.serial_shapes.values())
        size = checkpoint.expected_bytes(values, next(self.model.parameters()).element_size())
        warning = agree(self.comms.world, lambda: checkpoint.check_directory(c.dir, size) if self.rank0 else None)
        if warning:
            print(f"mpirnn: warning: {warning}", file=sys.stderr, flush=True)

    def refuse_fresh_start(self) -> None:
        """A fresh run never writes into (and so never prunes) another run's checkpoints unasked."""
        c = self.cfg.checkpoint
        found = agree(self.comms.world, lambda: checkpoint.refuse_fresh_start(c.dir, c.overwrite) if self.rank0 else [])
        if found and self.rank0:
            print(f"mpirnn: checkpoint.overwrite = true: the {len(found)} checkpoint(s) in {c.dir} (newest: step "
                  f"{found[-1]}) will be deleted once this run writes its first checkpoint", flush=True)
        self.replacing = found

    def save(self, last: bool = False) -> None:
        """Write this step's checkpoint; `last`: the run ends after it (its end, or a stop signal)."""
        c = self.cfg.checkpoint
        if not c.dir:
            return
        self.watchdog.begin(self.step, "writing a checkpoint", checkpoint=True)
        carried = None
        if self.cfg.train.stateful and self.plan.first_segment and self.state is not None:
            carried = carried_piece(self.state, self.plan, self.model.depth, self.cfg.data.batch_size,
                                    self.model.hidden)
        state = gather_state(self.comms, self.plan, self.model, self.optimizer, self.step, carried)
        failed = np.zeros(1, dtype=np.int8)
        if self.rank0:
            extra = {"dataset": self.info.to_json()} if self.info is not None else {}
            if self.class_weights is not None:
                # As resolved ("balanced": from the train split's counts), for evaluate's weighted loss.
                extra["class_weights"] = [float(w) for w in self.class_weights]
            if self.val_values:
                # best_metric beside the values: --best and a resumed run choose by the same measure.
                extra.update(self.val_values, best_metric=self.cfg.checkpoint.best_metric)
            try:
                checkpoint.save(c.dir, self.step, state, self.cfg.to_dict(), extra)
            except checkpoint.CheckpointWriteError as exc:
                failed[0] = 1
                self._say_unsaved(exc, last)
            else:
                self.owned = self._prune([*self.owned, self.step])
                checkpoint.remove(c.dir, [s for s in self.replacing if s not in self.owned])
        # Every rank learns the outcome, and nobody leaves before the checkpoint is on disk (srun
        # --kill-on-bad-exit would cut it short): the others wait here for rank 0's write.
        self.comms.world.Bcast(failed, root=0)
        if failed[0]:
            self.unsaved_step = self.step
        else:
            self.replacing = []
            self.saved_step, self.unsaved_step = self.step, None
        self.watchdog.end()

    def _say_unsaved(self, exc, last: bool) -> None:
        """A failed write: training goes on and the next checkpoint is tried as planned; the run's
        exit status says if the last one failed (docs/reliability.md, "A checkpoint that cannot be written")."""
        every, steps = self.cfg.checkpoint.every, self.cfg.train.steps
        due = min(self.step + every - self.step % every, steps) if every else steps
        then = "" if last else f"; training continues and the next checkpoint is due at step {due}"
        print(f"mpirnn: warning: {exc}; {self._newest_on_disk()}{then}", file=sys.stderr, flush=True)

    def _newest_on_disk(self) -> str:
        """(rank 0, which keeps the list) Where a user can resume from when the latest write failed."""
        newest = max(self.owned, default=None)
        return f"the newest checkpoint on disk is step {newest}" if newest else "no checkpoint of this run is on disk"

    def _prune(self, owned: list[int]) -> list[int]:
        """Keep the newest checkpoint.keep of this run's checkpoints, and the best (checkpoint.best_metric).

        The best step is never offered to prune, so no `keep` setting can delete it."""
        keep = self.cfg.checkpoint.keep
        best = self.validator.best_step if self.validator is not None else None
        if best is None or best not in owned or best in sorted(set(owned))[-keep:]:
            return checkpoint.prune(self.cfg.checkpoint.dir, owned, keep)
        return sorted([*checkpoint.prune(self.cfg.checkpoint.dir, [s for s in owned if s != best], keep), best])

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        if cfg.checkpoint.dir and self.step == 0 and not self.owned:
            self.refuse_fresh_start()
        self.first_step = self.step
        metrics = MetricsWriter(cfg.output.metrics, cfg.to_dict(), self.rank0, resumed_at=self.step)
        bar = self._progress()
        records, started = [], time.perf_counter()
        stopped = 0
        try:
            while self.step < cfg.train.steps:
                record, stopped = self.train_step()
                records.append(record)
                best = self._validate(record, due=not stopped)  # a stop writes its checkpoint at once
                if self.rank0 and (self.step % cfg.output.log_every == 0 or self.step == cfg.train.steps
                                   or "val_loss" in record):
                    metrics.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    bar.update(1)
                if stopped:
                    self.save(last=True)
                    break
                # A new best val loss is saved at once, so it can be kept; the last step's checkpoint
                # is written once, below.
                due = best or cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0
                if cfg.checkpoint.dir and due and self.step < cfg.train.steps:
                    self.save()
            else:
                if cfg.checkpoint.dir and self.saved_step != self.step:
                    self.save(last=True)
        finally:
            if bar is not None:
                bar.close()
        self.watchdog.begin(self.step, "writing the run's summary (gathering each rank's placement)", checkpoint=True)
        summary = self._summary(records, time.perf_counter() - started)
        if cfg.output.trace:
            self.comms.timer.tracer.write(cfg.output.trace)
            summary["trace"] = cfg.output.trace
        metrics.write(summary)
        metrics.close()
        self.watchdog.end()
        if stopped:
            self._say_stopped(stopped)
            return self._stop_status(stopped)
        if self.rank0 and records:
            self._report(summary)
        kept = [r for r in records if not r.get("skipped")]
        if records and (not kept or not math.isfinite(kept[-1]["loss"])):
            raise AgreedError(f"no finite loss at the end of the run (step {self.step}): the model has not trained; "
                              f"lower train.lr, set train.grad_clip, or check the data")
        if self.unsaved_step is not None:
            raise AgreedError(f"the last checkpoint (step {self.unsaved_step}) could not be written to "
                              f"{cfg.checkpoint.dir} (the warning above says why); {self._newest_on_disk()}")
        if records and self.sample and self.cfg.output.sample_bytes and self.model.vocab_size \
                and self.model.outputs is None:  # a language model (not a labelled task's)
            # Every rank takes part (the stages and tensor slices are gathered first) and waits for
            # rank 0 to finish, all under the watchdog: a hang here would otherwise never end.
            self.watchdog.begin(self.step, "printing the generated sample (output.sample_bytes)", checkpoint=True)
            faults.after_training(self.comms.rank)
            sample.print_sample(self.cfg, self.comms, self.plan, self.model)
            self.comms.world.Barrier()
            self.watchdog.end()
        return 0

    def train_step(self) -> tuple[dict, int]:
        cfg, loader = self.cfg, self.loader
        started = time.perf_counter()
        # A batch whose rows all end early is cut over the segments by its own length; the watchdog
        # gives a step of longer rows than usual time in proportion (labelled rows' lengths vary).
        length = loader.step_length(self.step)
        plan = None if length is None else self.plan.for_length(length)
        self.watchdog.begin(self.step + 1, "reading the batch", steps=self._work(length))
        self.comms.timer.take()
        faults.at_step(self.comms.rank, self.step + 1)
        with self.comms.timer.tracer.span("read batch"):
            inputs, targets = loader.batch(self.step, None if plan is None else plan.reads)
        state = self._initial_state()
        self.optimizer.zero_grad(set_to_none=True)
        lr = optim.lr_at(self.step + 1, cfg.train)
        optim.set_lr(self.optimizer, lr)
        self.watchdog.phase("in forward/backward (state and activation exchanges, gradient sums)")
        noise = DropoutKey(cfg.model.dropout, cfg.train.seed, self.step) if cfg.model.dropout else None
        loss, final = self.runner(inputs, targets, state, loader.norm(self.step), loader.lengths(self.step), noise,
                                  plan)
        self.watchdog.phase("agreeing on the gradient norm and the loss")
        grad_norm = reductions.gradient_norm(self.params, self.comms)
        finite = bool(torch.isfinite(loss)) and grad_norm == grad_norm and grad_norm != float("inf")
        total, nonfinite, stop = reductions.agree_on_step(self.comms, float(loss), finite, self.signals.pending)
        skipped = nonfinite > 0
        if skipped:
            self._nonfinite(loss)  # raises unless train.skip_nonfinite
            self.state = None  # the skipped step's final states may be non-finite: restart lanes from zero
        else:
            with self.comms.timer.tracer.span("optimizer"):
                if cfg.train.grad_clip > 0:
                    reductions.clip_gradients(self.params, cfg.train.grad_clip, grad_norm)
                self.optimizer.step()
            self._carry(final)
        self.step += 1
        elapsed = time.perf_counter() - started
        self.watchdog.end(elapsed)
        # This rank's own MPI wait within this step (always part of step_time_s), and its two kinds.
        split = self.comms.timer.split()
        record = {"step": self.step, "loss": total, "step_time_s": elapsed,
                  "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len / elapsed,
                  "comm_time_s": self.comms.timer.take(), **split, "grad_norm": grad_norm, "lr": lr,
                  **({"skipped": True} if skipped else {})}
        if hasattr(loader, "padding_fraction"):  # rows of different lengths
            record["padding_fraction"] = loader.padding_fraction(self.step - 1)
        return record, stop

    def _work(self, length: int | None) -> int:
        """How many usual steps' time a step of rows up to `length` long may take (1 for windows)."""
        if length is None:
            return 1
        usual = statistics.median(self.lengths_seen) if self.lengths_seen else length
        self.lengths_seen.append(length)
        return max(1, math.ceil(length / usual))

    def _validate(self, record: dict, due: bool = True) -> bool:
        """The val metrics after this step when due (into `record`); True at a new best (checkpoint.best_metric)."""
        self.val_values = {}  # recorded in a checkpoint's JSON only for the step it was computed at
        if not due or self.validator is None or not self.validator.due(self.step):
            return False
        self.watchdog.begin(self.step, "evaluating the val split", steps=self.validator.batch_count)
        self.val_values, better = self.validator.evaluate(self.step)
        self.watchdog.end()
        record.update(self.val_values)
        return better

    def _initial_state(self):
        rows = self.plan.local_rows
        layers = range(*self.plan.layers)
        if self.state is None or self.loader.restarts(self.step) or not self.plan.first_segment:
            return self.model.zero_state(rows, torch.empty(0, device=self.model.device), layers)
        return self.state

    def _carry(self, final) -> None:
        """Stateful mode: the last segment's final states become the first segment's next initial states."""
        if not self.cfg.train.stateful:
            return
        S = self.sp.size
        if S == 1:
            self.state = final.detach()
            return
        if self.plan.last_segment:
            transport.send(self.sp, final, dest=0, tag=CARRY_TAG)
        elif self.plan.first_segment:
            self.state = transport.recv(self.sp, final, source=S - 1, tag=CARRY_TAG)

    def _nonfinite(self, loss) -> None:
        """Stop (or skip) a step with a non-finite loss or gradient norm, naming where it came from.

        The gradient norm is global, so every rank sees it; the rank that caused it is the one
        whose own loss share is not finite (on the last pipeline stage).
        """
        bad = reductions.ranks_where(self.comms, not bool(torch.isfinite(loss)))
        where = (f"on rank(s) {', '.join(map(str, bad))}" if bad
                 else "in the summed gradients (every rank's own loss was finite)")
        t = self.cfg.train
        if t.skip_nonfinite:
            self.skipped += 1
            planned = t.steps - self.first_step
            if self.skipped > t.max_skipped * planned:
                raise AgreedError(f"{self.skipped} of this run's {planned} steps had non-finite losses or gradients "
                                  f"(the last, step {self.step + 1}, {where}), more than train.max_skipped = "
                                  f"{t.max_skipped:g} of them: the run is not training; lower train.lr, set "
                                  f"train.grad_clip, or check the data (python -m mpirnn.data validate)")
            if self.rank0:
                print(f"mpirnn: warning: step {self.step + 1} skipped: non-finite loss or gradients {where}",
                      file=sys.stderr, flush=True)
            return
        raise AgreedError(f"non-finite loss or gradients at step {self.step + 1} {where}: lower train.lr, set "
                          f"train.grad_clip, check the data (python -m mpirnn.data validate), or set "
                          f"train.skip_nonfinite = true; no checkpoint was written for this step")

    def close(self) -> None:
        self.runner.reducer.remove()
        if self.validator is not None:
            self.validator.close()
        # Not stopped: it watches the rest of the process's life (freeing the communicators, MPI_Finalize).
        self.watchdog.begin(self.step, "closing down (freeing communicators, MPI_Finalize)", checkpoint=True)
        self.signals.restore()
