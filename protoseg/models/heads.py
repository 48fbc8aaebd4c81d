"""Classification heads: a parametric 1x1 classifier and ProtoSeg's
nonparametric prototype classifier."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import prototypes as P


class ParametricHead(nn.Module):
    """Conv1x1 from the decoder's features to K class logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor | None = None, winners: bool = False) -> dict:
        """`winners` asks for prototype diagnostics: this head has no prototypes and adds nothing."""
        return {"seg": self.classifier(feats)}


class PrototypeHead(nn.Module):
    """ProtoSeg: pixels are embedded on the unit sphere and scored by cosine
    similarity to K x M prototypes that are learned without gradient."""

    def __init__(self, in_channels: int, num_classes: int, cfg: dict):
        """`cfg`: the spec's model.prototype section."""
        super().__init__()
        dim = cfg["embed_dim"] or in_channels
        self.num_classes, self.num_prototypes = num_classes, cfg["num_prototypes"]
        self.cfg = cfg
        self.proj = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(in_channels, dim, 1))
        self.feat_norm = nn.LayerNorm(dim)
        self.mask_norm = nn.LayerNorm(num_classes) if cfg["mask_norm"] else nn.Identity()
        protos = torch.zeros(num_classes, self.num_prototypes, dim)
        nn.init.trunc_normal_(protos, std=0.02)
        # A buffer, not a Parameter: the prototypes never get a gradient, and
        # they travel with state_dict (so with checkpoints) and .to(device).
        self.register_buffer("prototypes", F.normalize(protos, p=2, dim=-1))

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B*h*w, D) unit pixel embeddings."""
        x = self.proj(feats)
        if self.cfg["proj_norm"] == "width":
            x = F.normalize(x, p=2, dim=-1)  # the official quirk: over W of NCHW, not over channels
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        return F.normalize(self.feat_norm(x), p=2, dim=-1)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor | None = None, winners: bool = False) -> dict:
        """{'seg': (B, K, h, w) class scores}; given labels, the prototype step's outputs too; with
        `winners`, also 'winners': (B, K, h, w) index of each class's nearest prototype (diagnostics only)."""
        b, _, h, w = feats.shape
        k, m = self.num_classes, self.num_prototypes
        emb = self.embed(feats)
        sim = emb @ self.prototypes.reshape(k * m, -1).t()          # (N, K*M)
        scores = self.mask_norm(sim.reshape(-1, k, m).amax(dim=2))  # (N, K)
        out = {"seg": scores.reshape(b, h, w, k).permute(0, 3, 1, 2)}
        if winners:
            out["winners"] = sim.reshape(b, h, w, k, m).argmax(dim=-1).permute(0, 3, 1, 2)
        if labels is not None:
            target = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest").reshape(-1).long()
            target = torch.where(target < k, target, -1)  # 255 (and anything out of range) -> ignore
            out["proto_logits"] = sim
            out["proto_target"] = self.learn(emb.detach(), sim.detach(), scores.detach(), target)
        return out

    @torch.no_grad()
    def learn(self, emb, sim, scores, target) -> torch.Tensor:
        """One prototype step: Sinkhorn targets for PPC/PPD, and (in training)
        the momentum update from correctly predicted pixels. fp32 throughout."""
        k, m = self.num_classes, self.num_prototypes
        with torch.autocast(device_type=emb.device.type, enabled=False):
            plan = P.sinkhorn_plan(P.own_class_similarity(sim, target, m), target, k,
                                   self.cfg["sinkhorn_epsilon"], self.cfg["sinkhorn_iterations"])
            best = plan.argmax(dim=1)
            proto_target = torch.where(target >= 0, target * m + best, -1)
            if self.training and self.cfg["update_prototypes"]:
                correct = scores.argmax(dim=1) == target
                chosen = best if self.cfg["update_assignment"] == "argmax" else P.assign(plan, "gumbel")
                new = P.momentum_update(self.prototypes.float(), emb.float(), target, chosen, correct,
                                        self.cfg["gamma"])
                # the official code re-normalises at the next forward; a mean of unit vectors is not unit
                new = F.normalize(P.average_over_ranks(new), p=2, dim=-1)
                self.prototypes = new.to(self.prototypes.dtype)
        return proto_target


def build_head(model_cfg: dict, in_channels: int, num_classes: int) -> nn.Module:
    if model_cfg["head"] == "parametric":
        return ParametricHead(in_channels, num_classes)
    return PrototypeHead(in_channels, num_classes, model_cfg["prototype"])
