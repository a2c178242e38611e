"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same result as one process.

Tiny models, a few steps.  Each case runs the real launcher (``torchrun
--standalone --nproc_per_node 2``) on a script that trains with
:func:`tficlib.train.train`, and compares the weights with the same run in
one process: a hyperprior codec (noisy latents, entropy-bottleneck quantiles,
auxiliary loss) and a DnCNN (BatchNorm in training mode, random crops).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tficlib import artifacts

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from tficlib import artifacts, codec, distributed, train as T
    from tficlib.dncnn import DnCNN, PatchCrops
    from tficlib.objectives import Dequantization, RateDistortion

    kind, out, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ctx = distributed.init_from_env("cpu")
    writes = []
    _save = artifacts.save_checkpoint
    def counting_save(path, *a, **k):
        writes.append(str(path))
        return _save(path, *a, **k)
    artifacts.save_checkpoint = counting_save

    g = torch.Generator().manual_seed(0)
    if kind == "codec":
        data = [(torch.rand(3, 64, 64, generator=g), f"w{i}") for i in range(8)]
        torch.manual_seed(0)
        model = codec.build_model("bmshj2018-hyperprior", N=8, M=8)

        class Slowed(RateDistortion):
            def __call__(self, model, batch):
                time.sleep(slow)  # time for the parent to kill the run mid-way
                return super().__call__(model, batch)

        objective = Slowed(0.01)
        kw = dict(steps=12, batch_size=4, lr=1e-3, aux_steps=3, checkpoint_every=4)
    else:
        class Patches:
            items = [{"clean": torch.rand(3, 64, 64, generator=g), "degraded": torch.rand(3, 64, 64, generator=g)}
                     for _ in range(6)]
            def __len__(self): return len(self.items)
            def __getitem__(self, i): return self.items[i]
        data = PatchCrops(Patches(), crop=32, grid=16)
        torch.manual_seed(0)
        model = DnCNN(depth=4, features=8, zero_init=False)
        objective = Dequantization(0.8)
        kw = dict(steps=12, batch_size=4, lr=1e-3, checkpoint_every=4)
    result = T.train(model, objective, data, checkpoint=out + ".ckpt", seed=5, progress=False, **kw)
    with open(f"{out}.rank{ctx.rank}.json", "w") as fh:
        json.dump({"writes": writes, "resumed_from": result.resumed_from, "world": ctx.world,
                   "log": [r["loss"] for r in result.log]}, fh)
    if ctx.rank == 0:
        torch.save({k: v for k, v in result.model.state_dict().items()}, out + ".final")
    if ctx.distributed:
        distributed.shutdown()
    """
)


def _launch(tmp_path, kind: str, out, ranks: int, slow: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        cmd = [sys.executable, str(script), kind, str(out), str(slow)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(script), kind, str(out), str(slow)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _final(path) -> dict:
    return torch.load(str(path) + ".final", weights_only=True)


def _close(a: dict, b: dict, atol: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point() and a[k].numel():
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        elif a[k].shape == b[k].shape:
            assert torch.equal(a[k], b[k]), k
    assert worst <= atol, worst
    return worst


@pytest.mark.parametrize("kind", ["codec", "dncnn"])
def test_two_ranks_train_like_one_process_and_only_rank_0_writes(tmp_path, kind):
    one, two = tmp_path / "one", tmp_path / "two"
    _finish(_launch(tmp_path, kind, one, 1))
    _finish(_launch(tmp_path, kind, two, 2))
    worst = _close(_final(one), _final(two))
    assert worst < 1e-5
    r0, r1 = (json.loads((tmp_path / f"two.rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["writes"] and not r1["writes"]  # one checkpoint writer
    single = json.loads((tmp_path / "one.rank0.json").read_text())
    # the logged losses are the whole batch's (averaged over the ranks), as in one process
    assert r0["log"] == pytest.approx(single["log"], rel=1e-4) and r1["log"] == r0["log"]
    meta = artifacts.load_checkpoint(str(two) + ".ckpt")["meta"]
    assert meta["finished"] and meta["ranks"] == 2


def test_kill_two_ranks_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_launch(tmp_path, "codec", full, 2))
    victim = _launch(tmp_path, "codec", killed, 2, slow=0.4)
    deadline = time.time() + 240
    ckpt = tmp_path / "killed.ckpt"
    while time.time() < deadline:
        if ckpt.exists() and artifacts.load_checkpoint(ckpt)["meta"]["step"] >= 4:
            break
        time.sleep(0.2)
    else:
        victim.kill()
        pytest.fail("the run never wrote a checkpoint")
    import psutil

    procs = [psutil.Process(victim.pid), *psutil.Process(victim.pid).children(recursive=True)]
    for p in procs:  # the launcher and both ranks (torchrun starts its workers in their own sessions)
        p.send_signal(signal.SIGKILL)
    victim.communicate()
    step = artifacts.load_checkpoint(ckpt)["meta"]["step"]
    assert 4 <= step < 12
    _finish(_launch(tmp_path, "codec", killed, 2))
    resumed = json.loads((tmp_path / "killed.rank0.json").read_text())
    assert resumed["resumed_from"] == step
    _close(_final(full), _final(killed), atol=0.0)  # bit-identical: resumed runs follow the same path
