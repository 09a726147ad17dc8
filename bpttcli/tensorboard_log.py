"""TensorBoard: the scalars of `metrics.jsonl`, as they are written, in `<run_dir>/tensorboard`.

Optional: `pip install 'bptt[tensorboard]'`, then `bptt train --tensorboard` and
`tensorboard --logdir runs`. Each numeric field of a metrics line becomes the scalar
`<kind>/<field>` (`train/loss`, `train/grad_norm_mean`, `eval/val_ppl`, ...) at its update step.
A resumed run hides the events logged after its checkpoint (TensorBoard's `purge_step`) and
logs again the lines it kept at that step (all of them if TensorBoard logging starts on resume), so
the board shows what metrics.jsonl holds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ConfigError
from .runlog import RunLog
from .runs import read_metrics

NOT_SCALARS = {"kind", "step"}


class TensorBoardLog:
    """A SummaryWriter fed by a RunLog (its `sink`) for the duration of a `with` block."""

    @staticmethod
    def require() -> None:
        """Fail in one line, before any work, when the optional extra is not installed."""
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'bptt[tensorboard]' "
                              "(or drop --tensorboard)")

    def __init__(self, run_dir: Path, log: RunLog, step: int):
        self.run_dir, self.log, self.step = Path(run_dir), log, step
        self.writer = None

    def __enter__(self) -> "TensorBoardLog":
        from torch.utils.tensorboard import SummaryWriter

        folder = self.run_dir / "tensorboard"
        since = self.step if folder.exists() else 0  # TensorBoard turned on at a resume: the whole run so far
        self.writer = SummaryWriter(str(folder), purge_step=since or None)
        for record in read_metrics(self.log.path):  # what metrics.jsonl kept (nothing yet in a new run)
            if record["step"] >= since:
                self.write(record)
        self.log.sink = self.write
        return self

    def __exit__(self, *exc) -> None:
        self.log.sink = None
        self.writer.close()

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

