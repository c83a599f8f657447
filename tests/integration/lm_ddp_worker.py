"""Run by torchrun in test_distributed.py: distil a causal LM (on-policy GKD) under DDP on two CPU processes; dump this
rank's final student weights, what the optimiser wrapped, and every checkpoint/weights file this rank wrote."""

import json
import os
import sys

import torch
from safetensors.torch import save_model

import kdkit
from kdkit.engine import checkpoint, loop

out, tok, teacher = sys.argv[1:4]
rank = int(os.environ["RANK"])
captured: dict = {}
writes: list[str] = []
orig_fit, orig_write, orig_save = loop.Engine.fit, loop.write_weights, checkpoint.CheckpointManager.save


def fit(self, scheme, train_loader, val_loader, resume=False):
    captured["scheme"] = scheme
    step = scheme.step

    def recording_step(model, batch, state):  # the engine hands step() the module it prepared (DDP-wrapped)
        captured["stepped"] = type(model).__name__
        return step(model, batch, state)

    scheme.step = recording_step
    return orig_fit(self, scheme, train_loader, val_loader, resume)


def write_weights(model, path, *a, **kw):
    writes.append(str(path))
    return orig_write(model, path, *a, **kw)


def save(self, trainable, optimizer, state):
    writes.append(f"step-{state['step']}")
    return orig_save(self, trainable, optimizer, state)


loop.Engine.fit, loop.write_weights, checkpoint.CheckpointManager.save = fit, write_weights, save
recipe = {"name": "lm_ddp", "output_dir": out, "seed": 0, "epochs": 3, "checkpoint_every_steps": 2,
          "data": {"name": "lee_background", "params": {"tokenizer": tok, "block": 32}, "val_fraction": 0.05,
                   "batch_size": 8, "eval_batch_size": 64, "train_limit": 48},
          "student": {"name": f"hf:{teacher}", "params": {"config": {"n_layer": 1, "n_embd": 16, "n_head": 2}}},
          "teachers": [{"name": f"hf:{teacher}"}],
          "scheme": {"name": "gkd", "params": {"lmbda": 0.5, "prompt_tokens": 8}},
          "terms": [{"name": "lm_jsd", "params": {"beta": 0.5}}],
          "optim": {"name": "adamw", "lr": 3e-3}, "schedule": {"name": "constant"}}
kdkit.distill(recipe, quiet=True)
scheme = captured["scheme"]
student = scheme.eval_models()["student"]
teachers = scheme.teachers.teachers
teacher_params = {id(p) for t in teachers for p in t.parameters()}
trainable = {id(p) for p in scheme.trainable().parameters()}
info = {"rank": rank, "world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "teacher_types": [type(t.model).__name__ for t in teachers],
        "teacher_in_trainable": bool(teacher_params & trainable),
        "teacher_requires_grad": any(p.requires_grad for t in teachers for p in t.parameters()),
        "teacher_training": any(m.training for t in teachers for m in t.model.modules()),
        "stepped": captured.get("stepped"), "writes": writes}
save_model(student, os.path.join(out, f"rank{rank}.safetensors"))  # tied embeddings: save_model dedups
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(info, f)
