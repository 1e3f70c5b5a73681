"""The criteria as torch-pruning importance estimators, for users of its pruners.

    imp = CriterionImportance("fpgm")
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5)
    pruner.step()

torch-pruning asks for one score per channel of a group's root layer. Weight criteria ("l1",
"fpgm") and "random" compute it from the root layer; feature-map criteria ("hrank", "chip") need
calibration images, so their scores are computed beforehand (e.g. with the accumulators in
`apib.criteria`) and passed in as {root module: (C,) scores}.
"""

import torch
import torch_pruning as tp

from apib.criteria import CRITERIA


class CriterionImportance(tp.importance.Importance):
    """criterion: a name in `apib.criteria.CRITERIA`; scores: {module: (C,) tensor} (required for the
    feature-map criteria, optional for the others); seed: for "random". Higher = more important."""

    def __init__(self, criterion: str, scores: dict | None = None, seed: int = 0):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
        if scores is None and CRITERIA[criterion].needs == "fmaps":
            raise ValueError(
                f"criterion {criterion!r} scores feature maps: pass scores={{module: (C,) scores}}, "
                "computed on calibration images"
            )
        self.criterion = CRITERIA[criterion]
        self.scores = scores
        self.seed = seed

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        dep, idxs = group[0]
        module = dep.target.module
        if self.scores is not None:
            if module not in self.scores:
                raise ValueError(f"scores has no entry for the group's root layer {dep.target.name}")
            scores = self.scores[module]
        elif self.criterion.needs == "weight":
            scores = self.criterion.fn(module.weight)
        else:
            scores = self.criterion.fn(module.weight.shape[0], seed=self.seed)
        return scores.float().cpu()[torch.as_tensor(idxs, dtype=torch.long)]
