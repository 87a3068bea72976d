"""The training loop: steps, metrics, progress, checkpoints, signals and non-finite checks.

Per step every rank runs its forward/backward (mpirnn.parallel.step), then one small
allreduce agrees on the global loss, non-finite values and stop signals, so every rank
takes the same decision at the same step boundary.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from mpirnn.distributed import placement
from mpirnn.training import checkpoint, faults
from mpirnn.distributed.agreement import AgreedError, agree
from mpirnn.distributed.transport import host_view
from mpirnn.training.metrics import MetricsWriter
from mpirnn.parallel.step import StepRunner
from mpirnn.distributed.watchdog import Watchdog

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
CARRY_TAG = 32767  # the largest tag MPI guarantees; the pipeline's tags are small (2m, 2m+1)


class Trainer:
    def __init__(self, cfg, comms, model, loader):
        self.cfg, self.comms, self.model, self.loader = cfg, comms, model, loader
        self.rank0 = comms.rank == 0
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        self.runner = StepRunner(model, comms, loader.rows[1] - loader.rows[0],
                                 cfg.parallel.microbatches, cfg.train.bucket_mb)
        self.sp = comms.axis["sp"]
        self.first_segment = comms.coords["sp"] == 0
        self.state = None  # carried states (stateful mode), on the first segment's ranks
        self.step = 0
        self.saved_step = None
        self.owned: list[int] = []     # checkpoints of this run (resumed ones included): the only ones pruned
        self.replacing: list[int] = []  # another run's, deleted after our first save (checkpoint.overwrite)
        self.stop_signal = 0       # set by the handler on this rank
        self.stop_signal_seen = 0  # agreed over all ranks at the last step boundary
        self.watchdog = Watchdog(cfg.train.comm_timeout_s, comms)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    # -- set-up ------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        # Only a flag: the ranks agree on it at the next step boundary.
        self.stop_signal = signum

    def resume(self) -> None:
        c = self.cfg.checkpoint
        step = np.array([-1], dtype=np.int64)
        found = agree(self.comms.world, self._newest_checkpoint)  # rank 0 looks; a failure there ends all
        step[0] = -1 if found is None else found
        self.comms.world.Bcast(step, root=0)
        if step[0] < 0:
            if self.rank0:
                print(f"mpirnn: no checkpoint in {c.dir}; starting from step 0", file=sys.stderr, flush=True)
            return
        self.owned = [s for s in checkpoint.steps(Path(c.dir)) if s <= step[0]]
        state, meta = agree(self.comms.world, self._load, int(step[0]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        carried = state.get("carried")
        if carried is not None and self.first_segment:
            self.state = carried[:, :, slice(*self.loader.rows)].to(self.model.head.weight.device)

    def refuse_fresh_start(self) -> None:
        """A fresh run never writes into (and so never prunes) another run's checkpoints unasked."""
        c = self.cfg.checkpoint
        found = agree(self.comms.world, lambda: checkpoint.refuse_fresh_start(c.dir, c.overwrite) if self.rank0 else [])
        if found and self.rank0:
            print(f"mpirnn: checkpoint.overwrite = true: the {len(found)} checkpoint(s) in {c.dir} (newest: step "
                  f"{found[-1]}) will be deleted once this run writes its first checkpoint", file=sys.stderr, flush=True)
        self.replacing = found

    def _newest_checkpoint(self):
        if not self.rank0:
            return None
        checkpoint.remove_stale_temporaries(self.cfg.checkpoint.dir)
        return checkpoint.newest_valid(self.cfg.checkpoint.dir)

    def _load(self, step):
        state, meta = checkpoint.load(self.cfg.checkpoint.dir, step)
        checkpoint.check_compatible(self.model, state, f"{self.cfg.checkpoint.dir}/ckpt-{step:08d}.pt")
        return state, meta

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        if cfg.checkpoint.resume:
            self.resume()
        elif cfg.checkpoint.dir:
            self.refuse_fresh_start()
        metrics = MetricsWriter(cfg.output.metrics, cfg.to_dict(), self.rank0, resumed_at=self.step)
        bar = self._progress()
        losses, started = [], time.perf_counter()
        tokens = cfg.data.batch_size * cfg.data.seq_len
        try:
            while self.step < cfg.train.steps:
                record = self.train_step()
                losses.append(record["loss"])
                if self.rank0 and (self.step % cfg.output.log_every == 0 or self.step == cfg.train.steps):
                    metrics.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    bar.update(1)
                if self.stop_signal_seen:
                    self.save()
                    if self.rank0:
                        print(f"mpirnn: stopped by signal {signal.Signals(self.stop_signal_seen).name} after step "
                              f"{self.step}; checkpoint saved in {cfg.checkpoint.dir or '(no checkpoint.dir set)'}; "
                              f"resume with --set checkpoint.resume=true", file=sys.stderr, flush=True)
                    return 128 + self.stop_signal_seen
                if cfg.checkpoint.dir and cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save()
            if cfg.checkpoint.dir and self.saved_step != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - started
        summary = {"summary": True, "steps": self.step, "steps_run": len(losses),
                   "first_loss": losses[0] if losses else None,
                   "final_loss": losses[-1] if losses else None, "time_s": elapsed,
                   "tokens_per_s": tokens * len(losses) / elapsed if losses else 0.0,
                   "grid": dict(zip(("dp", "sp", "pp", "tp"), self.comms.grid.shape)),
                   "world_size": self.comms.world.size,
                   "placement": placement.gather(self.comms, placement.this_rank(self.comms, self.model.head.weight.device))}
        metrics.write(summary)
        metrics.close()
        if self.rank0 and losses:
            self._report(summary)
        return 0

    def train_step(self) -> dict:
        cfg, loader = self.cfg, self.loader
        self.watchdog.begin(self.step)
        started = time.perf_counter()
        self.comms.timer.take()
        self.watchdog.phase("reading the batch")
        faults.at_step(self.comms.rank, self.step + 1)
        inputs, targets = loader.batch(self.step)
        state = self._initial_state(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        self.watchdog.phase("forward/backward (boundary-state exchange and gradient allreduce)")
        loss, final = self.runner(inputs, targets, state, float(loader.elements))
        grad_norm = self._grad_norm()
        self.watchdog.phase("agreeing on the loss")
        # Two tiny allreduces agree on what every rank needs at the boundary: the loss and
        # how many ranks saw non-finite values (SUM); a pending stop signal and comm time (MAX).
        finite = bool(torch.isfinite(loss)) and np.isfinite(grad_norm)
        shared = np.array([float(loss), 0.0 if finite else 1.0], dtype=np.float64)
        flags = np.array([self.stop_signal, self.comms.timer.seconds], dtype=np.float64)
        self.comms.world.Allreduce(MPI.IN_PLACE, shared, MPI.SUM)
        self.comms.world.Allreduce(MPI.IN_PLACE, flags, MPI.MAX)
        skipped = shared[1] > 0
        if skipped:
            self._nonfinite(loss, grad_norm)  # raises unless train.skip_nonfinite
            self.state = None  # the skipped step's final states may be non-finite: restart lanes from zero
        else:
            self.optimizer.step()
            self._carry(final)
        self.stop_signal_seen = int(flags[0])
        self.step += 1
        self.watchdog.end()
        elapsed = time.perf_counter() - started
        return {"step": self.step, "loss": float(shared[0]), "step_time_s": elapsed,
                "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len / elapsed,
                "comm_time_s": float(flags[1]), "grad_norm": grad_norm, **({"skipped": True} if skipped else {})}

    def _initial_state(self, inputs):
        rows = inputs.shape[0]
        if self.state is None or self.loader.restarts(self.step) or not self.first_segment:
            return self.model.zero_state(rows, inputs)
        return self.state

    def _carry(self, final) -> None:
        """Stateful mode: the last segment's final states become the first segment's next initial states."""
        if not self.cfg.train.stateful:
            return
        S = self.sp.size
        if S == 1:
            self.state = final.detach()
            return
        if self.sp.rank == S - 1:
            self.sp.Send(host_view(final.detach().cpu().contiguous()), dest=0, tag=CARRY_TAG)
        elif self.sp.rank == 0:
            like = self.model.zero_state(final.shape[2], final).cpu()
            self.sp.Recv(host_view(like), source=S - 1, tag=CARRY_TAG)
            self.state = like.to(final.device)

    def _grad_norm(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.train.grad_clip
        if clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, clip))
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))

    def _nonfinite(self, loss, grad_norm) -> None:
        """Stop (or skip) a step with a non-finite loss or gradient norm, naming where it came from.

        The gradient norm is taken after the allreduce, so it is the same on every rank; the
        rank that caused it is the one whose own loss share is not finite.
        """
        mine = np.array([0 if bool(torch.isfinite(loss)) else 1], dtype=np.int8)
        every = np.zeros(self.comms.world.size, dtype=np.int8)
        self.comms.world.Allgather(mine, every)
        where = (f"on rank(s) {', '.join(str(r) for r in np.flatnonzero(every))}" if every.any()
                 else "in the summed gradients (every rank's own loss was finite)")
        if self.cfg.train.skip_nonfinite:
            if self.rank0:
                print(f"mpirnn: warning: step {self.step + 1} skipped: non-finite loss or gradients {where}",
                      file=sys.stderr, flush=True)
            return
        raise AgreedError(f"non-finite loss or gradients at step {self.step + 1} {where}: lower train.lr, set train.grad_clip, "
                          f"check the data (python -m mpirnn.data validate), or set train.skip_nonfinite = true; "
                          f"no checkpoint was written for this step")

    # -- checkpoints and reports ----------------------------------------------------------

    def save(self) -> None:
        c = self.cfg.checkpoint
        if not c.dir:
            return
        carried = self._gather_carried()
        if self.rank0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "step": self.step}
            if carried is not None:
                state["carried"] = carried
            checkpoint.save(c.dir, self.step, state, self.cfg.to_dict())
            self.owned = checkpoint.prune(c.dir, [*self.owned, self.step], c.keep)
            checkpoint.remove(c.dir, [s for s in self.replacing if s not in self.owned])
        self.replacing = []
        self.saved_step = self.step
        # Nobody exits before the checkpoint is on disk (srun --kill-on-bad-exit would cut it short).
        self.comms.world.Barrier()

    def _gather_carried(self):
        """Stateful mode: the carried states of all rows, gathered on rank 0 (first segments hold them)."""
        if not (self.cfg.train.stateful and self.first_segment) or self.state is None:
            return None
        dp = self.comms.axis["dp"]  # the first segments of every dp group, rank 0 among them
        local = self.state.detach().cpu().permute(2, 0, 1, 3).contiguous()  # rows first, for Gatherv
        per_row = local[0].numel() if local.shape[0] else 0
        counts = np.zeros(dp.size, dtype=np.int64)
        dp.Allgather(np.array([local.numel()], dtype=np.int64), counts)
        whole = torch.empty((int(counts.sum()) // max(per_row, 1), *local.shape[1:]), dtype=local.dtype)
        dp.Gatherv(host_view(local), [host_view(whole), counts] if dp.rank == 0 else None, root=0)
        return whole.permute(1, 2, 0, 3).contiguous() if dp.rank == 0 else None

    def _progress(self):
        if not (self.rank0 and self.cfg.output.progress):
            return None
        from tqdm import tqdm
        return tqdm(total=self.cfg.train.steps, initial=self.step, desc="train", unit="step",
                    file=sys.stdout, dynamic_ncols=True, mininterval=0.5)

    def _report(self, summary) -> None:
        out = self.cfg.output
        print(f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} over the {summary['steps_run']} "
              f"steps run (of {summary['steps']}); {summary['tokens_per_s']:.0f} tokens/s on {summary['world_size']} rank(s); "
              f"metrics in {out.metrics}", flush=True)
        if out.sample_bytes and self.model.vocab_size:
            prompt = torch.tensor(list(out.sample_prompt.encode()), dtype=torch.long,
                                  device=self.model.head.weight.device)
            generator = torch.Generator().manual_seed(self.cfg.train.seed)
            tokens = self.model.generate(prompt, out.sample_bytes, generator=generator)
            text = bytes(prompt.tolist() + tokens.tolist()).decode("utf-8", "replace")
            print(f"sample:\n{text}", flush=True)

    def close(self) -> None:
        self.runner.reducer.remove()
        self.watchdog.stop()
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
