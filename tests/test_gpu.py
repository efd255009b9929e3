"""Training on CUDA: the same weights score alike on the GPU and the CPU, GAT-BPR learns as well
there, a model trained there loads on a CPU and exports an ONNX scorer that onnxruntime runs,
bf16 autocast trains with finite losses, the sampled-subgraph path runs, and the GPU benchmarks'
peers and bench_gpu run on it.

Every test here is marked `gpu` and skips where torch sees no CUDA device; bench/gpu_check.sh
runs them with ENCORE_REQUIRE_CUDA=1, which turns that skip into a failure. They use no fixture
of conftest.py, so they also run with --noconftest in an image without the warehouse's packages.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from models_src.checkpoint import load_checkpoint
from models_src.config import TrainConfig, training_autocast
from models_src.data import Interactions, bipartite_edge_index, split_interactions
from models_src.learners import make_learner
from models_src.models import GATBPR
from models_src.onnx_export import export_scorer, gat_bpr_scorer
from models_src.trainers import AdvancedTrainer

pytestmark = pytest.mark.gpu
CPU = torch.device("cpu")
GROUPS = 4


@pytest.fixture
def cuda() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    message = f"needs CUDA: torch {torch.__version__} sees no CUDA device on this machine"
    if os.environ.get("ENCORE_REQUIRE_CUDA") == "1":
        pytest.fail(f"{message} (ENCORE_REQUIRE_CUDA=1, as bench/gpu_check.sh sets it)")
    pytest.skip(message)


def tastes(n_users: int = 240, n_items: int = 96, per_user: int = 12, ratings: bool = False):
    """Each user likes one of GROUPS blocks of items (its artist): structure to learn."""
    rng = np.random.default_rng(0)
    block = n_items // GROUPS
    users, items = [], []
    for u in range(n_users):
        start = (u % GROUPS) * block
        users += [u] * per_user
        items += rng.choice(np.arange(start, start + block), per_user, replace=False).tolist()
    rating = None
    if ratings:
        rating = np.where(rng.random(len(users)) < 0.8, 5.0, 2.0).astype(np.float32)
    return Interactions(
        np.array(users), np.array(items), n_users, n_items, rating,
        item_group=np.arange(n_items) // block, meta={"rating_scale": [1.0, 5.0]},
    )  # fmt: skip


def splits(model: str = "gat-bpr") -> dict[str, Interactions]:
    return split_interactions(tastes(ratings=model == "rating"), "hash", 0.15, 0.15)


def config(model: str = "gat-bpr", **overrides) -> TrainConfig:
    values = {
        "model": model, "epochs": 4, "lr": 0.05, "batch_size": 256, "embedding_dim": 16,
        "heads": 2, "num_layers": 2, "negatives": 4, "patience": 10, **overrides,
    }  # fmt: skip
    return TrainConfig(**values)


def train(train_config: TrainConfig, device: torch.device, out) -> tuple[AdvancedTrainer, dict]:
    learner = make_learner(splits(train_config.model), train_config, device)
    trainer = AdvancedTrainer(learner, train_config, out, log=lambda line: None)
    return trainer, trainer.fit()


CHANCE = 10 / 90  # Recall@10 of a random top-10 among a user's ~90 unseen items


@pytest.mark.parametrize("attention", [True, False], ids=["gatconv", "lightgcn"])
def test_the_same_weights_score_and_step_alike_on_cuda_and_cpu(cuda, attention):
    on_cpu = make_learner(splits(), config(attention=attention), CPU)
    on_gpu = make_learner(splits(), config(attention=attention), cuda)  # the same seeded init
    assert all(p.device.type == cuda.type for p in on_gpu.model.parameters())
    cpu_users, cpu_items = on_cpu.item_scores()
    gpu_users, gpu_items = on_gpu.item_scores()
    torch.testing.assert_close(gpu_users.cpu(), cpu_users, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu_items.cpu(), cpu_items, atol=1e-5, rtol=1e-4)
    cpu_val, gpu_val = on_cpu.evaluate("val"), on_gpu.evaluate("val")
    assert gpu_val["recall@10"] == pytest.approx(cpu_val["recall@10"], abs=0.02)
    # One BPR step on the same batch: the same loss and the same gradients.
    users, positives = on_cpu.users[:64], on_cpu.items[:64]
    negatives = on_cpu.sample_negatives(users)
    losses, grads = [], []
    for learner in (on_cpu, on_gpu):
        learner.model.zero_grad()
        batch = [t.to(learner.device) for t in (users, positives, negatives)]
        loss = learner._step_loss(*batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(learner.model.embedding.weight.grad.cpu())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-3)


def test_gat_bpr_learns_on_cuda_as_well_as_on_cpu(cuda, tmp_path):
    """The random streams differ between devices (other batches, other negatives), so the two
    runs agree in quality, not in every digit."""
    _, cpu_final = train(config(), CPU, tmp_path / "cpu")
    _, gpu_final = train(config(), cuda, tmp_path / "cuda")
    for final in (cpu_final, gpu_final):
        assert math.isfinite(final["val"]["recall@10"]) and final["val"]["recall@10"] > 3 * CHANCE
    assert gpu_final["val"]["recall@10"] == pytest.approx(cpu_final["val"]["recall@10"], abs=0.1)


def test_a_model_trained_on_cuda_loads_on_cpu_and_exports_an_onnx_scorer(cuda, tmp_path):
    import onnxruntime as ort

    trainer, _ = train(config(epochs=2), cuda, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "best_model.pt")  # map_location: the CPU
    assert all(t.device.type == "cpu" for t in state["model"].values())
    model = GATBPR(**state["model_args"])
    model.load_state_dict(state["model"])
    train_split = trainer.learner.splits["train"]
    graph = bipartite_edge_index(train_split, with_groups=model.num_groups > 0)
    scorer = gat_bpr_scorer(model, graph, k=10)
    gpu_users, gpu_items = trainer.learner.item_scores()  # the best weights, reloaded by fit
    torch.testing.assert_close(scorer.user_emb, gpu_users.cpu(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scorer.item_emb, gpu_items.cpu(), atol=1e-5, rtol=1e-4)

    path = export_scorer(scorer, tmp_path / "scorer.onnx", {"kind": "gat-bpr"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    users = torch.arange(train_split.num_users)
    exclude = torch.zeros(len(users), train_split.num_items, dtype=torch.bool)
    exclude[torch.from_numpy(train_split.user), torch.from_numpy(train_split.item)] = True
    items, scores = session.run(None, {"users": users.numpy(), "exclude": exclude.numpy()})
    _, torch_scores = scorer(users, exclude)
    np.testing.assert_allclose(scores, torch_scores.numpy(), atol=1e-4)
    assert not exclude.gather(1, torch.from_numpy(items)).any()

    # A run on the GPU resumes on the GPU from its checkpoint (its CUDA generator's state).
    longer = config(epochs=3)
    again = AdvancedTrainer(
        make_learner(splits(), longer, cuda), longer, tmp_path / "run", log=lambda _: None
    )
    assert again.resume() and again.start_epoch == 3
    assert len(again.history) == 2 and again.fit()["epochs_run"] == 3


@pytest.mark.parametrize(
    ("model", "overrides"),
    [
        ("gat-bpr", {"attention": False}),  # LightGCN layers: cuSPARSE's bf16 product
        ("gat-bpr", {"attention": True}),
        ("rating", {"embedding_dim": 8, "lr": 0.01}),
    ],
    ids=["gat-bpr-lightgcn", "gat-bpr-gatconv", "rating"],
)
def test_bf16_on_cuda_trains_with_finite_losses_and_fp32_weights(cuda, tmp_path, model, overrides):
    trainer, final = train(config(model, precision="bf16", **overrides), cuda, tmp_path / "bf16")
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    assert all(p.dtype == torch.float32 for p in trainer.learner.model.parameters())
    assert math.isfinite(final["val"]["recall@10"]) and math.isfinite(final["test"]["ndcg@10"])
    if model == "rating":
        assert math.isfinite(final["val"]["rmse"])
        return
    assert final["val"]["recall@10"] > 3 * CHANCE
    learner = trainer.learner
    x = learner.model.embedding.weight
    graph = learner.model.propagation_graph(learner.edge_index, x.size(0))
    if not overrides["attention"]:  # the LightGCN layer's sparse product really runs in bf16
        with training_autocast(cuda, "bf16"):
            out = learner.model._layer(learner.model.convs[0], x, graph)
        assert out.dtype == torch.bfloat16, "autocast left the propagation in fp32 on CUDA"


def test_sampled_subgraphs_train_on_cuda(cuda, tmp_path):
    for precision in ("fp32", "bf16"):
        sampled = config(minibatch="sampled", fanout=5, num_layers=1, precision=precision)
        trainer, final = train(sampled, cuda, tmp_path / precision)
        assert trainer.learner.sampler is not None
        assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
        assert final["val"]["recall@10"] > 2 * CHANCE


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lightgcn_peer_trains_on_cuda(cuda, precision):
    from bench import peers

    result = peers.lightgcn(
        splits(), seed=0, dim=16, max_epochs=15, patience=5, device=str(cuda), precision=precision
    )
    assert math.isfinite(result["test"]["recall@10"])
    assert result["val"]["recall@10"] > 2 * CHANCE


def test_bench_gpu_runs_on_cuda(cuda, tmp_path, monkeypatch):
    import json

    from bench import bench_gpu

    monkeypatch.setattr(bench_gpu, "RESULTS", tmp_path)
    argv = ["--device", str(cuda), "--listens", "20000", "--users", "2000", "--items", "3000"]
    assert bench_gpu.main([*argv, "--groups", "40", "--epochs", "2", "--output", "tiny"]) == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert "gpu" in result["machine"]
    assert all(run["peak_cuda_mb"] > 0 for run in result["runs"])
