"""Issue 7: a training run killed with SIGKILL resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tficlib import artifacts

SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from tficlib import codec, train as T
    from tficlib.objectives import RateDistortion

    ckpt, slow = sys.argv[1], float(sys.argv[2])
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 64, 64, generator=g), f"w{i}") for i in range(8)]
    torch.manual_seed(0)
    model = codec.build_model("bmshj2018-hyperprior", N=8, M=8)

    class Slow(RateDistortion):
        def __call__(self, model, batch):
            time.sleep(slow)  # gives the parent time to kill us mid-run
            return super().__call__(model, batch)

    result = T.train(model, Slow(0.01), data, steps=24, checkpoint=ckpt, batch_size=2, lr=1e-3, seed=3,
                     checkpoint_every=4, aux_steps=5, progress=False)
    torch.save({k: v for k, v in result.model.state_dict().items()}, ckpt + ".final")
    print("resumed_from", result.resumed_from)
    """
)


def _run(tmp_path, ckpt, slow, **kw):
    script = tmp_path / "train_run.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(slow)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_matches_uninterrupted(tmp_path):
    full = _run(tmp_path, tmp_path / "full.ckpt", 0.0)
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    victim = _run(tmp_path, tmp_path / "killed.ckpt", 0.15)
    deadline = time.time() + 240
    while time.time() < deadline:
        ckpt = tmp_path / "killed.ckpt"
        if ckpt.exists() and artifacts.load_checkpoint(ckpt)["meta"]["step"] >= 8:
            break
        time.sleep(0.05)
    else:
        victim.kill()
        pytest.fail("no checkpoint appeared in time")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    saved = artifacts.load_checkpoint(tmp_path / "killed.ckpt")  # never half-written
    assert 8 <= saved["meta"]["step"] < 24 and not saved["meta"]["finished"]

    rerun = _run(tmp_path, tmp_path / "killed.ckpt", 0.0)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"resumed_from {saved['meta']['step']}" in out
    a = torch.load(tmp_path / "full.ckpt.final", weights_only=True)
    b = torch.load(tmp_path / "killed.ckpt.final", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
