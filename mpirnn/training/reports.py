"""What a training run tells its user: the progress bar, the summary line of the metrics file,
the final report, and how a stopped run says where it stopped and with which status.

A mixin of the Trainer (mpirnn/training/loop.py): these read its state (config, step, records)
and decide nothing about training.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from mpirnn.distributed import placement
from mpirnn.training.signals import name

LOG_PROGRESS_INTERVAL_S = 60.0  # the progress bar's redraws when stderr is not a terminal


class TrainerReports:
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
                "world_size": self.comms.world.size, "run": cfg.output.run_name, "skipped_steps": self.skipped,
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
            if self.validator.metric != "val_loss":
                fields[f"best_{self.validator.metric}"] = self.validator.best_value
            if self.info is not None and self.info.byte_tokens:
                fields["best_val_bits_per_byte"] = self.info.bits_per_byte(best)
        return fields

    def _say_stopped(self, signum: int) -> None:
        if not self.rank0:
            return
        if not self.cfg.checkpoint.dir:
            where = "no checkpoint.dir was set, so nothing was saved"
        elif self.unsaved_step is not None:
            where = (f"its checkpoint could not be written (the warning above says why); {self._newest_on_disk()}"
                     + (f"; resume with: {self._resume_command()}" if self.owned else ""))
        else:
            where = f"checkpoint saved in {self.cfg.checkpoint.dir}; resume with: {self._resume_command()}"
        print(f"mpirnn: stopped by signal {name(signum)} after step {self.step}; {where}", file=sys.stderr, flush=True)

    def _stop_status(self, signum: int) -> int:
        """128 + signal; but 0 under slurm/job.sh once a checkpoint is saved, with the stop written to
        $MPIRNN_STOP_FILE instead: srun's --kill-on-bad-exit kills every rank still finishing as soon as
        the first exits non-zero, which would turn a clean stop into a killed step. Each node's first
        rank writes it, so the batch host (which runs ranks too) sees it at once even on a network
        file system; if it cannot be written, 128 + signal still tells job.sh."""
        marker = os.environ.get("MPIRNN_STOP_FILE")
        if self.unsaved_step is not None:
            return 1  # its checkpoint failed: not a clean stop that slurm/job.sh may requeue
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
        """The bar on stderr (stdout keeps the results). In a log file rather than a terminal (a
        Slurm job's output) it redraws at most once a minute instead of twice a second."""
        if not (self.rank0 and self.cfg.output.progress):
            return None
        from tqdm import tqdm
        terminal = sys.stderr.isatty()
        return tqdm(total=self.cfg.train.steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                    dynamic_ncols=terminal, mininterval=0.5 if terminal else LOG_PROGRESS_INTERVAL_S,
                    maxinterval=10.0 if terminal else LOG_PROGRESS_INTERVAL_S)

    def _report(self, summary) -> None:
        out = self.cfg.output
        unit = f" ({summary['loss_name']}, {summary['loss_unit']})" if "loss_unit" in summary else ""
        print(f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}{unit} over the {summary['steps_run']} "
              f"steps run (of {summary['steps']}); {summary['tokens_per_s']:.0f} tokens/s on "
              f"{summary['world_size']} rank(s), grid {self._grid_text()}; run {out.run_name}, metrics in "
              f"{out.metrics}", flush=True)
        metric = self.cfg.checkpoint.best_metric
        if metric != "val_loss" and summary.get(f"best_{metric}") is not None:
            print(f"best {metric} {summary[f'best_{metric}']:.4f} (val_loss {summary['best_val_loss']:.4f}) at step "
                  f"{summary['best_val_step']}", flush=True)
        elif summary.get("best_val_loss") is not None:
            bpb = summary.get("best_val_bits_per_byte")
            print(f"best val_loss {summary['best_val_loss']:.4f}{f' ({bpb:.3f} bits per byte)' if bpb else ''} at "
                  f"step {summary['best_val_step']}", flush=True)
