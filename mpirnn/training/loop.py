"""The training loop: steps, metrics, progress, checkpoints, stop signals and non-finite checks.

Per step every rank runs its forward/backward (mpirnn/parallel/step.py), the gradient norm
is summed over the parts of the model (mpirnn/distributed/reductions.py), and one small
agreement over the world settles the loss, non-finite values and stop signals, so every
rank takes the same decision at the same step boundary. The learning rate of each step
comes from mpirnn/training/optim.py; with train.eval_every the val loss is computed between
steps (mpirnn/training/validation.py) and the best checkpoint by val loss is kept.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import torch

from mpirnn.distributed import placement, reductions
from mpirnn.distributed.agreement import AgreedError, agree
from mpirnn.distributed import transport
from mpirnn.distributed.watchdog import Watchdog
from mpirnn import checkpoint, faults
from mpirnn.training import optim, sample
from mpirnn.training.metrics import MetricsWriter
from mpirnn.training.signals import StopSignals, name
from mpirnn.training.state import carried_piece, check_compatible, gather_state, load_state, upgrade
from mpirnn.parallel.step import StepRunner

CARRY_TAG = 32767  # the largest tag MPI guarantees; the schedule's tags are far below it


class Trainer:
    def __init__(self, cfg, comms, plan, model, loader, info=None, validator=None):
        """`info`: what the model reads (mpirnn/inference/model_info.py), recorded in checkpoints;
        `validator`: the val-split evaluation (train.eval_every > 0), or None."""
        self.cfg, self.comms, self.plan, self.model, self.loader = cfg, comms, plan, model, loader
        self.info, self.validator = info, validator
        self.rank0 = comms.rank == 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optim.make_optimizer(self.params, cfg.train)
        self.sample = True  # the session turns the sample off when its prompt does not fit the vocabulary
        self.val_loss = None  # at the current step, when evaluated there
        self.runner = StepRunner(model, plan, comms, cfg.train.bucket_mb)
        self.sp = comms.axis["sp"]
        self.state = None  # carried states (stateful mode), on the first segment's ranks
        self.step = 0
        self.saved_step = None
        self.owned: list[int] = []      # checkpoints of this run (resumed ones included): the only ones pruned
        self.replacing: list[int] = []  # another run's, deleted after our first save (checkpoint.overwrite)
        self.watchdog = Watchdog(cfg.train.comm_timeout_s, comms)
        self.signals = StopSignals()

    # -- checkpoints -------------------------------------------------------------------

    def restore(self, step: int) -> None:
        """Continue from checkpoint `step` (found and agreed on by the session)."""
        directory = self.cfg.checkpoint.dir
        path = f"{directory}/ckpt-{step:08d}.pt"
        self.owned = [s for s in checkpoint.steps(directory) if s <= step]
        state, _ = checkpoint.load(directory, step)
        state = upgrade(state, list(self.model.serial_shapes))
        check_compatible(self.model, state, path)
        load_state(self.model, self.optimizer, state, self.plan)
        optim.apply_settings(self.optimizer, self.cfg.train)
        self.step = int(state["step"])
        if self.validator is not None:
            self.validator.recall_best(directory, self.owned)
        carried = state.get("carried")
        if carried is not None and self.plan.first_segment:
            width = slice(*self.plan.hidden) if self.plan.grid.tp > 1 else slice(None)
            self.state = carried[slice(*self.plan.layers), :, slice(*self.plan.rows), width].to(self.model.device)
        if self.rank0:
            print(f"mpirnn: resumed from step {self.step} of {self.cfg.train.steps} ({path})", flush=True)

    def refuse_fresh_start(self) -> None:
        """A fresh run never writes into (and so never prunes) another run's checkpoints unasked."""
        c = self.cfg.checkpoint
        found = agree(self.comms.world, lambda: checkpoint.refuse_fresh_start(c.dir, c.overwrite) if self.rank0 else [])
        if found and self.rank0:
            print(f"mpirnn: checkpoint.overwrite = true: the {len(found)} checkpoint(s) in {c.dir} (newest: step "
                  f"{found[-1]}) will be deleted once this run writes its first checkpoint", flush=True)
        self.replacing = found

    def save(self) -> None:
        c = self.cfg.checkpoint
        if not c.dir:
            return
        self.watchdog.begin(self.step, "writing a checkpoint", checkpoint=True)
        carried = None
        if self.cfg.train.stateful and self.plan.first_segment and self.state is not None:
            carried = carried_piece(self.state, self.plan, self.model.depth, self.cfg.data.batch_size,
                                    self.model.hidden)
        state = gather_state(self.comms, self.plan, self.model, self.optimizer, self.step, carried)
        if self.rank0:
            extra = {"dataset": self.info.to_json()} if self.info is not None else {}
            if self.val_loss is not None:
                extra["val_loss"] = self.val_loss
            checkpoint.save(c.dir, self.step, state, self.cfg.to_dict(), extra)
            self.owned = self._prune([*self.owned, self.step])
            checkpoint.remove(c.dir, [s for s in self.replacing if s not in self.owned])
        self.replacing = []
        self.saved_step = self.step
        # Nobody exits before the checkpoint is on disk (srun --kill-on-bad-exit would cut it short).
        self.comms.world.Barrier()
        self.watchdog.end()

    def _prune(self, owned: list[int]) -> list[int]:
        """Keep the newest checkpoint.keep of this run's checkpoints, and the best by val loss.

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
                    self.save()
                    break
                if cfg.checkpoint.dir and (best or cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0):
                    self.save()  # a new best val loss is saved at once, so it can be kept
            else:
                if cfg.checkpoint.dir and self.saved_step != self.step:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        summary = self._summary(records, time.perf_counter() - started)
        if cfg.output.trace:
            self.comms.timer.tracer.write(cfg.output.trace)
            summary["trace"] = cfg.output.trace
        metrics.write(summary)
        metrics.close()
        if stopped:
            self._say_stopped(stopped)
            return self._stop_status(stopped)
        if self.rank0 and records:
            self._report(summary)
        if records and self.sample and self.cfg.output.sample_bytes and self.model.vocab_size:
            sample.print_sample(self.cfg, self.comms, self.plan, self.model, self.optimizer, self.step)
        return 0

    def train_step(self) -> tuple[dict, int]:
        cfg, loader = self.cfg, self.loader
        started = time.perf_counter()
        self.watchdog.begin(self.step + 1, "reading the batch")
        self.comms.timer.take()
        faults.at_step(self.comms.rank, self.step + 1)
        with self.comms.timer.tracer.span("read batch"):
            inputs, targets = loader.batch(self.step)
        state = self._initial_state()
        self.optimizer.zero_grad(set_to_none=True)
        lr = optim.lr_at(self.step + 1, cfg.train)
        optim.set_lr(self.optimizer, lr)
        self.watchdog.phase("in forward/backward (state and activation exchanges, gradient sums)")
        loss, final = self.runner(inputs, targets, state, float(loader.elements))
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
        return record, stop

    def _validate(self, record: dict, due: bool = True) -> bool:
        """The val loss after this step when it is due (into `record`); True at a new best."""
        self.val_loss = None  # recorded in a checkpoint's JSON only for the step it was computed at
        if not due or self.validator is None or not self.validator.due(self.step):
            return False
        self.val_loss, better = self.validator.evaluate(self.step)
        record["val_loss"] = self.val_loss
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
        if self.cfg.train.skip_nonfinite:
            if self.rank0:
                print(f"mpirnn: warning: step {self.step + 1} skipped: non-finite loss or gradients {where}",
                      file=sys.stderr, flush=True)
            return
        raise AgreedError(f"non-finite loss or gradients at step {self.step + 1} {where}: lower train.lr, set "
                          f"train.grad_clip, check the data (python -m mpirnn.data validate), or set "
                          f"train.skip_nonfinite = true; no checkpoint was written for this step")

    # -- reports -----------------------------------------------------------------------

    def _grid_text(self) -> str:
        return " ".join(f"{axis}={value}" for axis, value in zip(("dp", "sp", "pp", "tp"), self.comms.grid.shape))

    def _summary(self, records: list[dict], elapsed: float) -> dict:
        cfg, losses = self.cfg, [r["loss"] for r in records]
        return {"summary": True, "steps": self.step, "steps_run": len(records),
                "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                "time_s": elapsed,
                "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len * len(records) / elapsed if records else 0.0,
                "grid": dict(zip(("dp", "sp", "pp", "tp"), self.comms.grid.shape)),
                "microbatches": self.plan.microbatches, "chunks": self.plan.chunks,
                "world_size": self.comms.world.size, "run": cfg.output.run_name,
                **self._loss_fields(losses[-1] if losses else None),
                "placement": placement.gather(self.comms, placement.this_rank(self.comms, self.model.device))}

    def _loss_fields(self, final_loss) -> dict:
        """What the loss is, bits per byte where they apply, and the best val loss."""
        fields = {}
        if self.info is not None:
            fields = {"loss_name": self.info.loss_name, "loss_unit": self.info.loss_unit}
            if self.info.byte_tokens:
                fields["final_bits_per_byte"] = self.info.bits_per_byte(final_loss)
        if self.validator is not None:
            best = self.validator.best_loss
            fields.update(best_val_loss=best, best_val_step=self.validator.best_step)
            if self.info is not None and self.info.byte_tokens:
                fields["best_val_bits_per_byte"] = self.info.bits_per_byte(best)
        return fields

    def _say_stopped(self, signum: int) -> None:
        if not self.rank0:
            return
        where = (f"checkpoint saved in {self.cfg.checkpoint.dir}; resume with: {self._resume_command()}"
                 if self.cfg.checkpoint.dir else "no checkpoint.dir was set, so nothing was saved")
        print(f"mpirnn: stopped by signal {name(signum)} after step {self.step}; {where}", file=sys.stderr, flush=True)

    def _stop_status(self, signum: int) -> int:
        """128 + signal; but 0 under slurm/job.sh once a checkpoint is saved, with the stop written to
        $MPIRNN_STOP_FILE instead: srun's --kill-on-bad-exit kills every rank still finishing as soon as
        the first exits non-zero, which would turn a clean stop into a killed step. Each node's first
        rank writes it, so the batch host (which runs ranks too) sees it at once even on a network
        file system; if it cannot be written, 128 + signal still tells job.sh."""
        marker = os.environ.get("MPIRNN_STOP_FILE")
        if not marker or not self.cfg.checkpoint.dir:
            return 128 + signum
        wrote = True
        if self.comms.local_rank == 0:
            try:
                Path(marker).write_text(f"{name(signum)} {self.step}\n")
            except OSError as exc:
                print(f"mpirnn: warning: could not write MPIRNN_STOP_FILE {marker}: {exc}", file=sys.stderr,
                      flush=True)
                wrote = False
        return 0 if wrote else 128 + signum

    def _resume_command(self) -> str:
        args = [a for a in sys.argv[1:] if "checkpoint.resume" not in a]
        launcher = f"mpirun -n {self.comms.world.size} " if self.comms.world.size > 1 else ""
        return f"{launcher}python -m mpirnn.train {shlex.join(args)} --set checkpoint.resume=true".replace("  ", " ")

    def _progress(self):
        if not (self.rank0 and self.cfg.output.progress):
            return None
        from tqdm import tqdm
        return tqdm(total=self.cfg.train.steps, initial=self.step, desc="train", unit="step",
                    file=sys.stdout, dynamic_ncols=True, mininterval=0.5)

    def _report(self, summary) -> None:
        out = self.cfg.output
        unit = f" ({summary['loss_name']}, {summary['loss_unit']})" if "loss_unit" in summary else ""
        print(f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}{unit} over the {summary['steps_run']} "
              f"steps run (of {summary['steps']}); {summary['tokens_per_s']:.0f} tokens/s on "
              f"{summary['world_size']} rank(s), grid {self._grid_text()}; run {out.run_name}, metrics in "
              f"{out.metrics}", flush=True)
        if summary.get("best_val_loss") is not None:
            bpb = summary.get("best_val_bits_per_byte")
            print(f"best val_loss {summary['best_val_loss']:.4f}{f' ({bpb:.3f} bits per byte)' if bpb else ''} at "
                  f"step {summary['best_val_step']}", flush=True)

    def close(self) -> None:
        self.runner.reducer.remove()
        if self.validator is not None:
            self.validator.close()
        self.watchdog.stop()
        self.signals.restore()
