"""Run by torchrun in test_distributed.py: train with kdkit under DDP and dump this rank's final student weights."""

import os
import sys

import torch
from safetensors.torch import save_file

import kdkit
from kdkit.engine import loop

captured = {}
orig_fit = loop.Engine.fit


def fit(self, scheme, train_loader, val_loader, resume=False):
    captured["scheme"] = scheme
    return orig_fit(self, scheme, train_loader, val_loader, resume)


loop.Engine.fit = fit
out = sys.argv[1]
recipe = {"name": "ddp", "output_dir": out, "seed": 0, "epochs": 2,
          "data": {"name": "mnist_5k", "train_limit": 1024, "batch_size": 64},
          "student": {"name": "mlp", "params": {"hidden": [32]}},
          "optim": {"name": "sgd", "lr": 0.1}}
if len(sys.argv) > 2 and sys.argv[2] == "window":
    # a hint term with a learned connector that stops after epoch 1: its parameters get no gradient in epoch 2
    recipe.update(student={"name": "cnn_student"}, teachers=[{"name": "cnn", "params": {"width": 8}}],
                  data=dict(recipe["data"], train_limit=256),
                  terms=[{"name": "ce"}, {"name": "fitnet", "stop_epoch": 1, "params": {"pairs": "last"}}])
if len(sys.argv) > 2 and sys.argv[2] == "auto":
    # the student's precision and memory format measured on the first batch: every rank must train in one mode
    recipe.update(student={"name": "cnn_student"}, precision="auto", channels_last="auto",
                  data=dict(recipe["data"], train_limit=256))
if len(sys.argv) > 2 and sys.argv[2] == "channels_last":
    # channels-last applied after DDP wrapped the model: its first-step stride warning is silenced (engine/loop.py)
    recipe.update(student={"name": "cnn_student"}, channels_last=True, data=dict(recipe["data"], train_limit=256))
kdkit.train(recipe, quiet=True)
student = captured["scheme"].eval_models()["student"]
rank = int(os.environ["RANK"])
save_file({k: v.contiguous() for k, v in student.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
print(f"rank {rank} world {torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1}")
