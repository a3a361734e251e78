"""PGD adversarial training and robust evaluation of cnn-small on digits, alone or under torchrun.

    python examples/train_script.py --epochs 1
    torchrun --standalone --nproc_per_node=2 examples/train_script.py --checkpoint-dir runs/digits-at-2cpu

Nothing here knows about torchrun: with RANK/WORLD_SIZE/LOCAL_RANK set, ``fit`` and
``evaluate`` share the work between the processes (see docs/training.md).
"""

import argparse

import torch.distributed as dist

from robustprune.attacks import AdversarialConfig
from robustprune.data import create_loaders
from robustprune.evaluation import evaluate
from robustprune.models import create_model
from robustprune.train import fit

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--n-examples", type=int, default=200, help="test digits attacked")
parser.add_argument("--checkpoint-dir", default="runs/digits-at", help="one per run: a run resumes from it")
args = parser.parse_args()

loaders = create_loaders("digits", batch_size=64)             # batch size per process
model = create_model("cnn-small", mean=loaders.info.mean, std=loaders.info.std)
fit(model, loaders, epochs=args.epochs, lr=0.05, checkpoint_dir=args.checkpoint_dir,
    adversarial=AdversarialConfig(kind="pgd", eps=0.1, steps=10))
result = evaluate(model, loaders.test, eps=0.1, n_examples=args.n_examples)  # the same on every rank
print(result)
if dist.is_initialized():
    dist.destroy_process_group()
