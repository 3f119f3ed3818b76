"""Device from the scheduler (a real local Ray): a trial uses exactly the accelerators Ray assigned it.
Ray 2.60 leaves every GPU visible to a task given none, so "is CUDA visible" would put 0-GPU work on GPU 0.
The machine has no GPU: the local Ray is told it has one, and the choice (not the training) is checked."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_trial_runs_on_the_gpu_ray_assigned_and_on_cpu_without_one() -> None:
    import ray

    from mmsn.errors import MMSNError
    from trainables.worker import assigned_device

    @ray.remote
    def choose(requested: str) -> str:
        try:
            return str(assigned_device(requested, fraction=1.0))
        except MMSNError as err:
            return f"error: {err}"

    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.get(choose.options(num_gpus=0).remote("auto")) == "cpu"
        assert ray.get(choose.options(num_gpus=1).remote("auto")) == "cuda:0"
        assert ray.get(choose.options(num_gpus=1).remote("cpu")) == "cpu"
        refused = ray.get(choose.options(num_gpus=0).remote("cuda"))
        assert refused.startswith("error: train.device: cuda, but Ray assigned this trial no GPU")
    finally:
        ray.shutdown()
