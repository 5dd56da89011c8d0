"""Join the gang, train, leave the gang."""

from __future__ import annotations

from kubetune.contract import TrainerPaths
from kubetune_trainer.config import JobConfig
from kubetune_trainer.distributed.env import init_distributed, shutdown
from kubetune_trainer.errors import TrainerError
from kubetune_trainer.trainer import RunResult, Trainer


def run_training(cfg: JobConfig, paths: TrainerPaths) -> RunResult:
    env = init_distributed(cfg.distributed.strategy, cfg.distributed.world_size)
    trainer = Trainer(cfg, paths, env)
    ok = False
    try:
        result = trainer.run()
        ok = True
        return result
    except TrainerError as exc:
        trainer.progress.update(state="failed", message=exc.message[:1000])
        raise
    finally:
        if trainer.server is not None:
            trainer.server.stop()
        trainer.progress.stop()
        trainer.stop.restore()
        if ok:
            shutdown(env)
        # On failure the process group is left as is: peers may be blocked in a
        # collective (a barrier would hang) and destroying a gloo group under them aborts
        # the process, replacing our exit code. __main__ exits with os._exit instead.
